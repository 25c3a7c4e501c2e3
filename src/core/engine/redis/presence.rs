//! Presence across the nodes of one Redis cluster. Each node keeps its own connections in the in-process table
//! ([`crate::core::presence`], exact and immediate for them, and what its watchers are fed from) and mirrors each
//! join and leave into Redis, where the other nodes read them:
//!
//! - `{prefix}:presence:c:<channel>` — hash: `<node>\n<conn>` → the member (what a presence read scans);
//! - `{prefix}:presence:n:<node>` — hash: `<channel>\n<conn>` → the member (what removing a dead node scans);
//! - `{prefix}:presence:nodes` — sorted set: node → its last heartbeat (Redis's clock, ms);
//! - pub/sub `{prefix}:presence` — `J` or `L`, then `<node>\n<channel>\n<member>`, for each join and leave.
//!
//! One task per node applies the writes in order (a join, then the leave that follows it, never the other way
//! round), each batch as one `MULTI`, and every [`HEARTBEAT`] refreshes the node's heartbeat and removes nodes
//! silent for [`NODE_TTL`] — their entries deleted and a leave published for each, in one script, so exactly one
//! node announces them. Reads skip a silent node's entries at once. So a node that dies has its connections leave
//! everyone's presence reads within [`NODE_TTL`] and announced within `NODE_TTL + HEARTBEAT` (6 s). A node that
//! was itself taken for dead (a stall longer than [`NODE_TTL`]), or whose writes failed while Redis was away,
//! writes its entries again from its table and announces the difference.
//!
//! Connection ids are the nodes' own (unique across nodes: Socket.IO ids are random, `/ws` and SSE ids count from
//! a random start). The entries a node mirrors are bounded by [`MAX_NODE_ENTRIES`]; beyond it joins stay
//! on this node (logged once per minute) — connections and their subscription limits bound them well before.
//! Another node's joins and leaves reach this node's watchers through its own pub/sub connection; when that drops,
//! every watcher is let go (as one that falls behind), so it re-reads presence instead of missing changes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::fanout::{RETRY_FIRST, RETRY_MAX};
use super::{TIMEOUT, map_err};
use crate::core::channel::ChannelName;
use crate::core::engine::{EngineError, Leave, PresenceGuard};
use crate::core::presence::{Member, Presence, PresenceEvent};

/// How often a node refreshes its heartbeat and removes silent nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a node may go without a heartbeat before its connections leave everyone's presence.
pub const NODE_TTL: Duration = Duration::from_secs(5);

/// Most presence entries (connection × channel) one node mirrors into Redis.
pub const MAX_NODE_ENTRIES: usize = 262_144;

/// Most writes applied in one `MULTI`.
const BATCH: usize = 256;

/// Most silent nodes one heartbeat removes (each costs O(its entries) on the server).
const REAP_PER_BEAT: usize = 16;

/// Removes one node: each entry from its channel's hash, a leave published for it, then the node's own keys.
const REMOVE_NODE: &str = r"
local function remove_node(base, topic, node)
  local nk = base .. 'n:' .. node
  local entries = redis.call('HGETALL', nk)
  for i = 1, #entries, 2 do
    local channel, conn = string.match(entries[i], '^(.*)\n([^\n]*)$')
    if channel then
      redis.call('HDEL', base .. 'c:' .. channel, node .. '\n' .. conn)
      redis.call('PUBLISH', topic, 'L' .. node .. '\n' .. channel .. '\n' .. entries[i + 1])
    end
  end
  redis.call('DEL', nk)
  redis.call('ZREM', base .. 'nodes', node)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// ARGV: prefix, node, ttl ms, most nodes to remove. Refreshes the node's heartbeat (1 if it was not listed:
/// taken for dead, or new) and removes silent nodes.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{REMOVE_NODE}
local base = ARGV[1] .. ':presence:'
local now = now_ms()
local fresh = redis.call('ZADD', base .. 'nodes', now, ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', base .. 'nodes', '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, tonumber(ARGV[4]))
for _, node in ipairs(dead) do
  if node ~= ARGV[2] then remove_node(base, ARGV[1] .. ':presence', node) end
