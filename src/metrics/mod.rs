//! `/metrics`: every figure of the server core in the Prometheus text format — connections, subscriptions,
//! channels, publishes, deliveries, latency and lag, group commits, queues, resumes, refusals, engine errors and
//! the process — after which the sources append theirs. The table of every series is in `docs/operations.md`.
//!
//! The figures live where they happen, as plain atomics ([`crate::core::stats`] for the types and the engine's,
//! `registry::CONNECTIONS`, `binding::stats`, `policy::refusals::REFUSALS`); this module only reads and formats
//! them. It is a hand-written registry rather than the `prometheus-client` or `metrics` crates because the
//! delivery path counts every event written to every connection: here that is one relaxed `fetch_add` on a
//! static, cache-line-aligned counter (no lock, no allocation, no label lookup, no handle to clone), labels are
//! array indexes fixed at compile time, and nothing is registered at run time. The crates' label maps and
//! registry locks would cost more there, and their exporters bring dependencies (`metrics-exporter-prometheus`
//! pulls in a TLS stack by default) for a format that fits in [`text`].
//!
//! Labels stay low-cardinality: transports, reasons, outcomes, origins and refusal codes — never a channel name,
//! user or connection id.

pub mod process;
pub mod text;

use crate::binding::stats as binding;
use crate::core::Engine;
use crate::core::stats::{self as core, Origin, Outcome};
use crate::registry::{CONNECTIONS, CloseReason, Registry, Transport};
use text::{Kind, Text};

/// Appends every core series to `out`, reading `engine`'s gauges and `registry`'s queues.
pub fn render(out: &mut String, engine: &dyn Engine, registry: &Registry) {
    let mut t = Text::new(out);
    connections(&mut t);
    let counts = engine.counts();
    t.single(
        "herald_subscriptions",
        Kind::Gauge,
        "Channel subscriptions held by this node's client connections.",
        counts.subscriptions,
    );
    t.single(
        "herald_channels",
        Kind::Gauge,
        "Channels the engine holds on this node (every channel for sqlite and memory; those seen here for redis).",
        counts.channels,
    );
    publishes(&mut t);
    deliveries(&mut t, registry);
    commits(&mut t);
    resumes(&mut t);
    refusals(&mut t);
    t.single(
        "herald_engine_errors_total",
        Kind::Counter,
        "Storage failures the engine met (unreachable or failing storage).",
        core::ENGINE_ERRORS.get(),
    );
    sql(&mut t);
    process::render(&mut t);
}

fn sql(t: &mut Text<'_>) {
    use crate::source::sql::stats as sql;
    let name = "herald_sql_polls_total";
    t.family(
        name,
        Kind::Counter,
        "SQL source polls, by result (error: the query failed or timed out, the result was over max_rows, or the change could not be published).",
    )
    .sample(name, &[("result", "ok")], sql::POLLS_OK.get())
    .sample(name, &[("result", "error")], sql::POLLS_FAILED.get());
    let name = "herald_sql_poll_duration_seconds";
    t.family(
        name,
        Kind::Histogram,
        "Time of each SQL source poll's query.",
    )
    .histogram(name, &[], &sql::POLL_SECONDS.snapshot());
    t.single(
        "herald_sql_rows_total",
        Kind::Counter,
        "Rows SQL source polls fetched.",
        sql::ROWS.get(),
    );
}

fn per_transport(
    t: &mut Text<'_>,
    name: &str,
    kind: Kind,
    help: &str,
    value: impl Fn(Transport) -> u64,
) {
    t.family(name, kind, help);
    for transport in Transport::ALL {
        t.sample(name, &[("transport", transport.name())], value(transport));
    }
}

fn connections(t: &mut Text<'_>) {
    per_transport(
        t,
        "herald_connections",
        Kind::Gauge,
        "Open client connections, by transport.",
        |tr| CONNECTIONS.open(tr).unsigned_abs(),
    );
    per_transport(
        t,
        "herald_connects_total",
        Kind::Counter,
        "Client connections accepted, by transport.",
        |tr| CONNECTIONS.opened(tr),
    );
    let name = "herald_disconnects_total";
    t.family(
        name,
        Kind::Counter,
        "Client connections ended, by transport and reason.",
    );
    for transport in Transport::ALL {
        for reason in CloseReason::ALL {
            t.sample(
                name,
                &[("transport", transport.name()), ("reason", reason.name())],
                CONNECTIONS.closed(transport, reason),
            );
        }
    }
}

