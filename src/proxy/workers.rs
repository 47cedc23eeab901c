//! Connection workers: single-threaded runtimes (two per core by default, see
//! `config::default_workers`). The accept loop
//! hands each connection to a worker, round robin; the connection, its
//! requests and the pooled upstream connections they use then stay on that
//! thread. On a work-stealing runtime a request and its upstream connection
//! usually run on different threads, and every request pays cross-thread
//! wakeups — on a 2-core VM those cost more than the proxying itself.
//!
//! Everything else (token store, Redis, admin listener, config reloads) stays
//! on the main runtime; a worker reaches it only on a cache miss.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Work for a worker: runs on its thread, inside its runtime (so it may
/// `tokio::spawn` there).
type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker index; 0 off the workers (one pool serves them all).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// The worker threads. Dropping it ends them (their connections with them),
/// so it lives until the listeners have drained. Without workers (`shared`),
/// jobs run on the caller's runtime.
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Workers {
    /// No worker threads: connections are served on the runtime that accepts
    /// them (multi-threaded: they move between cores).
    pub fn shared() -> Workers {
        Workers {
            queues: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let queues = (0..count.max(1))
            .map(|index| {
                let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                std::thread::Builder::new()
                    .name(format!("tokengate-worker-{index}"))
                    .spawn(move || {
                        INDEX.with(|i| i.set(index));
                        runtime.block_on(async move {
                            tokio::spawn(heartbeat());
                            while let Some(job) = jobs.recv().await {
                                job();
                            }
                        });
                    })?;
                Ok(queue)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Workers {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// How many upstream pools a proxy keeps: one per worker, or one shared.
    pub fn count(&self) -> usize {
        self.queues.len().max(1)
    }

    /// Serves a connection: on the next worker, where the socket registers
    /// with that worker's own reactor (so its readiness never crosses
    /// threads), or without workers on the caller's runtime.
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F) -> std::io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.queues.is_empty() {
            tokio::spawn(serve(stream));
            return Ok(());
        }
        let stream = stream.into_std()?;
        self.run(Box::new(move || match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(serve(stream));
            }
            Err(e) => tracing::warn!(error = %e, "connection not registered with its worker"),
        }));
        Ok(())
    }

    /// Runs `job` on the next worker.
    fn run(&self, job: Job) {
        let next = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        if self.queues[next].send(job).is_err() {
            // A worker thread only ends when `Workers` is dropped.
            tracing::error!(worker = next, "connection worker gone; connection dropped");
        }
    }
}

/// Keeps a timer due within a second on the worker's clock.
///
/// Tokio wakes the time driver (an eventfd write, then one more `epoll_wait`)
/// whenever a timer is set earlier than the earliest one the driver last
/// parked with, even when the setter is the driver's own thread. Each request
/// sets hyper's header-read timer (seconds ahead) while the worker last
/// parked with only far-off timers (the upstream's response timeout, minutes
/// ahead): half a wasted wakeup per request. With a tick always due within a
/// second, timers set seconds ahead never come first.
async fn heartbeat() {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_their_worker_round_robin() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.run(Box::new(move || {
                // Inside the worker's runtime: spawning works.
                tokio::spawn(async move { tx.send(index()).unwrap() });
            }));
        }
        let mut seen: Vec<usize> = (0..4).map(|_| rx.recv().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 0, 1, 1]);
    }

    #[test]
    fn connections_go_to_workers_or_stay_on_the_shared_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let here = std::thread::current().id();
        let served_on = |workers: Workers| {
            let (tx, rx) = std::sync::mpsc::channel();
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                let _client = TcpStream::connect(address).await.unwrap();
                let (stream, _) = listener.accept().await.unwrap();
                workers
                    .spawn(stream, move |stream| async move {
                        assert!(stream.peer_addr().is_ok());
                        tx.send(std::thread::current().id()).unwrap();
                    })
                    .unwrap();
                tokio::task::yield_now().await;
            });
            rx.recv().unwrap()
        };
        assert_eq!(served_on(Workers::shared()), here);
        assert_ne!(served_on(Workers::start(1).unwrap()), here);
    }
}
