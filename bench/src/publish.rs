//! The publisher: `POST /api/publish` on a fixed schedule. Event `n` is due at `start + (n-1)/rate` and carries
//! that *scheduled* time, so a server (or publisher) that falls behind shows up as latency.
//!
//! Publishing is one ordered stream (one request in flight), so the server's order is the sequence order and
//! subscribers can be checked for in-order delivery. Events that come due while a request is outstanding go out
//! together in the next request as a batch (`{"events":[…]}`, at most `max_batch`), never as parallel requests.

use crate::clock::Clock;
use crate::stats::Histogram;
use std::cell::{Cell, RefCell};
use std::fmt::Write;
use std::rc::Rc;
use std::time::Duration;

pub struct Publisher {
    pub client: reqwest::Client,
    pub url: String,
    pub api_key: Option<String>,
    /// Request body up to the sequence number: `{"channel":…,"event":…,"data":{"seq":`.
    pub body_head: String,
    /// Body after the timestamp: `,"pad":"…"}}`.
    pub body_tail: String,
    pub max_batch: u64,
}

#[derive(Default)]
pub struct PublishStats {
    /// Events whose scheduled time has come (sequence numbers handed out, 1-based).
    pub scheduled: Cell<u64>,
    pub ok: Cell<u64>,
    pub requests: Cell<u64>,
    pub largest_batch: Cell<u64>,
    pub failed: Cell<u64>,
    pub first_error: RefCell<Option<String>>,
    /// Request round-trip times in µs.
    pub rtt: RefCell<Histogram>,
}

impl Publisher {
    /// A publisher of `event` on `channel` whose bodies are about `body_bytes` long (padded with `x`).
    pub fn new(
        client: reqwest::Client,
        url: String,
        api_key: Option<String>,
        (channel, event): (&str, &str),
        body_bytes: usize,
        max_batch: u64,
    ) -> Self {
        let body_head = format!(
            r#"{{"channel":{},"event":{},"data":{{"seq":"#,
            serde_json::Value::from(channel),
            serde_json::Value::from(event)
        );
        // 6-digit seq, 16-digit timestamp, `,"t":` and `,"pad":""}}`.
        let fixed = body_head.len() + 6 + 5 + 16 + 11;
        let body_tail = format!(
            r#","pad":"{}"}}}}"#,
            "x".repeat(body_bytes.saturating_sub(fixed))
        );
        Self {
            client,
            url,
            api_key,
            body_head,
            body_tail,
            max_batch: max_batch.max(1),
        }
    }

    /// Publishes `count` events at `rate`/s starting at `start_us` (on `clock`).
    pub async fn run(
        self: Rc<Self>,
        clock: Clock,
        start_us: u64,
        rate: f64,
        count: u64,
        stats: Rc<PublishStats>,
    ) {
        let due = |seq: u64| start_us + ((seq - 1) as f64 * 1e6 / rate) as u64;
        let mut next = 1;
        while next <= count {
            tokio::time::sleep_until(clock.instant_at(due(next)).into()).await;
            let now = clock.now_us();
            let mut last = next;
            while last < count && last + 1 - next < self.max_batch && due(last + 1) <= now {
                last += 1;
            }
            stats.scheduled.set(last);
            let mut body = String::with_capacity((last - next + 1) as usize * 256 + 16);
            let batch = last > next;
            body.push_str(if batch { r#"{"events":["# } else { "" });
            for seq in next..=last {
                if seq > next {
                    body.push(',');
                }
                let _ = write!(
                    body,
                    r#"{}{seq},"t":{}{}"#,
                    self.body_head,
                    clock.wall_us(due(seq)),
                    self.body_tail
                );
            }
            body.push_str(if batch { "]}" } else { "" });
            let n = last - next + 1;
            let t0 = clock.now_us();
            let outcome = self.post(body).await;
            stats
                .rtt
                .borrow_mut()
                .record(clock.now_us().saturating_sub(t0));
            stats.requests.set(stats.requests.get() + 1);
            stats.largest_batch.set(stats.largest_batch.get().max(n));
            match outcome {
                Ok(()) => stats.ok.set(stats.ok.get() + n),
                Err(e) => {
                    stats.failed.set(stats.failed.get() + n);
                    stats
                        .first_error
                        .borrow_mut()
                        .get_or_insert(format!("seq {next}..={last}: {e}"));
                }
            }
            next = last + 1;
        }
    }

    async fn post(&self, body: String) -> Result<(), String> {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(10));
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading body: {e}"))?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {text:.200}"));
        }
        Ok(())
    }
}
