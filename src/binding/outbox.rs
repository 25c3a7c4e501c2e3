//! A connection's byte-bounded outbound queue, drained in batches by its writer task.
//!
//! Live pushes beyond the bound close the connection as a slow consumer (it resumes from its offset when it
//! reconnects); replays wait for room instead, since their size is bounded by retention.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::feed::Gone;

/// Why an outbox stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client fell behind by more than the bound.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The connection ended for another reason.
    Gone,
    /// The server could not serve the connection (a storage error); the client should reconnect.
    Failed,
}

/// Something with a size in bytes.
pub trait Weight {
    /// Bytes this item holds.
    fn weight(&self) -> usize;
}

struct State<T> {
    items: VecDeque<T>,
    bytes: usize,
    closed: Option<Closed>,
}

/// The queue.
pub struct Outbox<T> {
    state: Mutex<State<T>>,
    wake_writer: Notify,
    drained: Notify,
    max_bytes: usize,
}

impl<T: Weight> Outbox<T> {
    /// An empty outbox holding at most `max_bytes` of live items.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            max_bytes,
        }
    }

    /// Queues `item`; over the bound the outbox closes as a slow consumer.
    pub fn push(&self, item: T) -> Result<(), Gone> {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return Err(Gone);
        }
        st.bytes += item.weight();
        if st.bytes > self.max_bytes {
            st.closed = Some(Closed::SlowConsumer);
            st.items.clear();
            drop(st);
            self.wake_all();
            return Err(Gone);
        }
        st.items.push_back(item);
        drop(st);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Waits until at most `below` bytes (and at most half the bound) are queued, or the outbox closed.
    pub async fn room(&self, below: usize) {
        let below = below.min(self.max_bytes / 2);
        loop {
            let drained = self.drained.notified();
            {
                let st = self.state.lock();
                if st.closed.is_some() || st.bytes <= below {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Closes the outbox; the writer sees `reason` once the queue is drained… or at once for a slow consumer.
    pub fn close(&self, reason: Closed) {
        let mut st = self.state.lock();
        if st.closed.is_none() {
            st.closed = Some(reason);
        }
        drop(st);
        self.wake_all();
    }

    /// Waits for items and moves them all into `out`; returns the close reason once closed and empty.
    pub async fn next_batch(&self, out: &mut Vec<T>) -> Option<Closed> {
        loop {
            let woken = self.wake_writer.notified();
            {
                let mut st = self.state.lock();
                if !st.items.is_empty() {
                    out.extend(std::mem::take(&mut st.items));
                    st.bytes = 0;
                    drop(st);
                    self.drained.notify_waiters();
                    return None;
                }
                if let Some(reason) = st.closed {
                    return Some(reason);
                }
            }
            woken.await;
        }
    }

    fn wake_all(&self) {
        self.wake_writer.notify_one();
        self.drained.notify_waiters();
    }
}
