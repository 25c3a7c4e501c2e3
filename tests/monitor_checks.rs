//! `herald::source::monitor::check` against real targets started by each test on 127.0.0.1 ephemeral
//! ports: an axum HTTP server whose status, latency and body the test sets, an HTTPS server with a
//! certificate made at test time, TCP listeners, a UDP responder (echo, silent or off-pattern) and
//! a small DNS server answering from a table the test edits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::StreamExt;
use herald::source::monitor::check::{Check, FieldError, Outcome};
use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, TXT};
use hickory_resolver::proto::rr::{RData, Record};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const T: Duration = Duration::from_secs(5);
/// How far past its timeout a cut-off check may finish.
const MARGIN: Duration = Duration::from_millis(500);

fn check(v: Value) -> Check {
    let c: Check = serde_json::from_value(v).expect("test check definition");
    c.validate().expect("test check is valid");
    c
}

async fn run(c: &Check) -> Outcome {
    c.run(T).await
}

#[track_caller]
fn assert_up(o: &Outcome, message: &str) {
    assert!(o.ok, "expected ok, got {o:?}");
    assert!(
        o.message.contains(message),
        "message {:?} should contain {message:?}",
        o.message
    );
}

#[track_caller]
fn assert_down(o: &Outcome, message: &str) {
    assert!(!o.ok, "expected not ok, got {o:?}");
    assert!(
        o.message.contains(message),
        "message {:?} should contain {message:?}",
        o.message
    );
}

// ---------------------------------------------------------------- HTTP target

struct Behaviour {
    status: u16,
    delay: Duration,
    body: String,
}

#[derive(Clone)]
struct Target {
    behaviour: Arc<Mutex<Behaviour>>,
    /// Bytes of the huge body the server has produced so far.
    served: Arc<AtomicU64>,
}

impl Target {
    fn set(&self, status: u16, body: &str) {
        let mut b = self.behaviour.lock();
        b.status = status;
        b.body = body.to_owned();
    }
    fn set_delay(&self, d: Duration) {
        self.behaviour.lock().delay = d;
    }
}

async fn controlled(State(t): State<Target>) -> Response {
    let (status, delay, body) = {
        let b = t.behaviour.lock();
        (b.status, b.delay, b.body.clone())
    };
    if !delay.is_zero() {
        // The target's latency, which is what the check measures; not synchronisation.
        tokio::time::sleep(delay).await;
    }
    (StatusCode::from_u16(status).unwrap(), body).into_response()
}

async fn redirect(Path(n): Path<u32>) -> Response {
    if n == 0 {
        "arrived".into_response()
    } else {
        (
            StatusCode::FOUND,
            [(header::LOCATION, format!("/r/{}", n - 1))],
        )
            .into_response()
    }
}

async fn echo(method: Method, headers: HeaderMap, body: String) -> String {
    let x = headers
        .get("x-test")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    format!("method={method} x-test={x} body={body}")
}

static CHUNK: [u8; 65_536] = [b'x'; 65_536];