end
return fresh"
    ))
});

/// ARGV: prefix, node. Removes the node (a graceful shutdown), announcing its leaves.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{REMOVE_NODE}
remove_node(ARGV[1] .. ':presence:', ARGV[1] .. ':presence', ARGV[2])
return 1"
    ))
});

/// ARGV: prefix, channel, this node, ttl ms, most members. The channel's members on other live nodes, as
/// `node, member` pairs.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{REMOVE_NODE}
local base = ARGV[1] .. ':presence:'
local cutoff = now_ms() - tonumber(ARGV[4])
local all = redis.call('HGETALL', base .. 'c:' .. ARGV[2])
local alive = {{}}
local out = {{}}
for i = 1, #all, 2 do
  local node = string.match(all[i], '^([^\n]*)\n')
  if node and node ~= ARGV[3] then
    local ok = alive[node]
    if ok == nil then
      local score = redis.call('ZSCORE', base .. 'nodes', node)
      ok = (score ~= false and score ~= nil) and tonumber(score) >= cutoff
      alive[node] = ok
    end
    if ok then
      out[#out + 1] = node
      out[#out + 1] = all[i + 1]
      if #out >= 2 * tonumber(ARGV[5]) then break end
    end
  end
end
return out"
    ))
});

/// A member as Redis holds it.
#[derive(Serialize, Deserialize)]
struct Stored {
    conn: String,
    user: Option<String>,
    roles: Vec<String>,
    transport: String,
    at: i64,
}

impl Stored {
    fn of(m: &Member) -> String {
        serde_json::to_string(&Stored {
            conn: m.conn.to_string(),
            user: m.user.clone(),
            roles: m.roles.clone(),
            transport: m.transport.to_owned(),
            at: m.connected_at,
        })
        .unwrap_or_default()
    }

    /// The member of another node.
    fn member(json: &str) -> Option<Member> {
        let s: Stored = serde_json::from_str(json).ok()?;
        let transport = ["socketio", "websocket", "sse"]
            .into_iter()
            .find(|t| *t == s.transport)
            .unwrap_or("other");
        Some(Member {
            conn: s.conn.into(),
            user: s.user,
            roles: s.roles,
            transport,
            connected_at: s.at,
        })
    }
}

/// A write to mirror, in order.
enum Op {
    Join(ChannelName, Arc<Member>, oneshot::Sender<()>),
    Leave(ChannelName, Arc<Member>),
}

/// This node's side of cluster-wide presence.
pub(super) struct ClusterPresence {
    local: Arc<Presence>,
    node: String,
    keys: String,
    /// Unbounded, but each op is one join or leave of a live entry: bounded by the entries themselves.
    ops: mpsc::UnboundedSender<Op>,
    /// Entries mirrored (or on their way).
    mirrored: AtomicUsize,
    /// Entries not mirrored because of [`MAX_NODE_ENTRIES`], by channel and connection.
    unmirrored: Mutex<std::collections::HashSet<(ChannelName, Arc<str>)>>,
    last_refusal_log: Mutex<Option<Instant>>,
    con: ConnectionManager,
    /// Whether the last write or heartbeat succeeded: while not, joins do not wait for theirs (Redis is away;
    /// the writer rewrites everything once it is back).
    writing: AtomicBool,
}

