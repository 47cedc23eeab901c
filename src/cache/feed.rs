//! Following the store's change feed without missing a change. On PostgreSQL
//! a change's position (a sequence number) is taken when its row is written
//! but seen when its transaction commits, and transactions commit in any
//! order: a poll may see position N+1 while N is still uncommitted. Reading on
//! from N+1 would skip N for good. The cursor therefore reads again from the
//! lowest position it has not seen, until that position appears or `settle`
//! passes (a rolled-back write leaves a hole that never fills).
//!
//! The cursor is pure bookkeeping: the follower in `cache` polls and applies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::store::Change;

/// At most this many holes are waited for at once; a jump in positions
/// wider than that is a sequence moving on (a restore, a cache of numbers),
/// not writes in flight, and is passed over.
const MAX_HOLES: i64 = 1024;

pub struct FeedCursor {
    /// Every position up to this one is accounted for.
    done: i64,
    /// Positions above `done` already applied.
    seen: BTreeSet<i64>,
    /// Positions above `done` not seen yet, and since when they are missing.
    holes: BTreeMap<i64, Instant>,
    /// How long a hole is waited for.
    settle: Duration,
}

impl FeedCursor {
    /// A cursor after `position` (the newest change when following starts).
    pub fn new(position: i64, settle: Duration) -> FeedCursor {
        FeedCursor {
            done: position,
            seen: BTreeSet::new(),
            holes: BTreeMap::new(),
            settle,
        }
    }

    /// Where the next poll reads from (changes after this position).
    pub fn position(&self) -> i64 {
        self.done
    }

    /// Takes one poll's changes (oldest first) and returns those not seen
    /// before, to apply.
    pub fn advance(&mut self, changes: Vec<Change>, now: Instant) -> Vec<Change> {
        let mut fresh = Vec::new();
        for change in changes {
            if change.seq > self.done && self.seen.insert(change.seq) {
                self.holes.remove(&change.seq);
                fresh.push(change);
            }
        }
        if let Some(&newest) = self.seen.last() {
            let from = self.done + 1;
            if newest - from > MAX_HOLES {
                // Too wide to be writes in flight: pass over what is missing.
                self.done = self.seen.first().map_or(self.done, |&s| s - 1);
                self.holes.clear();
            }
            for position in self.done + 1..newest {
                if !self.seen.contains(&position) {
                    self.holes.entry(position).or_insert(now);
                }
            }
        }
        loop {
            let next = self.done + 1;
            let ready = self.seen.remove(&next)
                || self
                    .holes
                    .get(&next)
                    .is_some_and(|&since| now.duration_since(since) >= self.settle);
            if !ready {
                break;
            }
            self.holes.remove(&next);
            self.done = next;
        }
        fresh
    }

    /// The newest position seen, to read on from when a poll filled a page.
    pub fn newest(&self) -> i64 {
        self.seen.last().copied().unwrap_or(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Digest;

    const SETTLE: Duration = Duration::from_secs(10);

    fn change(seq: i64) -> Change {
        Change {
            seq,
            token_id: seq,
            digest: Digest([seq as u8; 32]),
        }
    }

    fn seqs(changes: &[Change]) -> Vec<i64> {
        changes.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn changes_in_order_are_applied_once() {
        let start = Instant::now();
        let mut cursor = FeedCursor::new(4, SETTLE);
        let applied = cursor.advance(vec![change(5), change(6)], start);
        assert_eq!(seqs(&applied), [5, 6]);
        assert_eq!(cursor.position(), 6);
        let later = start + Duration::from_secs(1);
        assert_eq!(seqs(&cursor.advance(vec![change(7)], later)), [7]);
        assert!(cursor.advance(vec![], later).is_empty());
        assert_eq!(cursor.position(), 7);
    }

    #[test]
    fn a_change_committed_after_a_later_one_is_not_skipped() {
        let start = Instant::now();
        let mut cursor = FeedCursor::new(4, SETTLE);
        // 6 committed first; 5 is still in its transaction.
        assert_eq!(seqs(&cursor.advance(vec![change(6)], start)), [6]);
        assert_eq!(cursor.position(), 4, "reads again from before the hole");
        let then = start + Duration::from_millis(500);
        // The same rows again: 6 is not new, 5 is.
        let applied = cursor.advance(vec![change(5), change(6)], then);
        assert_eq!(seqs(&applied), [5]);
        assert_eq!(cursor.position(), 6);
    }

    #[test]
    fn a_hole_that_never_fills_is_passed_after_settling() {
        let start = Instant::now();
        let mut cursor = FeedCursor::new(4, SETTLE);
        cursor.advance(vec![change(6)], start);
        cursor.advance(vec![change(6)], start + SETTLE / 2);
        assert_eq!(cursor.position(), 4);
        cursor.advance(vec![change(6)], start + SETTLE);
        assert_eq!(cursor.position(), 6, "a rolled-back write is given up on");
    }

    #[test]
    fn a_jump_wider_than_writes_in_flight_is_passed_over() {
        let start = Instant::now();
        let mut cursor = FeedCursor::new(4, SETTLE);
        let far = 4 + 10 * MAX_HOLES;
        cursor.advance(vec![change(far), change(far + 2)], start);
        assert_eq!(
            cursor.position(),
            far,
            "waits only for the hole at {}",
            far + 1
        );
        assert_eq!(cursor.holes.len(), 1);
    }
}