/// 1 GiB, generated chunk by chunk as the client reads.
async fn huge(State(t): State<Target>) -> Response {
    let served = t.served.clone();
    let stream = futures_util::stream::iter(0..16_384).map(move |_| {
        served.fetch_add(CHUNK.len() as u64, Ordering::Relaxed);
        Ok::<_, Infallible>(Bytes::from_static(&CHUNK))
    });
    Response::builder()
        .header(header::CONTENT_LENGTH, (1u64 << 30).to_string())
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn http_target() -> (String, Target) {
    let target = Target {
        behaviour: Arc::new(Mutex::new(Behaviour {
            status: 200,
            delay: Duration::ZERO,
            body: "hello".into(),
        })),
        served: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/", any(controlled))
        .route("/r/{n}", get(redirect))
        .route("/echo", any(echo))
        .route("/huge", get(huge))
        .with_state(target.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, target)
}

#[tokio::test]
async fn http_up_down_up() {
    let (base, target) = http_target().await;
    let c = check(json!({"kind": "http", "url": format!("{base}/")}));
    assert_eq!(c.target(), format!("{base}/"));

    let o = run(&c).await;
    assert_up(&o, "200 OK");
    assert_eq!(o.message, "200 OK");
    assert!(o.response_ms > 0.0 && o.response_ms < 5000.0, "{o:?}");
    assert_eq!(o.cert_days, None);

    target.set(503, "maintenance");
    assert_down(
        &run(&c).await,
        "503 Service Unavailable (accepted: 200-299)",
    );

    target.set(200, "hello");
    assert_up(&run(&c).await, "200 OK");

    // Latency: the measured time follows the target's.
    target.set_delay(Duration::from_millis(300));
    let o = run(&c).await;
    assert_up(&o, "200 OK");
    assert!(o.response_ms >= 300.0, "{o:?}");
}

#[tokio::test]
async fn http_slow_target_is_cut_off_by_the_timeout() {
    let (base, target) = http_target().await;
    let c = check(json!({"kind": "http", "url": format!("{base}/")}));
    target.set_delay(Duration::from_secs(30));
    let timeout = Duration::from_millis(800);
    let started = Instant::now();
    let o = c.run(timeout).await;
    let took = started.elapsed();
    assert_down(&o, "timed out after 800ms");
    assert!(took >= timeout && took < timeout + MARGIN, "took {took:?}");

    target.set_delay(Duration::ZERO);
    assert_up(&c.run(timeout).await, "200 OK");
}

#[tokio::test]
async fn http_hanging_target_is_cut_off_by_the_timeout() {
    // Accepts connections and never answers: the worst a target can do.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let c = check(json!({"kind": "http", "url": format!("http://{addr}/")}));
    let started = Instant::now();
    let o = c.run(Duration::from_secs(1)).await;
    let took = started.elapsed();
    assert_down(&o, "timed out after 1s");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(1) + MARGIN,
        "took {took:?}"
    );
    assert!(o.response_ms >= 1000.0 && o.response_ms < 1500.0, "{o:?}");
}

#[tokio::test]
async fn http_connection_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = check(json!({"kind": "http", "url": format!("http://{addr}/")}));
    assert_down(&run(&c).await, "connection refused");
}

#[tokio::test]
async fn http_keyword_present_and_absent() {
    let (base, target) = http_target().await;
    let present = check(json!({"kind": "http", "url": format!("{base}/"), "keyword": "healthy"}));
    let absent = check(json!({
        "kind": "http", "url": format!("{base}/"), "keyword": "ERROR", "keyword_absent": true
    }));

    target.set(200, "all systems healthy");
    assert_up(&run(&present).await, "200 OK");
    assert_up(&run(&absent).await, "200 OK");

    target.set(200, "ERROR: database unreachable");
    assert_down(&run(&present).await, "keyword \"healthy\" not found");
    assert_down(&run(&absent).await, "keyword \"ERROR\" found");

    target.set(200, "healthy again");
    assert_up(&run(&present).await, "200 OK");
    assert_up(&run(&absent).await, "200 OK");

    // The status still counts: a keyword on an error page is not UP.
    target.set(500, "healthy");
    assert_down(&run(&present).await, "500 Internal Server Error");
}

