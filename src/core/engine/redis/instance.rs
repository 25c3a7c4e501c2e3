//! The connection publishes go through, checked against the Redis server *instance* behind it, so that a Redis
//! that lost acknowledged writes never hands out their offsets again under the same epoch.
//!
//! A channel's epoch changes when its metadata is gone (Redis lost everything). A Redis that lost only its latest
//! writes — restarted from an RDB snapshot or an AOF with `appendfsync everysec`, or a replica promoted before it
//! had them — still has the metadata, at an older offset: without this check the next publishes would reuse
//! offsets that clients may already hold, under the same epoch, and a resuming client would skip them silently.
//!
//! So every connection this module opens is verified before any publish uses it: it reads the server's `run_id`
//! (new at every start, different on every replica) and compares it, in one script, with the instance recorded
//! under `{prefix}:instance` by the last verified connection. The same instance (a dropped connection, a restart
//! that keeps everything) passes; a different one that may lack writes moves every channel to a new epoch first, so
//! resuming clients get the gap notice instead. "Keeps everything" means AOF with `appendfsync always` on a server
//! that was not promoted from a replica (`master_replid2` unset); a server that does not let us read its
//! `appendfsync` (managed Redis without `CONFIG`) counts as one that may lose writes.
//!
//! A `MultiplexedConnection` never reconnects by itself, so a command sent on a verified connection reaches that
//! instance or fails: reconnection happens here, and always re-verifies. Other commands (reads, sessions, leases,
//! the sweep) go through the shared `ConnectionManager`: none of them can reuse an offset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisError, Script};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{TIMEOUT, map_err};
use crate::core::engine::EngineError;

/// First wait before another connection attempt after one failed (publishes meanwhile fail at once).
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between connection attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Records the instance; returns 0 when it is the recorded one, 1 when it is recorded now without a change (first
/// use of the data, or an instance that keeps everything), or 2 followed by the number of channels moved to the new
/// epoch. `ARGV`: prefix, run id, `1` if the instance keeps every acknowledged write, the new epoch.
static VERIFY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local P = ARGV[1]
local recorded = redis.call('GET', P .. ':instance')
if recorded == ARGV[2] then return {0, 0} end
redis.call('SET', P .. ':instance', ARGV[2])
if not recorded or ARGV[3] == '1' then return {1, 0} end
local names = redis.call('HKEYS', P .. ':ids')
for _, ch in ipairs(names) do
  redis.call('HSET', P .. ':m:' .. ch, 'epoch', ARGV[4])
end
return {2, #names}",
    )
});

/// A verified connection: its generation, and whether its socket has closed.
struct Verified {
    generation: u64,
    con: MultiplexedConnection,
    closed: Arc<AtomicBool>,
}

/// The current verified connection, or when to try again.
struct Link {
    con: Option<Verified>,
    generation: u64,
    retry_at: Option<Instant>,
    wait: Duration,
}

/// Publishes' connection to the Redis server, verified per server instance.
pub(super) struct Writer {
    client: redis::Client,
    keys: String,
    link: Mutex<Link>,
}

/// What a server says about itself in `INFO`.
#[derive(Debug, PartialEq)]
struct Instance {
    run_id: String,
    /// Whether an acknowledged write survives this server's restart and it was not promoted from a replica.
    keeps_everything: bool,
}

