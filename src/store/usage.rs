//! `last_used_at` without a store write per request: requests mark the
//! token in memory, and a background task writes the marks in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::{StoreError, TokenStore};

/// Pending last-use marks, token id → newest unix time seen. (foldhash:
/// ids come from the store, not from clients, and every request marks one.)
#[derive(Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<i64, i64, foldhash::fast::RandomState>>,
}

impl LastUsed {
    /// Records a use; cheap enough for the hot path (one short lock).
    pub fn mark(&self, token_id: i64, at: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(token_id).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Writes every pending mark in one batch, in token id order (two
    /// instances writing overlapping batches lock rows in the same order, so
    /// PostgreSQL never finds them deadlocked); returns how many were written.
    /// On failure, or when the flush is dropped half-way (shutdown), the marks
    /// are kept for the next flush.
    pub async fn flush(&self, store: &TokenStore) -> Result<usize, StoreError> {
        let mut marks: Vec<(i64, i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if marks.is_empty() {
            return Ok(0);
        }
        marks.sort_unstable();
        let mut unwritten = Unwritten { owner: self, marks };
        store.record_last_used(&unwritten.marks).await?;
        Ok(std::mem::take(&mut unwritten.marks).len())
    }
}

/// Marks taken out for a write: put back unless the write succeeded (then
/// they are taken out of here).
struct Unwritten<'a> {
    owner: &'a LastUsed,
    marks: Vec<(i64, i64)>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        for (id, at) in self.marks.drain(..) {
            self.owner.mark(id, at);
        }
    }
}

impl LastUsed {
    /// Flushes every `every` until the task is dropped; failures are logged
    /// and retried on the next round.
    pub async fn flush_every(
        self: Arc<Self>,
        every: Duration,
        store: TokenStore,
        flushes: Counter,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.flush(&store).await {
                Ok(0) => {}
                Ok(_) => {
                    flushes.inc();
                }
                Err(e) => tracing::warn!(error = %e, "last-used flush failed; will retry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_the_newest_time_per_token() {
        let used = LastUsed::default();
        used.mark(1, 100);
        used.mark(1, 90);
        used.mark(2, 50);
        let pending = used.pending.lock().unwrap();
        assert_eq!(pending.get(&1), Some(&100));
        assert_eq!(pending.get(&2), Some(&50));
    }
}