impl ClusterPresence {
    /// Starts the writer (with the heartbeat) and the listener; the first heartbeat is written before it returns.
    pub(super) async fn start(
        client: redis::Client,
        con: ConnectionManager,
        keys: &str,
        node: &str,
    ) -> Result<(Arc<Self>, Vec<tokio::task::JoinHandle<()>>), EngineError> {
        let (ops, rx) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            local: Arc::default(),
            node: node.to_owned(),
            keys: keys.to_owned(),
            ops,
            mirrored: AtomicUsize::new(0),
            unmirrored: Mutex::default(),
            last_refusal_log: Mutex::new(None),
            con: con.clone(),
            writing: AtomicBool::new(true),
        });
        this.beat(&mut con.clone()).await?;
        let (sink, stream) = client.get_async_pubsub().await.map_err(map_err)?.split();
        let listener = tokio::spawn(listen(this.clone(), client, Some((sink, stream))));
        let writer = tokio::spawn(write(this.clone(), con, rx));
        Ok((this, vec![writer, listener]))
    }

    fn topic(&self) -> String {
        format!("{}:presence", self.keys)
    }

    /// Refreshes the heartbeat and removes silent nodes; true if this node had been taken for dead.
    async fn beat(&self, con: &mut ConnectionManager) -> Result<bool, EngineError> {
        let fresh: i64 = BEAT
            .arg(&self.keys)
            .arg(&self.node)
            .arg(NODE_TTL.as_millis() as u64)
            .arg(REAP_PER_BEAT)
            .invoke_async(con)
            .await
            .map_err(map_err)?;
        Ok(fresh == 1)
    }

    /// Adds `member` to `channel` here and, before it returns, in Redis (a failure there is repaired by the
    /// writer once Redis answers; the join itself stands).
    pub(super) async fn join(
        self: &Arc<Self>,
        channel: &ChannelName,
        member: Arc<Member>,
    ) -> PresenceGuard {
        let conn = member.conn.clone();
        if self.local.add_quietly(channel, member.clone()) {
            let event = PresenceEvent::Join(channel.clone(), (*member).clone());
            if self.mirrored.fetch_add(1, Ordering::AcqRel) >= MAX_NODE_ENTRIES {
                self.mirrored.fetch_sub(1, Ordering::AcqRel);
                self.unmirrored
                    .lock()
                    .insert((channel.clone(), conn.clone()));
                let mut last = self.last_refusal_log.lock();
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        limit = MAX_NODE_ENTRIES,
                        "presence entries over the node's limit are visible on this node only"
                    );
                }
            } else {
                let (tx, rx) = oneshot::channel();
                if self.ops.send(Op::Join(channel.clone(), member, tx)).is_ok()
                    && self.writing.load(Ordering::Acquire)
                {
                    let _ = tokio::time::timeout(TIMEOUT, rx).await;
                }
            }
            // This node's watchers hear it once it is recorded for the cluster, as the others do.
            self.local.tell(event);
        }
        let owner: Arc<dyn Leave> = self.clone();
        PresenceGuard::new(channel.clone(), conn, owner)
    }

    /// This node's members of `channel` and the other live nodes', ordered by connection id.
    pub(super) async fn members(&self, channel: &ChannelName) -> Result<Vec<Member>, EngineError> {
        let mut members = self.local.members(channel);
        let remote: Vec<String> = READ
            .arg(&self.keys)
            .arg(channel.as_str())
            .arg(&self.node)
            .arg(NODE_TTL.as_millis() as u64)
            .arg(MAX_NODE_ENTRIES)
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(map_err)?;
        for pair in remote.chunks_exact(2) {
            if let Some(m) = Stored::member(&pair[1]) {
                members.push(m);
            }
        }
        members.sort_by(|a, b| a.conn.cmp(&b.conn));
        Ok(members)
    }

    /// Join and leave notifications of every node's members on channels matching `pattern`.
    pub(super) fn events(
        &self,
        pattern: crate::core::channel::Pattern,
    ) -> mpsc::Receiver<PresenceEvent> {
        self.local.events(pattern)
    }

    /// Removes this node's entries from Redis, announcing their leaves (a graceful shutdown); bounded.
    pub(super) async fn remove_node(&self) {
        let done = tokio::time::timeout(
            TIMEOUT,
            REMOVE
                .arg(&self.keys)
                .arg(&self.node)
                .invoke_async::<i64>(&mut self.con.clone()),
        )
        .await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::debug!(
                "presence entries not removed at shutdown; they expire with the heartbeat"
            );
        }
    }

    /// A message of another node, as the event it is.
    fn decode(&self, payload: &[u8]) -> Option<PresenceEvent> {
        let text = std::str::from_utf8(payload).ok()?;
        let (kind, rest) = text.split_at_checked(1)?;
        let mut parts = rest.splitn(3, '\n');
        let (node, channel, json) = (parts.next()?, parts.next()?, parts.next()?);
        if node == self.node {
            return None;
        }
        let channel = ChannelName::any(channel).ok()?;
        let member = Stored::member(json)?;
        match kind {
            "J" => Some(PresenceEvent::Join(channel, member)),
            "L" => Some(PresenceEvent::Leave(channel, member)),
            _ => None,
        }
    }
}