#[tokio::test]
async fn http_json_path() {
    let (base, target) = http_target().await;
    let status = check(json!({
        "kind": "http", "url": format!("{base}/"), "json_path": "$.status", "json_expected": "up"
    }));
    let nested = check(json!({
        "kind": "http", "url": format!("{base}/"), "json_path": "data.items[0].ok"
    }));
    let number = check(json!({
        "kind": "http", "url": format!("{base}/"), "json_path": "$.data.count", "json_expected": 3
    }));

    target.set(
        200,
        r#"{"status": "up", "data": {"items": [{"ok": true}], "count": 3}}"#,
    );
    assert_up(&run(&status).await, "200 OK");
    assert_up(&run(&nested).await, "200 OK");
    assert_up(&run(&number).await, "200 OK");

    target.set(
        200,
        r#"{"status": "down", "data": {"items": [{"ok": false}], "count": 2}}"#,
    );
    assert_down(&run(&status).await, r#"$.status is "down", expected "up""#);
    assert_down(&run(&nested).await, "data.items[0].ok is false");
    assert_down(&run(&number).await, "$.data.count is 2, expected 3");

    target.set(200, r#"{"data": {"items": []}}"#);
    assert_down(&run(&status).await, "$.status not found");
    assert_down(&run(&nested).await, "data.items[0].ok not found");

    target.set(200, "<html>not json</html>");
    assert_down(&run(&status).await, "body is not JSON");

    target.set(
        200,
        r#"{"status": "up", "data": {"items": [{"ok": 1}], "count": 3.0}}"#,
    );
    assert_up(&run(&status).await, "200 OK");
    assert_up(&run(&nested).await, "200 OK");
    assert_up(&run(&number).await, "200 OK");
}

#[tokio::test]
async fn http_accepted_status_ranges() {
    let (base, target) = http_target().await;
    let ranges = check(json!({
        "kind": "http", "url": format!("{base}/"), "accepted_status": ["200-299", "404", "3xx"]
    }));
    let exact =
        check(json!({"kind": "http", "url": format!("{base}/"), "accepted_status": ["418"]}));
    for (code, ranges_ok, exact_ok) in [
        (200, true, false),
        (204, true, false),
        (404, true, false),
        (304, true, false),
        (418, false, true),
        (500, false, false),
        (403, false, false),
    ] {
        target.set(code, "");
        let (a, b) = (run(&ranges).await, run(&exact).await);
        assert_eq!(a.ok, ranges_ok, "{code} against ranges: {a:?}");
        assert_eq!(b.ok, exact_ok, "{code} against 418: {b:?}");
        assert!(a.message.starts_with(&code.to_string()), "{a:?}");
    }
}

#[tokio::test]
async fn http_method_headers_and_body_are_sent() {
    let (base, _target) = http_target().await;
    let c = check(json!({
        "kind": "http", "url": format!("{base}/echo"), "method": "post",
        "headers": {"X-Test": "abc"}, "body": "payload-1",
        "keyword": "method=POST x-test=abc body=payload-1"
    }));
    assert_up(&run(&c).await, "200 OK");
}

#[tokio::test]
async fn http_redirects_followed_refused_and_limited() {
    let (base, _target) = http_target().await;
    let follow = check(json!({"kind": "http", "url": format!("{base}/r/3"), "keyword": "arrived"}));
    assert_up(&run(&follow).await, "200 OK");

    let refuse = check(json!({"kind": "http", "url": format!("{base}/r/3"), "max_redirects": 0}));
    assert_down(&run(&refuse).await, "302 Found (accepted: 200-299)");

    let redirect_is_fine = check(json!({
        "kind": "http", "url": format!("{base}/r/3"), "max_redirects": 0, "accepted_status": ["3xx"]
    }));
    assert_up(&run(&redirect_is_fine).await, "302 Found");

    let limited = check(json!({"kind": "http", "url": format!("{base}/r/3"), "max_redirects": 2}));
    assert_down(&run(&limited).await, "too many redirects (more than 2)");
    let enough = check(json!({"kind": "http", "url": format!("{base}/r/3"), "max_redirects": 3}));
    assert_up(&run(&enough).await, "200 OK");
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn http_one_gigabyte_body_is_not_read() {
    let (base, target) = http_target().await;
    let cap = 1024 * 1024u64;
    let c = check(json!({
        "kind": "http", "url": format!("{base}/huge"), "keyword": "needle", "max_body_bytes": cap
    }));
    let plain = check(json!({"kind": "http", "url": format!("{base}/huge")}));
    let before = rss_kib();
    let started = Instant::now();
    let o = run(&c).await;
    let took = started.elapsed();
    let o2 = run(&plain).await;
    let after = rss_kib();
    let served = target.served.load(Ordering::Relaxed);
    eprintln!(
        "1 GiB target: keyword check took {took:?}, server produced {} KiB for two checks, RSS {before} -> {after} KiB",
        served / 1024
    );
    assert_down(
        &o,
        "keyword \"needle\" not found in the first 1048576 bytes",
    );
    assert_up(&o2, "200 OK");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // What the server managed to produce is bounded by the cap plus socket buffers, far from 1 GiB.
    assert!(served < 64 * 1024 * 1024, "server produced {served} bytes");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "RSS grew {before} -> {after} KiB"
    );
}

// ---------------------------------------------------------------- HTTPS

async fn https_target(valid_days: i64) -> SocketAddr {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    // Half a day past the whole days, so the count cannot flip during the test.
    params.not_after = time::OffsetDateTime::now_utc()
        + time::Duration::days(valid_days)
        + time::Duration::hours(12);
    let cert = params.self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A rejected handshake (the verifying client) just ends this connection.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_self_signed_certificate_days() {
    let addr = https_target(30).await;
    let url = format!("https://127.0.0.1:{}/", addr.port());

    let verifying = check(json!({"kind": "http", "url": url}));
    let o = run(&verifying).await;
    assert_down(&o, "TLS error: invalid peer certificate: UnknownIssuer");

    let ignoring =
        check(json!({"kind": "http", "url": url, "ignore_tls": true, "keyword": "secure"}));
    let o = run(&ignoring).await;
    assert_up(&o, "200 OK");
    assert_eq!(o.cert_days, Some(30), "{o:?}");

    let strict = check(json!({
        "kind": "http", "url": url, "ignore_tls": true, "cert_expiry_days": 45
    }));
    let o = run(&strict).await;
    assert_down(&o, "certificate expires in 30 days (minimum 45)");
    assert_eq!(o.cert_days, Some(30));

    let lenient = check(json!({
        "kind": "http", "url": url, "ignore_tls": true, "cert_expiry_days": 14
    }));
    assert_up(&run(&lenient).await, "200 OK");
}

// ---------------------------------------------------------------- TCP

#[tokio::test]
async fn tcp_up_down_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = check(json!({"kind": "tcp", "host": "127.0.0.1", "port": addr.port()}));
    assert_eq!(c.target(), format!("127.0.0.1:{}", addr.port()));

    assert_up(
        &run(&c).await,
        &format!("connected to 127.0.0.1:{}", addr.port()),
    );
    drop(listener);
    assert_down(&run(&c).await, "connection refused");
    let _again = TcpListener::bind(addr).await.unwrap();
    assert_up(&run(&c).await, "connected");
}

#[tokio::test]
async fn tcp_by_host_name() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let c = check(json!({"kind": "tcp", "host": "localhost", "port": port}));
    c.validate_reachable(T).await.unwrap();
    assert_up(&run(&c).await, "connected");
}

// ---------------------------------------------------------------- UDP

#[derive(Clone, Copy, PartialEq, Debug)]
enum UdpMode {
    Echo,
    Silent,
    Reply(&'static str),
}

async fn udp_target(socket: UdpSocket, mode: Arc<Mutex<UdpMode>>) {
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let m = *mode.lock();
            let _ = match m {
                UdpMode::Echo => socket.send_to(&buf[..n], peer).await,
                UdpMode::Reply(r) => socket.send_to(r.as_bytes(), peer).await,
                UdpMode::Silent => continue,
            };
        }
    });
}

