//! Core behaviour against a real SQLite file: offsets, group commit, idempotency, retention, reopen, resume.

use std::sync::Arc;

use herald::core::channel::{ChannelName, Pattern};
use herald::core::event::{NewEvent, SharedEvent};
use herald::core::hub::{Subscriber, SubscriberId};
use herald::core::retention::{Limits, Retention};
use herald::core::session::{self, Cursor, Entry, GapReason, SessionRecord};
use herald::core::{Core, store_options};
use parking_lot::Mutex;
use serde_json::value::RawValue;

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn ev(channel: &str, n: u64, id: Option<&str>) -> NewEvent {
    NewEvent {
        channel: ch(channel),
        name: "tick".into(),
        data: RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        id: id.map(str::to_owned),
        state: None,
    }
}

struct Collect(Mutex<Vec<(String, u64)>>);
impl Subscriber for Collect {
    fn deliver(&self, e: &Arc<SharedEvent>) {
        self.0
            .lock()
            .push((e.event.channel.to_string(), e.event.offset));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_get_gapless_offsets_and_fan_out_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(store_options(dir.path().into())).unwrap();
    let sink = Arc::new(Collect(Mutex::new(vec![])));
    let dyn_sink: Arc<dyn Subscriber> = sink.clone();
    core.hub
        .subscribe(&[ch("a")], SubscriberId::next(), &dyn_sink);
    let mut tasks = Vec::new();
    for t in 0..40 {
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..25 {
                let r = core
                    .publish(vec![ev("a", t * 100 + i, None)])
                    .await
                    .unwrap();
                offsets.push(r[0].offset);
            }
            offsets
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=1000).collect::<Vec<_>>());
    let seen: Vec<u64> = sink.0.lock().iter().map(|(_, o)| *o).collect();
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<_>>(),
        "live delivery follows commit order"
    );
}

#[tokio::test]
async fn repeated_id_returns_the_original_result() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(store_options(dir.path().into())).unwrap();
    let first = core.publish(vec![ev("a", 1, Some("k1"))]).await.unwrap();
    let again = core
        .publish(vec![ev("a", 2, Some("k1")), ev("a", 3, Some("k1"))])
        .await
        .unwrap();
    assert_eq!(first[0].offset, 1);
    assert!(
        again
            .iter()
            .all(|r| r.offset == 1 && r.duplicate && r.id == "k1")
    );
    let next = core.publish(vec![ev("a", 4, None)]).await.unwrap();
    assert_eq!(next[0].offset, 2);
    let page = core.history(&ch("a"), 0, 100).await.unwrap().unwrap();
    assert_eq!(page.events.len(), 2);
}

#[tokio::test]
async fn history_is_bounded_and_offsets_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = store_options(dir.path().into());
    opts.retention = Retention {
        defaults: Limits::default(),
        rules: vec![(
            Pattern::new("short:*"),
            Limits {
                max_events: 5,
                ..Limits::default()
            },
        )],
    };
    let epoch;
    {
        let core = Core::open(opts).unwrap();
        for n in 0..12 {
            core.publish(vec![ev("short:x", n, None), ev("long", n, None)])
                .await
                .unwrap();
        }
        let short = core.history(&ch("short:x"), 0, 100).await.unwrap().unwrap();
        assert_eq!((short.info.first_offset, short.info.last_offset), (8, 12));
        assert_eq!(
            short.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![8, 9, 10, 11, 12]
        );
        let long = core.history(&ch("long"), 0, 100).await.unwrap().unwrap();
        assert_eq!(long.events.len(), 12);
        epoch = long.info.epoch.clone();
        core.shutdown().await;
    }
    let core = Core::open(store_options(dir.path().into())).unwrap();
    let r = core.publish(vec![ev("long", 99, None)]).await.unwrap();
    assert_eq!((r[0].offset, &r[0].epoch), (13, &epoch));
    assert!(core.history(&ch("nope"), 0, 10).await.unwrap().is_none());
}

