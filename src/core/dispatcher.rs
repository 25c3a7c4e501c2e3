//! The local engines' fan-out thread: committed batches are delivered to subscribers here, in commit order, so a
//! publish is answered as soon as it is durable instead of after it reached every connection.
//!
//! Why a thread of its own: handing an event to 1,000 connections costs milliseconds; done on the committing thread
//! (SQLite's writer) before the reply, it made one sequential publisher wait for every delivery of its previous
//! event. Here the writer only commits, the hub snapshots whom each event must reach ([`Deliveries`]), and this
//! thread delivers. Events that queue up while it works reach each connection together, so its writer sends them in
//! one write.
//!
//! Bounded: at most [`MAX_PENDING`] events wait for delivery. A committer that would exceed it waits first — SQLite's
//! writer thread blocks ([`Dispatcher::send_blocking`]), the memory engine's publish awaits room before it commits
//! ([`Dispatcher::room`]) — so a fan-out slower than the publishers slows the publishers, never memory.

use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use super::hub::Deliveries;

/// Most committed events waiting for delivery.
pub const MAX_PENDING: usize = 8192;

struct Shared {
    /// Events queued and not yet delivered.
    pending: Mutex<usize>,
    /// Batches delivered so far (each queued batch has a number: how many were queued before it, plus one).
    done: Mutex<u64>,
    /// Signalled (with `room`) after each delivered batch.
    delivered: Condvar,
    room: Notify,
}

/// A handle on the fan-out thread; the thread ends when the last handle is dropped, after delivering what is queued.
pub struct Dispatcher {
    tx: mpsc::Sender<Deliveries>,
    /// Batches queued so far.
    sent: Mutex<u64>,
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// Starts the fan-out thread.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Deliveries>();
        let shared = Arc::new(Shared {
            pending: Mutex::new(0),
            done: Mutex::new(0),
            delivered: Condvar::new(),
            room: Notify::new(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("herald-fanout".into())
            .spawn(move || {
                for batch in rx {
                    let n = batch.len();
                    batch.deliver();
                    *worker.done.lock() += 1;
                    *worker.pending.lock() -= n;
                    worker.delivered.notify_all();
                    worker.room.notify_waiters();
                }
            })?;
        Ok(Self {
            tx,
            sent: Mutex::new(0),
            shared,
        })
    }

    /// Queues `batch` (called in commit order); never waits. Callers bound the queue with [`Dispatcher::room`].
    pub fn send(&self, batch: Deliveries) {
        if batch.is_empty() {
            return;
        }
        *self.shared.pending.lock() += batch.len();
        // Numbered and queued under one lock, so numbers follow the queue's order.
        let mut sent = self.sent.lock();
        *sent += 1;
        // The thread only stops when this handle is gone, so the send cannot fail while we hold it.
        let _ = self.tx.send(batch);
    }

    /// Returns once every batch queued before the call has been delivered.
    pub async fn delivered(&self) {
        let target = *self.sent.lock();
        loop {
            let notified = self.shared.room.notified();
            if *self.shared.done.lock() >= target {
                return;
            }
            notified.await;
        }
    }

    /// Queues `batch` once fewer than [`MAX_PENDING`] events wait (blocks the calling thread until then).
    pub fn send_blocking(&self, batch: Deliveries) {
        {
            let mut pending = self.shared.pending.lock();
            while *pending >= MAX_PENDING {
                self.shared.delivered.wait(&mut pending);
            }
        }
        self.send(batch);
    }

    /// Returns once fewer than [`MAX_PENDING`] events wait for delivery.
    pub async fn room(&self) {
        loop {
            let notified = self.shared.room.notified();
            if *self.shared.pending.lock() < MAX_PENDING {
                return;
            }
            notified.await;
        }
    }
}