#[tokio::test]
async fn udp_echo_silent_mismatch_and_closed() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mode = Arc::new(Mutex::new(UdpMode::Echo));
    udp_target(socket, mode.clone()).await;

    let c = check(json!({
        "kind": "udp", "host": "127.0.0.1", "port": addr.port(), "payload": "ping-42", "expect": "ping-42"
    }));
    assert_eq!(c.target(), format!("udp 127.0.0.1:{}", addr.port()));
    let any_reply = check(
        json!({"kind": "udp", "host": "127.0.0.1", "port": addr.port(), "payload_hex": "de ad be ef"}),
    );

    assert_up(&run(&c).await, "reply of 7 bytes contains \"ping-42\"");
    assert_up(&run(&any_reply).await, "reply of 4 bytes");

    *mode.lock() = UdpMode::Silent;
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let o = c.run(timeout).await;
    let took = started.elapsed();
    assert_down(&o, "timed out after 700ms");
    assert!(took >= timeout && took < timeout + MARGIN, "took {took:?}");

    *mode.lock() = UdpMode::Reply("pong");
    assert_down(
        &run(&c).await,
        "reply of 4 bytes does not contain \"ping-42\": \"pong\"",
    );
    assert_up(&run(&any_reply).await, "reply of 4 bytes");

    *mode.lock() = UdpMode::Echo;
    assert_up(&run(&c).await, "contains");
}