fn publishes(t: &mut Text<'_>) {
    let name = "herald_publishes_total";
    t.family(
        name,
        Kind::Counter,
        "Events offered for publishing, by result (ok, rejected, failed) and source (a request refused before its events are known counts one).",
    );
    for origin in Origin::ALL {
        for outcome in Outcome::ALL {
            t.sample(
                name,
                &[("result", outcome.name()), ("source", origin.name())],
                core::PUBLISHES.get(origin, outcome),
            );
        }
    }
    let name = "herald_publish_duration_seconds";
    t.family(
        name,
        Kind::Histogram,
        "Time from a publish request to its commit (durable), for committed publishes.",
    )
    .histogram(name, &[], &core::PUBLISH_SECONDS.snapshot());
}

fn deliveries(t: &mut Text<'_>, registry: &Registry) {
    per_transport(
        t,
        "herald_deliveries_total",
        Kind::Counter,
        "Channel events (live and replayed) queued on client connections, by transport.",
        |tr| binding::DELIVERIES[tr as usize].get(),
    );
    per_transport(
        t,
        "herald_written_bytes_total",
        Kind::Counter,
        "Bytes written to client sockets, by transport.",
        |tr| match tr {
            // The Engine.IO layer counts for Socket.IO (it knows nothing of Herald's counters).
            Transport::SocketIo => {
                crate::transport::engineio::WRITTEN_BYTES.load(std::sync::atomic::Ordering::Relaxed)
            }
            other => binding::WRITTEN_BYTES[other as usize].get(),
        },
    );
    let queued = registry.queued_bytes();
    per_transport(
        t,
        "herald_queued_bytes",
        Kind::Gauge,
        "Bytes waiting in connections' outbound queues, by transport.",
        |tr| queued[tr as usize],
    );
    per_transport(
        t,
        "herald_slow_consumers_total",
        Kind::Counter,
        "Connections closed for falling behind by more than their queue bound, by transport.",
        |tr| binding::SLOW_CONSUMERS[tr as usize].get(),
    );
    let name = "herald_delivery_lag_seconds";
    t.family(
        name,
        Kind::Histogram,
        "Time from an event's commit to its write on a client socket, sampled once per write batch (millisecond resolution).",
    )
    .histogram(name, &[], &binding::DELIVERY_LAG.snapshot());
}

fn commits(t: &mut Text<'_>) {
    let name = "herald_commit_batch_size";
    t.family(
        name,
        Kind::Histogram,
        "Commands (publishes, session writes) per group commit of the SQLite engine.",
    )
    .histogram(name, &[], &core::COMMIT_BATCH.snapshot());
    let name = "herald_commit_fsync_seconds";
    t.family(
        name,
        Kind::Histogram,
        "Time of each group commit's COMMIT in the SQLite engine (the fsync, with durability = \"full\").",
    )
    .histogram(name, &[], &core::COMMIT_SECONDS.snapshot());
}

fn resumes(t: &mut Text<'_>) {
    let name = "herald_resumes_total";
    t.family(
        name,
        Kind::Counter,
        "Subscriptions made with a cursor, by outcome: recovered (nothing lost), gap (a loss was announced), snapshot (a state channel's snapshot was sent).",
    );
    for outcome in binding::Resume::ALL {
        t.sample(
            name,
            &[("outcome", outcome.name())],
            binding::RESUMES[outcome as usize].get(),
        );
    }
    t.single(
        "herald_replayed_events_total",
        Kind::Counter,
        "Events replayed from history to resuming or catching-up subscriptions.",
        binding::REPLAYED.get(),
    );
}

fn refusals(t: &mut Text<'_>) {
    let name = "herald_refusals_total";
    t.family(
        name,
        Kind::Counter,
        "Refusals told to clients (every transport's and the HTTP API's 4xx answers), by code.",
    );
    for (code, n) in crate::policy::refusals::REFUSALS.all() {
        t.sample(name, &[("code", code)], n);
    }
    t.single(
        "herald_client_messages_refused_total",
        Kind::Counter,
        "Client messages refused by messages_per_second, all transports.",
        crate::policy::rate::MESSAGES_REFUSED.load(std::sync::atomic::Ordering::Relaxed),
    );
}
