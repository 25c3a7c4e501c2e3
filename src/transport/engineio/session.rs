//! One Engine.IO session: the byte-bounded outbound queue with a priority ping slot, the
//! ordered inbound "lane" that runs the upper layer's work one item at a time, and the
//! heartbeat (pings, pong timeout, connect timeout, close notification), run by the engine's
//! shared [timer](super::timers) through [`Session::tick`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Waker};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::packet::{Frame, Packet};
use super::timers::Target;
use super::{EngineIo, RequestInfo, SessionHandler};

/// A boxed, sendable unit of work queued on a session's inbound lane.
pub type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Inbound work items beyond which transport readers stop reading (backpressure).
const LANE_LIMIT: usize = 256;
/// How long a polling session closed by the client stays visible to its next GET.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes a WebSocket writer takes per batch, so a ping is never stuck behind a huge backlog.
const WS_BATCH_BYTES: usize = 64 * 1024;

/// Bytes every session's writers took from their queues to write (WebSocket frames and polling responses), for
/// the server's metrics.
pub static WRITTEN_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Told the stamp (ms since the UNIX epoch) of the oldest stamped frame of each batch a writer has written:
/// how the server measures the lag from an event's commit to its socket write without this layer knowing of
/// events. Set once, at start-up.
pub static ON_STAMPED_WRITE: OnceLock<fn(i64)> = OnceLock::new();

fn report_stamp(stamp: Option<i64>) {
    if let (Some(stamp), Some(report)) = (stamp, ON_STAMPED_WRITE.get()) {
        report(stamp);
    }
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet `1`.
    ClientClose,
    /// The underlying connection went away.
    TransportClose,
    /// The transport failed or the client broke the transport rules (overlapping requests).
    TransportError,
    /// The client sent something that could not be decoded.
    ParseError,
    /// No pong within `ping_timeout`.
    PingTimeout,
    /// The upper layer did not mark the session ready within `connect_timeout`.
    ConnectTimeout,
    /// The server is shutting down.
    ServerShutdown,
    /// The outbound queue exceeded `max_queue_bytes`.
    SlowConsumer,
    /// The application closed the session.
    Forced,
}

impl CloseReason {
    /// A short human-readable reason, as the reference implementation words it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "transport close",
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::ParseError => "parse error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ConnectTimeout => "connect timeout",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Forced => "forced close",
        }
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// The queue bound was exceeded; the session has been closed.
    #[error("slow consumer: outbound queue full")]
    SlowConsumer,
}

/// Which transport currently carries the session's outbound data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// HTTP long-polling.
    Polling,
    /// Polling, with a WebSocket probe answered; GETs are answered with noop.
    Upgrading,
    /// WebSocket.
    WebSocket,
}

pub(crate) struct State {
    pub transport: TransportKind,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    /// Bytes ever queued and ever taken by a writer (queue positions, FIFO).
    pushed: u64,
    drained: u64,
    /// Where the last bulk frame ends in the queue ([`Session::send_bulk`]).
    bulk_mark: u64,
    /// The first stamped frame still queued: where it ends in the queue, and its stamp (later ones are not
    /// stamped until it is taken: a sample per batch, with no allocation).
    stamp: Option<(u64, i64)>,
    /// The stamp of the batch a writer took, reported once it is written.
    taken_stamp: Option<i64>,
    ping_due: bool,
    /// Set while a ping is unanswered: the instant the session times out.
    pong_deadline: Option<Instant>,
    /// When the next ping is due (while no pong is awaited).
    ping_at: Instant,
    /// The session's newest timer entry: when it fires and its generation (older entries are stale).
    timer_at: Instant,
    timer_generation: u64,
    pub get_active: bool,
    pub post_active: bool,
    /// A WebSocket is attached or being attached (a second one is refused).
    pub ws_attached: bool,
    closed: Option<CloseReason>,
    /// The close has been reported to the handler (by the timer task).
    close_reported: bool,
}

impl State {
    /// Whether the session is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }
}

struct Lane {
    queue: VecDeque<Work>,
    running: bool,
}

/// What a long-polling GET should answer now.
pub(crate) enum PollBatch {
    Frames(Vec<Frame>),
    Wait,
}