#[tokio::test]
async fn resume_points_follow_the_cursor_across_channels() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(store_options(dir.path().into())).unwrap();
    // a@1 b@1 a@2 b@2 c@1 (seq 1..5), then a subscription registered at seq 5 on all three with since = heads.
    for (c, n) in [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("c", 1)] {
        core.publish(vec![ev(c, n, None)]).await.unwrap();
    }
    let entry = |c: &str, since, k| Entry {
        channel: c.into(),
        epoch: String::new(),
        since,
        seq: 5,
        k,
    };
    let record = SessionRecord {
        sid: "s".into(),
        next_k: 3,
        channels: vec![entry("a", 2, 0), entry("b", 2, 1), entry("c", 1, 2)],
        user: None,
    };
    // Live after registration: a@3 (seq 6), b@3 (seq 7), c@2 (seq 8).
    let mut live = Vec::new();
    for (c, n) in [("a", 3), ("b", 3), ("c", 2)] {
        live.extend(core.publish(vec![ev(c, n, None)]).await.unwrap());
    }
    let info_b = core.store.channel(&ch("b")).await.unwrap().unwrap();
    // The client saw b@3 (seq 7): it has a@3, b@3, not c@2.
    let cursor = Cursor::Live {
        seq: 7,
        channel_id: info_b.id,
        offset: 3,
    };
    let after = |cur| {
        let core = core.clone();
        let record = record.clone();
        async move {
            session::resume_points(&core.store, &record, cur)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.channel.to_string(), r.after, r.gap.is_some()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        after(Some(cursor)).await,
        vec![
            ("a".into(), 3, false),
            ("b".into(), 3, false),
            ("c".into(), 1, false)
        ]
    );
    // No cursor: nothing received since registration.
    assert_eq!(
        after(None).await,
        vec![
            ("a".into(), 2, false),
            ("b".into(), 2, false),
            ("c".into(), 1, false)
        ]
    );
    // A replay cursor of entry k=1 (b) at offset 1: a (k=0) was fully replayed, c (k=2) not at all.
    let replay = Cursor::Replay {
        seq: 5,
        k: 1,
        offset: 1,
    };
    assert_eq!(
        after(Some(replay)).await,
        vec![
            ("a".into(), 2, false),
            ("b".into(), 1, false),
            ("c".into(), 1, false)
        ]
    );
}

#[tokio::test]
async fn resume_reports_a_gap_when_history_was_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = store_options(dir.path().into());
    opts.retention.defaults.max_events = 3;
    let core = Core::open(opts).unwrap();
    core.publish(vec![ev("a", 1, None)]).await.unwrap();
    let record = SessionRecord {
        sid: "s".into(),
        next_k: 1,
        channels: vec![Entry {
            channel: "a".into(),
            epoch: String::new(),
            since: 1,
            seq: 1,
            k: 0,
        }],
        user: None,
    };
    for n in 2..=10 {
        core.publish(vec![ev("a", n, None)]).await.unwrap();
    }
    let info = core.store.channel(&ch("a")).await.unwrap().unwrap();
    let cursor = Cursor::Live {
        seq: 3,
        channel_id: info.id,
        offset: 3,
    };
    let r = session::resume_points(&core.store, &record, Some(cursor))
        .await
        .unwrap();
    let gap = r[0].gap.clone().unwrap();
    assert_eq!(
        (gap.reason, gap.from, gap.to),
        (GapReason::HistoryTrimmed, Some(4), Some(7))
    );
    assert_eq!(r[0].after, 7);
}

/// Records what a feed sends: gap notices as `gap from..to`, replayed events as their offsets.
struct Wire(Mutex<Vec<String>>);
impl herald::binding::feed::Outlet for Wire {
    fn live(&self, e: &Arc<SharedEvent>) -> Result<(), herald::binding::feed::Gone> {
        self.0.lock().push(format!("live {}", e.event.offset));
        Ok(())
    }
    fn replayed(
        &self,
        e: &herald::core::event::Event,
        _: &herald::binding::feed::Registered,
    ) -> Result<(), herald::binding::feed::Gone> {
        self.0.lock().push(format!("{}", e.offset));
        Ok(())
    }
    fn gap(&self, g: &session::Gap) -> Result<(), herald::binding::feed::Gone> {
        self.0.lock().push(format!("gap {:?}..{:?}", g.from, g.to));
        Ok(())
    }
    fn overflow(&self) {}
    fn fail(&self) {}
    async fn room(&self) {}
}

#[tokio::test]
async fn a_hole_after_a_known_loss_is_announced_too() {
    use herald::binding::feed::{Feed, Want};
    let dir = tempfile::tempdir().unwrap();
    let mut opts = store_options(dir.path().into());
    opts.retention = Retention {
        defaults: Limits {
            max_events: 4,
            max_age: std::time::Duration::from_secs(3600),
        },
        rules: vec![],
    };
    let core = Core::open(opts).unwrap();
    for n in 1..=9 {
        core.publish(vec![ev("a", n, None)]).await.unwrap();
    }
    // A resume that knew offsets 1..2 were lost, while retention has since trimmed through 5.
    let feed = Feed::new(core.clone(), Wire(Mutex::new(vec![])), 1 << 20);
    let known = session::Gap {
        channel: ch("a"),
        reason: GapReason::HistoryTrimmed,
        epoch: "e".into(),
        from: Some(1),
        to: Some(2),
    };
    let regs = feed.begin(vec![Want {
        channel: ch("a"),
        after: Some(2),
        epoch: None,
        gap: Some(known),
    }]);
    feed.complete(&regs).await.unwrap();
    assert_eq!(
        *feed.outlet.0.lock(),
        [
            "gap Some(1)..Some(2)",
            "gap Some(3)..Some(5)",
            "6",
            "7",
            "8",
            "9"
        ]
    );
}