impl Leave for ClusterPresence {
    fn leave(&self, channel: &ChannelName, conn: &str) {
        let Some(member) = self.local.remove(channel, conn) else {
            return;
        };
        let key = (channel.clone(), member.conn.clone());
        if self.unmirrored.lock().remove(&key) {
            return;
        }
        let _ = self.ops.send(Op::Leave(channel.clone(), member));
    }
}

/// The writer: mirrors joins and leaves in order, in batches, and beats every [`HEARTBEAT`]; after a failed
/// write, or after this node was taken for dead, it rewrites the node's entries from its table.
async fn write(
    p: Arc<ClusterPresence>,
    mut con: ConnectionManager,
    mut ops: mpsc::UnboundedReceiver<Op>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    loop {
        tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { return };
                let mut batch = vec![op];
                while batch.len() < BATCH && let Ok(op) = ops.try_recv() {
                    batch.push(op);
                }
                let done = apply(&p, &mut con, batch).await;
                p.writing.store(done.is_ok(), Ordering::Release);
                if let Err(e) = done {
                    tracing::warn!(error = %e, "presence not mirrored to redis; rewriting it once redis answers");
                    dirty = true;
                }
            }
            _ = tick.tick() => {
                match p.beat(&mut con).await {
                    Ok(taken_for_dead) => dirty |= taken_for_dead,
                    Err(e) => {
                        tracing::debug!(error = %e, "presence heartbeat failed");
                        p.writing.store(false, Ordering::Release);
                        dirty = true;
                        continue;
                    }
                }
                if dirty {
                    dirty = rewrite(&p, &mut con).await.is_err();
                }
                p.writing.store(!dirty, Ordering::Release);
            }
        }
    }
}

/// Applies a batch of writes in one `MULTI`; joins are answered once it is.
async fn apply(
    p: &ClusterPresence,
    con: &mut ConnectionManager,
    batch: Vec<Op>,
) -> Result<(), EngineError> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let topic = p.topic();
    let mut answers = Vec::new();
    for op in batch {
        let (kind, channel, member) = match op {
            Op::Join(c, m, done) => {
                answers.push(done);
                ('J', c, m)
            }
            Op::Leave(c, m) => {
                p.mirrored.fetch_sub(1, Ordering::AcqRel);
                ('L', c, m)
            }
        };
        let ck = format!("{}:presence:c:{}", p.keys, channel.as_str());
        let nk = format!("{}:presence:n:{}", p.keys, p.node);
        let cf = format!("{}\n{}", p.node, member.conn);
        let nf = format!("{}\n{}", channel.as_str(), member.conn);
        let json = Stored::of(&member);
        if kind == 'J' {
            pipe.hset(&ck, &cf, &json).ignore();
            pipe.hset(&nk, &nf, &json).ignore();
        } else {
            pipe.hdel(&ck, &cf).ignore();
            pipe.hdel(&nk, &nf).ignore();
        }
        pipe.publish(
            &topic,
            format!("{kind}{}\n{}\n{json}", p.node, channel.as_str()),
        )
        .ignore();
    }
    let done = tokio::time::timeout(TIMEOUT, pipe.query_async::<()>(con))
        .await
        .map_err(|_| EngineError::unavailable("redis presence write timed out"))?
        .map_err(map_err);
    for a in answers {
        let _ = a.send(());
    }
    done
}