#[tokio::test]
async fn udp_up_down_up_with_closed_port() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mode = Arc::new(Mutex::new(UdpMode::Echo));
    let c =
        check(json!({"kind": "udp", "host": "127.0.0.1", "port": addr.port(), "payload": "hi"}));

    // Nothing listening: the ICMP port-unreachable comes back as a refusal, well before the timeout.
    drop(socket);
    let started = Instant::now();
    assert_down(&run(&c).await, "connection refused");
    assert!(started.elapsed() < Duration::from_secs(1));

    let socket = UdpSocket::bind(addr).await.unwrap();
    udp_target(socket, mode.clone()).await;
    assert_up(&run(&c).await, "reply of 2 bytes");
}

// ---------------------------------------------------------------- DNS

type Zone = Arc<Mutex<HashMap<String, Vec<RData>>>>;

/// Answers from `zone` (names with the trailing dot, lower case); NXDOMAIN for names not in it.
async fn dns_server(zone: Zone) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(query.metadata.id, OpCode::Query);
            resp.metadata.recursion_desired = query.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.metadata.authoritative = true;
            for q in &query.queries {
                resp.add_query(q.clone());
                let name = q.name().to_string().to_ascii_lowercase();
                match zone.lock().get(&name) {
                    Some(rdatas) => {
                        for r in rdatas.iter().filter(|r| r.record_type() == q.query_type()) {
                            resp.add_answer(Record::from_rdata(q.name().clone(), 60, r.clone()));
                        }
                    }
                    None => resp.metadata.response_code = ResponseCode::NXDomain,
                }
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

fn a(ip: [u8; 4]) -> RData {
    RData::A(A(Ipv4Addr::from(ip)))
}

#[tokio::test]
async fn dns_up_down_up_and_nxdomain() {
    let zone: Zone = Arc::new(Mutex::new(HashMap::new()));
    zone.lock().insert(
        "api.test.".into(),
        vec![
            a([10, 0, 0, 1]),
            a([10, 0, 0, 2]),
            RData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
        ],
    );
    let server = dns_server(zone.clone()).await;
    let resolver = server.to_string();

    let c = check(json!({
        "kind": "dns", "name": "api.test", "resolver": resolver, "expected": "10.0.0.2"
    }));
    assert_eq!(c.target(), format!("dns A api.test @{resolver}"));
    let o = run(&c).await;
    assert_up(&o, "A 10.0.0.1, 10.0.0.2");

    zone.lock()
        .insert("api.test.".into(), vec![a([10, 0, 0, 9])]);
    assert_down(&run(&c).await, "expected \"10.0.0.2\", got A 10.0.0.9");

    zone.lock()
        .insert("api.test.".into(), vec![a([10, 0, 0, 2])]);
    assert_up(&run(&c).await, "A 10.0.0.2");

    zone.lock().remove("api.test.");
    assert_down(&run(&c).await, "NXDOMAIN");

    zone.lock().insert(
        "api.test.".into(),
        vec![RData::TXT(TXT::new(vec!["v=spf1 -all".into()]))],
    );
    let txt = check(json!({
        "kind": "dns", "name": "api.test.", "record_type": "txt", "resolver": resolver, "expected": "v=spf1"
    }));
    assert_up(&run(&txt).await, "TXT");
    // The name exists, but has no A record.
    assert_down(&run(&c).await, "no A records for api.test.");
}

#[tokio::test]
async fn dns_silent_server_is_cut_off() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let c = check(json!({"kind": "dns", "name": "example.com", "resolver": addr.to_string()}));
    let timeout = Duration::from_millis(800);
    let started = Instant::now();
    let o = c.run(timeout).await;
    let took = started.elapsed();
    // Either hickory's own per-query timeout or the check's; both say so.
    assert_down(&o, "timed out");
    assert!(took < timeout + MARGIN, "took {took:?}");
    drop(sock);
}