impl Writer {
    /// A writer for the server `client` points at; it connects on first use. Its connections speak RESP3, whose
    /// disconnect notice lets the next publish go to a new (verified) connection instead of failing on the dead one.
    pub(super) fn new(client: &redis::Client, keys: &str) -> Result<Self, EngineError> {
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3))
            .map_err(|e| EngineError::Invalid(format!("engine url: {e}")))?;
        Ok(Self {
            client,
            keys: keys.to_owned(),
            link: Mutex::new(Link {
                con: None,
                generation: 0,
                retry_at: None,
                wait: RETRY_FIRST,
            }),
        })
    }

    /// A verified connection (and its generation, for [`Writer::failed`]); connects and verifies if there is none.
    pub(super) async fn connection(&self) -> Result<(u64, MultiplexedConnection), EngineError> {
        let mut link = self.link.lock().await;
        match &link.con {
            Some(v) if !v.closed.load(Ordering::Acquire) => {
                return Ok((v.generation, v.con.clone()));
            }
            _ => link.con = None,
        }
        if link.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(EngineError::unavailable(
                "redis is unreachable; reconnecting",
            ));
        }
        let connected = tokio::time::timeout(TIMEOUT, self.connect())
            .await
            .unwrap_or_else(|_| Err(EngineError::unavailable("redis connect timed out")));
        match connected {
            Ok((con, closed)) => {
                link.generation += 1;
                link.retry_at = None;
                link.wait = RETRY_FIRST;
                link.con = Some(Verified {
                    generation: link.generation,
                    con: con.clone(),
                    closed,
                });
                Ok((link.generation, con))
            }
            Err(e) => {
                link.retry_at = Some(Instant::now() + link.wait);
                link.wait = (link.wait * 2).min(RETRY_MAX);
                Err(e)
            }
        }
    }

    /// Reports that a command on connection `generation` failed with `e`: a connection that may be broken, or
    /// that now leads to a replica, is replaced (and the next one verified).
    pub(super) async fn failed(&self, generation: u64, e: &RedisError) {
        let replace = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || matches!(e.code(), Some("READONLY" | "LOADING" | "MASTERDOWN"));
        if !replace {
            return;
        }
        let mut link = self.link.lock().await;
        if link
            .con
            .as_ref()
            .is_some_and(|v| v.generation == generation)
        {
            link.con = None;
        }
    }

    /// Opens a connection and verifies the instance behind it; the flag is set when its socket closes.
    async fn connect(&self) -> Result<(MultiplexedConnection, Arc<AtomicBool>), EngineError> {
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_push_sender(move |push: PushInfo| {
                if push.kind == PushKind::Disconnection {
                    flag.store(true, Ordering::Release);
                }
                Ok::<(), redis::aio::SendError>(())
            });
        let mut con = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(map_err)?;
        let info: String = redis::cmd("INFO")
            .query_async(&mut con)
            .await
            .map_err(map_err)?;
        // Managed servers may refuse CONFIG: then we cannot know, and assume writes can be lost.
        let appendfsync = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async::<std::collections::HashMap<String, String>>(&mut con)
            .await
            .ok()
            .and_then(|mut setting| setting.remove("appendfsync"));
        let instance = instance(&info, appendfsync.as_deref())
            .ok_or_else(|| EngineError::Invalid("redis INFO has no run_id".into()))?;
        let epoch = format!("{:08x}", rand::random::<u32>());
        let (outcome, moved): (u8, u64) = VERIFY
            .prepare_invoke()
            .arg(&self.keys)
            .arg(&instance.run_id)
            .arg(if instance.keeps_everything { "1" } else { "0" })
            .arg(&epoch)
            .invoke_async(&mut con)
            .await
            .map_err(map_err)?;
        match outcome {
            0 => {}
            1 => tracing::info!(run_id = %instance.run_id, "redis server instance recorded"),
            _ => tracing::warn!(
                run_id = %instance.run_id,
                channels = moved,
                "redis is a new server instance that may lack acknowledged writes (restarted without \
                 appendfsync always, or promoted from a replica): every channel moved to a new epoch, so \
                 resuming clients get the gap notice instead of reused offsets"
            ),
        }
        Ok((con, closed))
    }
}

/// Reads the instance from `INFO`'s text and the `appendfsync` setting, if known.
fn instance(info: &str, appendfsync: Option<&str>) -> Option<Instance> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let run_id = field("run_id")?.to_owned();
    let aof = field("aof_enabled") == Some("1");
    let promoted = field("master_replid2").is_some_and(|r| r.chars().any(|c| c != '0'));
    Some(Instance {
        run_id,
        keeps_everything: aof && appendfsync == Some("always") && !promoted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n# Persistence\r\naof_enabled:1\r\n\
                        # Replication\r\nrole:master\r\nmaster_replid2:0000000000000000000000000000000000000000\r\n";

    #[test]
    fn an_instance_keeps_everything_only_with_aof_always_and_not_promoted() {
        let i = instance(INFO, Some("always")).unwrap();
        assert_eq!(i.run_id, "abc123");
        assert!(i.keeps_everything);
        assert!(!instance(INFO, Some("everysec")).unwrap().keeps_everything);
        assert!(!instance(INFO, None).unwrap().keeps_everything);
        let no_aof = INFO.replace("aof_enabled:1", "aof_enabled:0");
        assert!(!instance(&no_aof, Some("always")).unwrap().keeps_everything);
        let promoted = INFO.replace(
            "master_replid2:0000000000000000000000000000000000000000",
            "master_replid2:9f0c1d2e3a4b5c6d7e8f9f0c1d2e3a4b5c6d7e8f",
        );
        assert!(
            !instance(&promoted, Some("always"))
                .unwrap()
                .keeps_everything
        );
    }

    #[test]
    fn info_without_a_run_id_is_refused() {
        assert_eq!(instance("# Server\r\nredis_version:7\r\n", None), None);
    }
}
