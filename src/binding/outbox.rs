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
    /// An administrator closed the connection; the client may reconnect and resume.
    Disconnected,
    /// The backend's answer to a forward asked to close it.
    Backend,
    /// Its token expired (the client was told, and reconnects with a fresh one).
    Expired,
}

/// Something with a size in bytes.
pub trait Weight {
    /// Bytes this item holds.
    fn weight(&self) -> usize;
}

struct State<T> {
    items: VecDeque<T>,
    bytes: usize,
    /// Bytes ever queued and ever taken by the writer (queue positions, FIFO).
    pushed: u64,
    drained: u64,
    /// Where the last bulk item ends in the queue ([`Outbox::push_bulk`]).
    bulk_mark: u64,
    /// The commit time (ms) of the first stamped item queued since the writer last took a batch.
    stamp: Option<i64>,
    /// The stamp of the batch the writer took last.
    taken_stamp: Option<i64>,
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
                pushed: 0,
                drained: 0,
                bulk_mark: 0,
                stamp: None,
                taken_stamp: None,
                closed: None,
            }),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            max_bytes,
        }
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Queues `item`; over the bound the outbox closes as a slow consumer.
    pub fn push(&self, item: T) -> Result<(), Gone> {
        self.queue(item, false, None)
    }

    /// Queues a live event's item committed at `committed` (ms since the UNIX epoch): the writer learns the
    /// oldest such time of each batch from [`Outbox::take_stamp`].
    pub fn push_stamped(&self, item: T, committed: i64) -> Result<(), Gone> {
        self.queue(item, false, Some(committed))
    }

    /// The oldest commit time of the batch [`Outbox::next_batch`] took last, once.
    pub fn take_stamp(&self) -> Option<i64> {
        self.state.lock().taken_stamp.take()
    }

    /// Queues an item of a bulk sender, which paces itself with [`Outbox::room`].
    pub fn push_bulk(&self, item: T) -> Result<(), Gone> {
        self.queue(item, true, None)
    }

    fn queue(&self, item: T, bulk: bool, stamp: Option<i64>) -> Result<(), Gone> {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return Err(Gone);
        }
        let weight = item.weight();
        if st.bytes + weight > self.max_bytes {
            st.closed = Some(Closed::SlowConsumer);
            st.items.clear();
            st.bytes = 0;
            drop(st);
            self.wake_all();
            return Err(Gone);
        }
        st.items.push_back(item);
        st.bytes += weight;
        st.pushed += weight as u64;
        if let Some(stamp) = stamp {
            st.stamp.get_or_insert(stamp);
        }
        if bulk {
            st.bulk_mark = st.pushed;
        }
        drop(st);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Waits until at most `below` bytes (and at most half the bound) of what was queued up to the last bulk item
    /// still wait for the writer, or the outbox closed: a bulk sender keeps a window of its own items queued, and
    /// live items queued after its last one do not hold it back.
    pub async fn room(&self, below: usize) {
        let below = below.min(self.max_bytes / 2) as u64;
        loop {
            let drained = self.drained.notified();
            {
                let st = self.state.lock();
                if st.closed.is_some() || st.bulk_mark.saturating_sub(st.drained) <= below {
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
                    st.drained += st.bytes as u64;
                    st.bytes = 0;
                    st.taken_stamp = st.stamp.take();
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(usize);
    impl Weight for Item {
        fn weight(&self) -> usize {
            self.0
        }
    }

    /// Resolves at once or not at all (room waits only on the writer).
    fn ready(f: impl std::future::Future<Output = ()>) -> bool {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        f.as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    #[test]
    fn room_counts_what_is_queued_up_to_the_last_bulk_item_only() {
        let outbox = Outbox::new(1000);
        outbox.push_bulk(Item(100)).unwrap();
        assert!(
            ready(outbox.room(100)),
            "its own 100 bytes are within a 100-byte window"
        );
        outbox.push_bulk(Item(50)).unwrap();
        assert!(!ready(outbox.room(100)), "150 of its own bytes wait");
        // Live items queued after the last bulk item do not hold the bulk sender back…
        let fresh = Outbox::new(1000);
        fresh.push_bulk(Item(10)).unwrap();
        fresh.push(Item(400)).unwrap();
        assert!(ready(fresh.room(100)));
        // …but those queued before it do: they go out first.
        fresh.push_bulk(Item(10)).unwrap();
        assert!(!ready(fresh.room(100)));
        let mut out = Vec::new();
        assert!(ready(async {
            assert!(fresh.next_batch(&mut out).await.is_none());
        }));
        assert!(ready(fresh.room(100)), "drained");
    }
}