// ---------------------------------------------------------------- validation

fn invalid(v: Value) -> FieldError {
    let c: Check = serde_json::from_value(v).expect("parses");
    c.validate().expect_err("should be invalid")
}

#[test]
fn defaults_and_round_trip() {
    let c: Check =
        serde_json::from_value(json!({"kind": "http", "url": "https://example.com/"})).unwrap();
    let Check::Http(h) = &c else {
        panic!("not http: {c:?}")
    };
    assert_eq!(h.method, "GET");
    assert_eq!(h.accepted_status, vec!["200-299"]);
    assert_eq!(h.max_redirects, 10);
    assert_eq!(h.max_body_bytes, 1024 * 1024);
    assert!(!h.ignore_tls && !h.keyword_absent);
    let back: Check = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    assert_eq!(serde_json::to_value(&c).unwrap()["kind"], "http");

    let d: Check = serde_json::from_value(json!({"kind": "dns", "name": "example.com"})).unwrap();
    assert_eq!(d.target(), "dns A example.com");
    let Check::Dns(d) = d else { panic!() };
    assert_eq!(d.record_type, "A");
}

#[test]
fn bad_definitions_name_the_field() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"kind": "http", "url": "not a url"}),
            "check.url",
            "not a valid URL",
        ),
        (
            json!({"kind": "http", "url": "ftp://example.com/"}),
            "check.url",
            "scheme must be http or https",
        ),
        (
            json!({"kind": "http", "url": "http://example.com:0/"}),
            "check.url",
            "port",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "method": "G E T"}),
            "check.method",
            "not an HTTP method",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "headers": {"bad header": "v"}}),
            "check.headers.bad header",
            "header name",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "accepted_status": ["2xx", "700"]}),
            "check.accepted_status[1]",
            "100-599",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "accepted_status": []}),
            "check.accepted_status",
            "at least one",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "json_path": "$..x"}),
            "check.json_path",
            "invalid JSON path",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "json_expected": 1}),
            "check.json_expected",
            "needs json_path",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "keyword_absent": true}),
            "check.keyword_absent",
            "needs a keyword",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "max_body_bytes": 0}),
            "check.max_body_bytes",
            "at least 1",
        ),
        (
            json!({"kind": "tcp", "host": "db", "port": 0}),
            "check.port",
            "between 1 and 65535",
        ),
        (
            json!({"kind": "tcp", "host": "http://db", "port": 5432}),
            "check.host",
            "is a URL",
        ),
        (
            json!({"kind": "tcp", "host": "", "port": 5432}),
            "check.host",
            "empty",
        ),
        (
            json!({"kind": "udp", "host": "db", "port": 0}),
            "check.port",
            "between 1 and 65535",
        ),
        (
            json!({"kind": "udp", "host": "db", "port": 53, "payload_hex": "xyz"}),
            "check.payload_hex",
            "odd number",
        ),
        (
            json!({"kind": "udp", "host": "db", "port": 53, "payload": "a", "payload_hex": "00"}),
            "check.payload_hex",
            "not both",
        ),
        (
            json!({"kind": "dns", "name": "example.com", "record_type": "ANY"}),
            "check.record_type",
            "not a supported record type",
        ),
        (
            json!({"kind": "dns", "name": "example.com", "record_type": "BOGUS"}),
            "check.record_type",
            "not a supported record type",
        ),
        (
            json!({"kind": "dns", "name": "example.com", "resolver": "dns.google"}),
            "check.resolver",
            "IP:PORT",
        ),
        (json!({"kind": "dns", "name": ""}), "check.name", "empty"),
        (
            json!({"kind": "dns", "name": "x.test", "expected": "mail.x.test"}),
            "check.expected",
            "not an IPv4 address",
        ),
        (
            json!({"kind": "dns", "name": "x.test", "record_type": "AAAA", "expected": "10.0.0.1"}),
            "check.expected",
            "not an IPv6 address",
        ),
    ];
    for (def, field, message) in cases {
        let e = invalid(def.clone());
        assert_eq!(e.field, field, "{def}: {e}");
        assert!(e.message.contains(message), "{def}: {e}");
        assert_eq!(e.to_string(), format!("{field}: {}", e.message));
    }
}