/// What a WebSocket writer should do now.
pub(crate) enum WsBatch {
    Frames(Vec<Frame>),
    Wait,
    /// Send these frames, then the close frame (code, reason), then stop.
    Close(Vec<Frame>, Option<(u16, &'static str)>),
}

/// One Engine.IO session, shared by its transports, the engine's timer and the upper layer.
pub struct Session {
    /// This session, for the timer's entries.
    me: Weak<Session>,
    sid: Arc<str>,
    request: Arc<RequestInfo>,
    engine: Arc<EngineIo>,
    pub(crate) state: Mutex<State>,
    pub(crate) poll_wake: Notify,
    pub(crate) ws_wake: Notify,
    lane_room: Notify,
    closed_signal: Notify,
    /// Signalled whenever queued bytes are taken by a transport.
    drained: Notify,
    /// Held until the session closes (see `EngineHandler::admit`).
    admission: Mutex<Option<super::Admission>>,
    handler: OnceLock<Arc<dyn SessionHandler>>,
    lane: Mutex<Lane>,
    ready: AtomicBool,
    created: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("sid", &self.sid).finish()
    }
}

impl Session {
    pub(crate) fn new(
        sid: Arc<str>,
        request: Arc<RequestInfo>,
        engine: Arc<EngineIo>,
        transport: TransportKind,
    ) -> Arc<Session> {
        let created = Instant::now();
        let ping_at = created + engine.config.ping_interval;
        Arc::new_cyclic(|me| Session {
            me: me.clone(),
            sid,
            request,
            engine,
            state: Mutex::new(State {
                transport,
                queue: VecDeque::new(),
                queued_bytes: 0,
                pushed: 0,
                drained: 0,
                bulk_mark: 0,
                stamp: None,
                taken_stamp: None,
                ping_due: false,
                pong_deadline: None,
                ping_at,
                timer_at: ping_at,
                timer_generation: 0,
                get_active: false,
                post_active: false,
                ws_attached: transport == TransportKind::WebSocket,
                closed: None,
                close_reported: false,
            }),
            poll_wake: Notify::new(),
            ws_wake: Notify::new(),
            lane_room: Notify::new(),
            closed_signal: Notify::new(),
            drained: Notify::new(),
            admission: Mutex::new(None),
            handler: OnceLock::new(),
            lane: Mutex::new(Lane {
                queue: VecDeque::new(),
                running: false,
            }),
            ready: AtomicBool::new(false),
            created,
        })
    }

    /// The Engine.IO session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The HTTP request that opened the session.
    pub fn request(&self) -> &Arc<RequestInfo> {
        &self.request
    }

    /// Bytes waiting in the outbound queue now.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().queued_bytes
    }

    /// The transport currently carrying outbound data.
    pub fn transport(&self) -> TransportKind {
        self.state.lock().transport
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.engine.config.max_payload
    }

