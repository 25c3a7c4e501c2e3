//! The sessions' timer: one task per Engine.IO server holds every session's next deadline (ping, pong
//! timeout, connect timeout, close report, end of a close linger) in one heap, so an open session costs a
//! heap entry instead of a heartbeat task and a timer of its own. What is due is decided by
//! [`Session::tick`](super::session::Session::tick); an entry superseded by a newer one of the same
//! session is skipped there by its generation.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use super::session::Session;

/// Entries ticked per lock of the heap, so scheduling sessions never waits long behind a burst.
const TICK_BATCH: usize = 256;

/// The timer of one Engine.IO server; dropping it stops its task.
pub(crate) struct Timers {
    shared: Arc<Shared>,
}

struct Shared {
    heap: Mutex<Heap>,
    /// Signalled when an entry earlier than every other is added, or on stop.
    wake: Notify,
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Entry>,
    /// The task is spawned with the first entry (the server may be built outside a runtime).
    started: bool,
    stopped: bool,
}

struct Entry {
    at: Instant,
    generation: u64,
    session: Target,
}

/// The session an entry ticks.
pub(crate) enum Target {
    /// A heartbeat deadline: a session dropped meanwhile needs no tick.
    Weak(Weak<Session>),
    /// A close to report: the entry keeps the session until its handler has heard of the close.
    Held(Arc<Session>),
}

// `BinaryHeap` is a max-heap: the earliest entry must compare greatest.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then(other.generation.cmp(&self.generation))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl Timers {
    /// A timer with no entries; its task starts with the first [`Timers::schedule`].
    pub(crate) fn new() -> Timers {
        Timers {
            shared: Arc::new(Shared {
                heap: Mutex::new(Heap::default()),
                wake: Notify::new(),
            }),
        }
    }

    /// Ticks `session` at `at` with `generation` (see [`Session::tick`]). Must run inside a Tokio runtime.
    pub(crate) fn schedule(&self, at: Instant, generation: u64, session: Target) {
        let mut heap = self.shared.heap.lock();
        if heap.stopped {
            return;
        }
        if !heap.started {
            heap.started = true;
            tokio::spawn(run(self.shared.clone()));
        }
        let earliest = heap.entries.peek().is_none_or(|first| at < first.at);
        heap.entries.push(Entry {
            at,
            generation,
            session,
        });
        drop(heap);
        if earliest {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.shared.heap.lock().stopped = true;
        self.shared.wake.notify_one();
    }
}

/// The task: ticks every due entry, then sleeps until the earliest one or an earlier arrival.
async fn run(shared: Arc<Shared>) {
    let mut due = Vec::with_capacity(TICK_BATCH);
    loop {
        let next = {
            let mut heap = shared.heap.lock();
            if heap.stopped {
                return;
            }
            let now = Instant::now();
            while due.len() < TICK_BATCH && heap.entries.peek().is_some_and(|e| e.at <= now) {
                due.extend(heap.entries.pop());
            }
            heap.entries.peek().map(|e| e.at)
        };
        if !due.is_empty() {
            // Ticks take no lock of the heap, so sessions may schedule (and the loop sees it next round).
            for entry in due.drain(..) {
                let session = match entry.session {
                    Target::Weak(weak) => weak.upgrade(),
                    Target::Held(session) => Some(session),
                };
                if let Some(session) = session {
                    session.tick(entry.generation);
                }
            }
            // A burst (a storm's connect timeouts, a shutdown's close reports) must not hold the worker.
            tokio::task::yield_now().await;
            continue;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = sleep_until(at) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}