#[test]
fn unknown_kind_and_fields_are_serde_errors() {
    let e = serde_json::from_value::<Check>(json!({"kind": "icmp", "host": "x"})).unwrap_err();
    assert!(e.to_string().contains("unknown variant `icmp`"), "{e}");
    assert!(e.to_string().contains("`http`, `tcp`, `udp`, `dns`"), "{e}");
    let e = serde_json::from_value::<Check>(json!({"host": "x", "port": 1})).unwrap_err();
    assert!(e.to_string().contains("missing field `kind`"), "{e}");
    let e =
        serde_json::from_value::<Check>(json!({"kind": "tcp", "host": "x", "port": 1, "prot": 2}))
            .unwrap_err();
    assert!(e.to_string().contains("unknown field `prot`"), "{e}");
    let e = serde_json::from_value::<Check>(json!({"kind": "tcp", "host": "x", "port": 70000}))
        .unwrap_err();
    assert!(e.to_string().contains("70000"), "{e}");
}

#[tokio::test]
async fn unresolvable_host_names_are_rejected() {
    for (def, field) in [
        (
            json!({"kind": "http", "url": "http://nonexistent.invalid/"}),
            "check.url",
        ),
        (
            json!({"kind": "tcp", "host": "nonexistent.invalid", "port": 80}),
            "check.host",
        ),
        (
            json!({"kind": "udp", "host": "nonexistent.invalid", "port": 53}),
            "check.host",
        ),
    ] {
        let c: Check = serde_json::from_value(def.clone()).unwrap();
        c.validate().expect("statically fine");
        let e = c.validate_reachable(T).await.expect_err("must not resolve");
        assert_eq!(e.field, field, "{def}: {e}");
        assert!(e.message.contains("nonexistent.invalid"), "{e}");
        // Run anyway (a host that stopped resolving later): a clean DOWN, not a panic.
        let o = c.run(T).await;
        assert!(!o.ok, "{o:?}");
        assert!(o.message.contains("cannot resolve"), "{o:?}");
    }
    // Literal addresses need no resolution.
    let c = check(json!({"kind": "tcp", "host": "127.0.0.1", "port": 9}));
    c.validate_reachable(T).await.unwrap();
}

#[tokio::test]
async fn an_invalid_check_run_anyway_is_down_not_a_panic() {
    let c: Check = serde_json::from_value(json!({"kind": "tcp", "host": "db", "port": 0})).unwrap();
    let o = c.run(T).await;
    assert_down(&o, "invalid check: check.port");
}