/// Makes Redis hold exactly this node's table: entries it lacks are added (and announced), entries it has that
/// the table no longer does are removed (and announced).
async fn rewrite(p: &ClusterPresence, con: &mut ConnectionManager) -> Result<(), EngineError> {
    let nk = format!("{}:presence:n:{}", p.keys, p.node);
    let held: std::collections::HashMap<String, String> =
        tokio::time::timeout(TIMEOUT, redis::cmd("HGETALL").arg(&nk).query_async(con))
            .await
            .map_err(|_| EngineError::unavailable("redis presence read timed out"))?
            .map_err(map_err)?;
    let unmirrored = p.unmirrored.lock().clone();
    let mut want = std::collections::HashMap::new();
    for (channel, member) in p.local.entries() {
        if !unmirrored.contains(&(channel.clone(), member.conn.clone())) {
            want.insert(
                format!("{}\n{}", channel.as_str(), member.conn),
                (channel, member),
            );
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    let topic = p.topic();
    for (field, json) in &held {
        if want.contains_key(field) {
            continue;
        }
        let Some((channel, conn)) = field.rsplit_once('\n') else {
            continue;
        };
        pipe.hdel(
            format!("{}:presence:c:{channel}", p.keys),
            format!("{}\n{conn}", p.node),
        )
        .ignore();
        pipe.hdel(&nk, field).ignore();
        pipe.publish(&topic, format!("L{}\n{channel}\n{json}", p.node))
            .ignore();
    }
    for (field, (channel, member)) in &want {
        if held.contains_key(field) {
            continue;
        }
        let json = Stored::of(member);
        pipe.hset(
            format!("{}:presence:c:{}", p.keys, channel.as_str()),
            format!("{}\n{}", p.node, member.conn),
            &json,
        )
        .ignore();
        pipe.hset(&nk, field, &json).ignore();
        pipe.publish(&topic, format!("J{}\n{}\n{json}", p.node, channel.as_str()))
            .ignore();
    }
    tokio::time::timeout(TIMEOUT, pipe.query_async::<()>(con))
        .await
        .map_err(|_| EngineError::unavailable("redis presence write timed out"))?
        .map_err(map_err)?;
    tracing::info!(entries = want.len(), "presence rewritten to redis");
    Ok(())
}

/// The listener: feeds other nodes' joins and leaves to this node's watchers; reconnects with backoff, letting
/// the watchers go so they re-read what they may have missed.
async fn listen(
    p: Arc<ClusterPresence>,
    client: redis::Client,
    mut first: Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)>,
) {
    let subscribed = AtomicBool::new(false);
    let mut wait = RETRY_FIRST;
    loop {
        let conn = match first.take() {
            Some(c) => Ok(c),
            None => tokio::time::timeout(TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| EngineError::unavailable("redis connect timed out"))
                .and_then(|r| r.map_err(map_err))
                .map(|c| c.split()),
        };
        let (mut sink, mut stream) = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?wait, "redis presence connection failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
                continue;
            }
        };
        let topic = p.topic();
        let ok = tokio::time::timeout(TIMEOUT, sink.subscribe(&topic)).await;
        if !matches!(ok, Ok(Ok(()))) {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
            continue;
        }
        wait = RETRY_FIRST;
        if subscribed.swap(true, Ordering::AcqRel) {
            // Subscribed again after a drop: watchers re-read what they may have missed meanwhile.
            p.local.drop_watchers();
        }
        while let Some(msg) = stream.next().await {
            if let Some(event) = p.decode(msg.get_payload_bytes()) {
                p.local.tell(event);
            }
        }
        tracing::warn!("redis presence connection lost: reconnecting");
        p.local.drop_watchers();
    }
}