    pub(crate) fn upgrade_timeout(&self) -> std::time::Duration {
        self.engine.config.upgrade_timeout
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Marks the session as claimed by the upper layer, cancelling the connect timeout.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_handler(&self, handler: Arc<dyn SessionHandler>) {
        let _ = self.handler.set(handler);
    }

    /// Keeps `admission` until the session closes.
    pub(crate) fn hold(&self, admission: Option<super::Admission>) {
        *self.admission.lock() = admission;
    }

    /// Waits until at most `below` bytes (and at most half the outbound bound) of what was queued up to the last
    /// [`Session::send_bulk`] frame still wait for the socket, or the session closed. Bulk senders (a replay from
    /// history) use it to keep only a window of their own data queued instead of tripping the slow-consumer bound;
    /// live frames queued after their last one do not hold them back.
    pub async fn wait_for_room(&self, below: usize) {
        let below = (below.min(self.engine.config.max_queue_bytes / 2)) as u64;
        loop {
            // `notify_waiters` reaches a `Notified` from its creation on, so create it before checking.
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

    /// Queues one frame.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.send_all(std::iter::once(frame))
    }

    /// Queues frames atomically (e.g. a binary packet and its attachments): all or none.
    pub fn send_all(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), SendError> {
        self.queue_frames(frames, false)
    }

    /// Queues frames of a bulk sender, which paces itself with [`Session::wait_for_room`].
    pub fn send_bulk(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), SendError> {
        self.queue_frames(frames, true)
    }

    /// Queues one frame stamped `stamp` (ms since the UNIX epoch, e.g. an event's commit time), reported through
    /// [`ON_STAMPED_WRITE`] once the batch holding it is written.
    pub fn send_stamped(&self, frame: Frame, stamp: i64) -> Result<(), SendError> {
        self.queue_frames_stamped(std::iter::once(frame), false, Some(stamp))
    }

    fn queue_frames(
        &self,
        frames: impl IntoIterator<Item = Frame>,
        bulk: bool,
    ) -> Result<(), SendError> {
        self.queue_frames_stamped(frames, bulk, None)
    }

    fn queue_frames_stamped(
        &self,
        frames: impl IntoIterator<Item = Frame>,
        bulk: bool,
        stamp: Option<i64>,
    ) -> Result<(), SendError> {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return Err(SendError::Closed);
        }
        let start = st.queue.len();
        let mut added = 0;
        for frame in frames {
            added += frame.weight();
            st.queue.push_back(frame);
        }
        if st.queued_bytes + added > self.engine.config.max_queue_bytes {
            st.queue.truncate(start);
            drop(st);
            tracing::debug!(sid = %self.sid, "outbound queue bound exceeded");
            self.close(CloseReason::SlowConsumer);
            return Err(SendError::SlowConsumer);
        }
        st.queued_bytes += added;
        st.pushed += added as u64;
        if bulk {
            st.bulk_mark = st.pushed;
        }
        if let Some(stamp) = stamp
            && st.stamp.is_none()
        {
            st.stamp = Some((st.pushed, stamp));
        }
        let transport = st.transport;
        drop(st);
        self.wake_drainer(transport);
        Ok(())
    }

    fn wake_drainer(&self, transport: TransportKind) {
        match transport {
            TransportKind::WebSocket => self.ws_wake.notify_one(),
            _ => self.poll_wake.notify_one(),
        }
    }

    /// Closes the session. Idempotent; the handler's `on_close` runs later on the timer task, so
    /// callers holding their own locks cannot deadlock through it.
    pub fn close(&self, reason: CloseReason) {
        let linger = {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(reason);
            self.schedule_close(&mut st);
            // A client `1` may race the GET it sent alongside; keep the session until that
            // GET got its noop (or for a grace period), like a pending GET would have.
            reason == CloseReason::ClientClose
                && st.transport != TransportKind::WebSocket
                && !st.get_active
        };
        tracing::debug!(sid = %self.sid, reason = reason.as_str(), "session closed");
        if !linger {
            self.engine.remove(&self.sid);
        }
        self.poll_wake.notify_one();
        self.ws_wake.notify_one();
        self.lane_room.notify_waiters();
        self.closed_signal.notify_waiters();
        self.drained.notify_waiters();
        self.lane.lock().queue.clear();
        self.admission.lock().take();
    }

    /// Resolves once the session is closed.
    pub(crate) async fn closed(&self) {
        // `notify_waiters` reaches a `Notified` from its creation on, so check after creating it.
        let signal = self.closed_signal.notified();
        if self.is_closed() {
            return;
        }
        signal.await;
    }

    /// Handles one decoded inbound packet, from either transport.
    pub(crate) async fn receive(self: &Arc<Self>, packet: Packet) {
        if self.is_closed() {
            return;
        }
        match packet {
            Packet::Pong(_) => {
                let mut st = self.state.lock();
                if st.pong_deadline.take().is_some() {
                    st.ping_at = Instant::now() + self.engine.config.ping_interval;
                    self.schedule_next(&mut st);
                }
            }
            Packet::Message(message) => {
                let Some(handler) = self.handler.get() else {
                    return;
                };
                if let Some(work) = handler.clone().on_message(message) {
                    self.enqueue(work).await;
                }
            }
            Packet::Close => self.close(CloseReason::ClientClose),
            // v4 servers receive no pings outside an upgrade; the rest carry nothing to do.
            Packet::Ping(_) | Packet::Upgrade | Packet::Noop | Packet::Open => {}
        }
    }

    /// Runs `work` after all earlier work of this session. Work that completes on its first
    /// poll runs inline; otherwise one runner task drains the lane in order.
    async fn enqueue(self: &Arc<Self>, mut work: Work) {
        {
            let mut lane = self.lane.lock();
            if lane.running {
                lane.queue.push_back(work);
                if lane.queue.len() < LANE_LIMIT {
                    return;
                }
            } else {
                lane.running = true;
                drop(lane);
                // A first poll with a no-op waker is sound: the runner re-polls with a real one.
                let mut cx = Context::from_waker(Waker::noop());
                if work.as_mut().poll(&mut cx).is_ready() {
                    let mut lane = self.lane.lock();
                    if lane.queue.is_empty() {
                        lane.running = false;
                        return;
                    }
                    let next = lane.queue.pop_front();
                    drop(lane);
                    if let Some(next) = next {
                        tokio::spawn(self.clone().run_lane(next));
                    }
                } else {
                    tokio::spawn(self.clone().run_lane(work));
                }
                return;
            }
        }
        // Over the limit: wait for the runner to make room (or the session to close).
        loop {
            let room = self.lane_room.notified();
            if self.lane.lock().queue.len() < LANE_LIMIT || self.is_closed() {
                return;
            }
            room.await;
        }
    }

    async fn run_lane(self: Arc<Self>, first: Work) {
        let mut work = first;
        loop {
            work.await;
            let next = {
                let mut lane = self.lane.lock();
                match lane.queue.pop_front() {
                    Some(next) if !self.is_closed() => next,
                    _ => {
                        lane.queue.clear();
                        lane.running = false;
                        return;
                    }
                }
            };
            self.lane_room.notify_one();
            work = next;
        }
    }

    /// What a long-polling GET should send now (ping first, then queued data).
    pub(crate) fn take_poll_batch(&self) -> PollBatch {
        let mut st = self.state.lock();
        if let Some(reason) = st.closed {
            drop(st);
            self.engine.remove(&self.sid);
            let packet = if reason == CloseReason::ClientClose {
                "6"
            } else {
                "1"
            };
            return PollBatch::Frames(vec![Frame::control(packet)]);
        }
        if st.transport != TransportKind::Polling {
            return PollBatch::Frames(vec![Frame::control("6")]);
        }
        if !st.ping_due && st.queue.is_empty() {
            return PollBatch::Wait;
        }
        let mut frames = Vec::with_capacity(st.queue.len() + 1);
        if std::mem::take(&mut st.ping_due) {
            frames.push(Frame::control("2"));
        }
        // Taking the queue (not draining it) releases its buffer while the session idles.
        frames.extend(std::mem::take(&mut st.queue));
        WRITTEN_BYTES.fetch_add(st.queued_bytes as u64, Ordering::Relaxed);
        st.drained += st.queued_bytes as u64;
        st.queued_bytes = 0;
        let stamp = st.stamp.take().map(|(_, stamp)| stamp);
        drop(st);
        self.drained.notify_waiters();
        // The response is written as it is returned.
        report_stamp(stamp);
        PollBatch::Frames(frames)
    }

    /// What the WebSocket writer should send now (ping first, then up to a batch of data).
    pub(crate) fn take_ws_batch(&self) -> WsBatch {
        let mut st = self.state.lock();
        if let Some(reason) = st.closed {
            let (frames, close) = match reason {
                CloseReason::ServerShutdown | CloseReason::Forced => {
                    let mut frames: Vec<Frame> = st.queue.drain(..).collect();
                    frames.push(Frame::control("1"));
                    (frames, None)
                }
                CloseReason::SlowConsumer => (Vec::new(), Some((1008, "slow consumer"))),
                _ => (Vec::new(), None),
            };
            st.queue = VecDeque::new();
            st.queued_bytes = 0;
            return WsBatch::Close(frames, close);
        }
        if !st.ping_due && st.queue.is_empty() {
            return WsBatch::Wait;
        }
        let mut frames = Vec::new();
        if std::mem::take(&mut st.ping_due) {
            frames.push(Frame::control("2"));
        }
        let mut taken = 0;
        while taken < WS_BATCH_BYTES {
            let Some(frame) = st.queue.pop_front() else {
                break;
            };
            taken += frame.weight();
            frames.push(frame);
        }
        st.queued_bytes -= taken;
        WRITTEN_BYTES.fetch_add(taken as u64, Ordering::Relaxed);
        st.drained += taken as u64;
        if let Some((end, stamp)) = st.stamp
            && end <= st.drained
        {
            st.stamp = None;
            st.taken_stamp = Some(stamp);
        }
        self.drained.notify_waiters();
        if st.queue.is_empty() {
            // Release the queue's buffer so idle sessions hold no large allocation.
            st.queue = VecDeque::new();
        }
        WsBatch::Frames(frames)
    }

    /// The WebSocket writer wrote the batch it took last: reports its stamp, if it had one.
    pub(crate) fn batch_written(&self) {
        let stamp = self.state.lock().taken_stamp.take();
        report_stamp(stamp);
    }

    /// Closes the session if its pong deadline has passed, even if the timer has not fired
    /// yet; requests call this so a late timer never lets a dead session answer.
    pub(crate) fn check_expired(&self) -> bool {
        let expired = self
            .state
            .lock()
            .pong_deadline
            .is_some_and(|d| Instant::now() >= d);
        if expired {
            self.close(CloseReason::PingTimeout);
        }
        expired
    }

    /// Starts the heartbeat: the first ping is due one interval after open.
    pub(crate) fn start_heartbeat(&self) {
        let mut st = self.state.lock();
        let at = self.next_deadline(&st);
        self.schedule(&mut st, at);
    }

    /// The connect deadline, while the upper layer has not marked the session ready.
    fn connect_deadline(&self) -> Option<Instant> {
        if self.ready.load(Ordering::Relaxed) {
            return None;
        }
        self.engine.config.connect_timeout.map(|d| self.created + d)
    }

    /// The earliest instant something may be due: the pong deadline or the next ping, or the connect deadline.
    fn next_deadline(&self, st: &State) -> Instant {
        let beat = st.pong_deadline.unwrap_or(st.ping_at);
        self.connect_deadline().map_or(beat, |d| d.min(beat))
    }

    /// Makes the timer tick the session at `at`; its earlier entries become stale.
    fn schedule(&self, st: &mut State, at: Instant) {
        self.set_timer(st, at, Target::Weak(self.me.clone()));
    }

    /// Makes the timer report the close now; its entry holds the session until then.
    fn schedule_close(&self, st: &mut State) {
        // Always alive: a session being closed is borrowed by its caller.
        if let Some(session) = self.me.upgrade() {
            self.set_timer(st, Instant::now(), Target::Held(session));
        }
    }

    fn set_timer(&self, st: &mut State, at: Instant, target: Target) {
        st.timer_generation += 1;
        st.timer_at = at;
        self.engine.timers.schedule(at, st.timer_generation, target);
    }

    /// Moves the timer earlier if the next deadline now comes before its entry; a later one is handled
    /// when the entry fires (no new entry per pong).
    fn schedule_next(&self, st: &mut State) {
        let at = self.next_deadline(st);
        if at < st.timer_at {
            self.schedule(st, at);
        }
    }

    /// Runs what is due now, for the timer's entry of `generation`: report a close (then end its linger),
    /// a connect or pong timeout, or the next ping. Reschedules itself while the session lives.
    pub(crate) fn tick(&self, generation: u64) {
        let now = Instant::now();
        let mut st = self.state.lock();
        if generation != st.timer_generation {
            return;
        }
        if st.closed.is_some() {
            if st.close_reported {
                // The linger of a client close ends now if no GET ended it (see `close`).
                drop(st);
                self.engine.remove(&self.sid);
                return;
            }
            drop(st);
            self.report_close();
            if self.engine.session(&self.sid).is_some() {
                let mut st = self.state.lock();
                self.schedule(&mut st, now + CLOSE_LINGER);
            }
            return;
        }
        if self.connect_deadline().is_some_and(|d| now >= d) {
            drop(st);
            self.close(CloseReason::ConnectTimeout);
            return;
        }
        match st.pong_deadline {
            Some(deadline) if now >= deadline => {
                drop(st);
                self.close(CloseReason::PingTimeout);
                return;
            }
            None if now >= st.ping_at => {
                // Deadlines follow the schedule, not the (possibly late) tick.
                st.pong_deadline = Some(st.ping_at + self.engine.config.ping_timeout);
                st.ping_due = true;
                let transport = st.transport;
                let at = self.next_deadline(&st);
                self.schedule(&mut st, at);
                drop(st);
                self.wake_drainer(transport);
                return;
            }
            _ => {}
        }
        let at = self.next_deadline(&st);
        self.schedule(&mut st, at);
    }

    fn report_close(&self) {
        let reason = {
            let mut st = self.state.lock();
            if st.close_reported {
                return;
            }
            st.close_reported = true;
            st.closed.unwrap_or(CloseReason::TransportClose)
        };
        if let Some(handler) = self.handler.get() {
            handler.on_close(reason);
        }
    }
}
