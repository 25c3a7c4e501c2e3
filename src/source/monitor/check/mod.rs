//! The check engine of the service monitor: one probe of a target (HTTP(S), TCP, UDP or DNS),
//! its static and resolving validation, and the verdict it produces. Scheduling, retries,
//! persistence and events live around it in the rest of `monitor`.

mod cert;
mod dns;
mod http;
mod json_path;
mod net;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use cert::{DerError, not_after_unix};
pub use http::StatusRange;
pub use json_path::{JsonPath, JsonPathError};

/// What to check. Internally tagged by "kind": "http" | "tcp" | "udp" | "dns".
/// (A "keyword" check is an http check with `keyword` set.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Check {
    /// An HTTP(S) request whose status, body and certificate are judged.
    Http(HttpCheck),
    /// A TCP connect.
    Tcp(TcpCheck),
    /// A UDP datagram that must be answered.
    Udp(UdpCheck),
    /// A DNS query whose answer may have to match.
    Dns(DnsCheck),
}

/// An HTTP(S) check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Request method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default)]
    pub body: Option<String>,
    /// Accepted status codes: "200", "200-299", "3xx".
    #[serde(default = "default_accepted_status")]
    pub accepted_status: Vec<String>,
    /// Redirects followed at most; 0 = a redirect is the answer itself.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// Case-sensitive substring that must be present in the body (or absent with `keyword_absent`).
    #[serde(default)]
    pub keyword: Option<String>,
    /// The keyword must be absent instead of present.
    #[serde(default)]
    pub keyword_absent: bool,
    /// A path into the JSON body, e.g. "$.status" or "data.items[0].ok".
    #[serde(default)]
    pub json_path: Option<String>,
    /// The value `json_path` must equal; without it the value must exist and be neither null nor false.
    #[serde(default)]
    pub json_expected: Option<serde_json::Value>,
    /// Accept any TLS certificate (self-signed, expired, wrong host).
    #[serde(default)]
    pub ignore_tls: bool,
    /// DOWN when the TLS certificate expires in fewer days than this.
    #[serde(default)]
    pub cert_expiry_days: Option<u32>,
    /// The body is read up to this many bytes and no further.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

/// A TCP connect check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    /// Host name or IP address.
    pub host: String,
    /// Port, 1-65535.
    pub port: u16,
}

/// A UDP request/reply check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpCheck {
    /// Host name or IP address.
    pub host: String,
    /// Port, 1-65535.
    pub port: u16,
    /// Text payload sent (ignored when `payload_hex` is set).
    #[serde(default)]
    pub payload: String,
    /// Binary payload as hex, e.g. "deadbeef".
    #[serde(default)]
    pub payload_hex: Option<String>,
    /// Substring the reply must contain; None = any reply.
    #[serde(default)]
    pub expect: Option<String>,
}

/// A DNS query check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCheck {
    /// The name queried.
    pub name: String,
    /// A AAAA CNAME MX TXT NS SOA SRV PTR CAA.
    #[serde(default = "default_record_type")]
    pub record_type: String,
    /// "IP:PORT" or "IP"; the system resolver when absent.
    #[serde(default)]
    pub resolver: Option<String>,
    /// An answer must equal or contain this.
    #[serde(default)]
    pub expected: Option<String>,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The target answered as expected.
    pub ok: bool,
    /// Time to the verdict (connect + request + read), in milliseconds.
    #[serde(serialize_with = "crate::number::serialize")]
    pub response_ms: f64,
    /// Human readable verdict: "200 OK", "connection refused", "timed out after 5s", ...
    pub message: String,
    /// Days until the TLS certificate expires (https only).
    pub cert_days: Option<i64>,
}

/// A field-level validation error: `field` is the JSON path of the bad field, e.g. "check.url".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the bad field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A new error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Supported DNS record types.
pub const DNS_RECORD_TYPES: &[&str] = &[
    "A", "AAAA", "CNAME", "MX", "TXT", "NS", "SOA", "SRV", "PTR", "CAA",
];

fn default_method() -> String {
    "GET".to_owned()
}
fn default_accepted_status() -> Vec<String> {
    vec!["200-299".to_owned()]
}
fn default_max_redirects() -> u32 {
    10
}
fn default_max_body_bytes() -> u64 {
    1024 * 1024
}
fn default_record_type() -> String {
    "A".to_owned()
}

impl Check {
    /// Static validation (URL syntax and scheme, ports, record types, status ranges, json path
    /// syntax, ...). Field names are prefixed "check.".
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            Check::Http(c) => http::validate(c).map(|_| ()),
            Check::Tcp(c) => {
                validate_host(&c.host, "check.host")?;
                validate_port(c.port, "check.port")
            }
            Check::Udp(c) => net::validate_udp(c),
            Check::Dns(c) => dns::validate(c),
        }
    }

    /// Validation that also resolves host names (an unresolvable host is a FieldError on
    /// "check.url"/"check.host"), bounded by `timeout`.
    pub async fn validate_reachable(&self, timeout: Duration) -> Result<(), FieldError> {
        self.validate()?;
        let (host, port, field) = match self {
            Check::Http(c) => {
                let url = http::validate(c)?;
                let host = url.host_str().unwrap_or_default().to_owned();
                let port = url.port_or_known_default().unwrap_or(80);
                (host, port, "check.url")
            }
            Check::Tcp(c) => (c.host.clone(), c.port, "check.host"),
            Check::Udp(c) => (c.host.clone(), c.port, "check.host"),
            // The queried name not existing is a check result (NXDOMAIN), not bad input, and the
            // resolver is an IP address, so there is nothing to resolve.
            Check::Dns(_) => return Ok(()),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(());
        }
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(mut addrs)) => {
                if addrs.next().is_some() {
                    Ok(())
                } else {
                    Err(FieldError::new(
                        field,
                        format!("host \"{host}\" has no addresses"),
                    ))
                }
            }
            Ok(Err(e)) => Err(FieldError::new(
                field,
                format!("host \"{host}\" does not resolve: {e}"),
            )),
            Err(_) => Err(FieldError::new(
                field,
                format!(
                    "host \"{host}\" did not resolve within {}",
                    format_duration(timeout)
                ),
            )),
        }
    }

    /// Runs the check once; never panics, never exceeds `timeout` (a hanging target is cut off
    /// and reported as not ok).
    pub async fn run(&self, timeout: Duration) -> Outcome {
        let started = Instant::now();
        if let Err(e) = self.validate() {
            return Outcome {
                ok: false,
                response_ms: 0.0,
                message: format!("invalid check: {e}"),
                cert_days: None,
            };
        }
        let probe = async {
            match self {
                Check::Http(c) => http::run(c).await,
                Check::Tcp(c) => net::run_tcp(c).await,
                Check::Udp(c) => net::run_udp(c).await,
                Check::Dns(c) => dns::run(c, timeout).await,
            }
        };
        let verdict = tokio::time::timeout(timeout, probe).await;
        let response_ms = started.elapsed().as_secs_f64() * 1000.0;
        match verdict {
            Ok(v) => Outcome {
                ok: v.ok,
                response_ms,
                message: truncate(v.message),
                cert_days: v.cert_days,
            },
            Err(_) => Outcome {
                ok: false,
                response_ms,
                message: format!("timed out after {}", format_duration(timeout)),
                cert_days: None,
            },
        }
    }

    /// The target as shown to anyone who can see the monitor: an HTTP URL without credentials or query string
    /// (they may carry secrets); other kinds as [`Check::target`].
    pub fn public_target(&self) -> String {
        match self {
            Check::Http(c) => match reqwest::Url::parse(&c.url) {
                Ok(mut url) => {
                    let _ = url.set_username("");
                    let _ = url.set_password(None);
                    url.set_query(None);
                    url.set_fragment(None);
                    url.to_string()
                }
                Err(_) => String::new(),
            },
            other => other.target(),
        }
    }

    /// A short target description for display and metrics labels ("https://x/y", "db:5432",
    /// "udp db:53", "dns A example.com").
    pub fn target(&self) -> String {
        match self {
            Check::Http(c) => c.url.clone(),
            Check::Tcp(c) => host_port(&c.host, c.port),
            Check::Udp(c) => format!("udp {}", host_port(&c.host, c.port)),
            Check::Dns(c) => {
                let rt = c.record_type.to_ascii_uppercase();
                match &c.resolver {
                    Some(r) => format!("dns {rt} {} @{r}", c.name),
                    None => format!("dns {rt} {}", c.name),
                }
            }
        }
    }
}

/// The verdict of a probe before timing is attached.
pub(crate) struct Verdict {
    ok: bool,
    message: String,
    cert_days: Option<i64>,
}

impl Verdict {
    fn up(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
            cert_days: None,
        }
    }
    fn down(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            cert_days: None,
        }
    }
}

/// "5s", "1.5s", "250ms": short and stable for messages.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A host must be an IP address or a DNS name; anything with a scheme, path or spaces is a
/// mistake worth naming before the first check runs.
fn validate_host(host: &str, field: &str) -> Result<(), FieldError> {
    if host.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if host.contains("://") {
        return Err(FieldError::new(
            field,
            format!("\"{host}\" is a URL; give only the host name or IP address"),
        ));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(FieldError::new(
            field,
            format!("\"{host}\" is not a valid host name or IP address"),
        ));
    }
    Ok(())
}

fn validate_port(port: u16, field: &str) -> Result<(), FieldError> {
    if port == 0 {
        Err(FieldError::new(field, "must be between 1 and 65535"))
    } else {
        Ok(())
    }
}

/// The most useful description of an error: its chain without the HTTP client's wrappers, with
/// well-known I/O, TLS and name resolution causes named plainly.
fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut dns = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("TLS error: {tls}");
        }
        let io = e.downcast_ref::<std::io::Error>();
        if let Some(plain) = io.and_then(describe_io) {
            return plain;
        }
        let text = e.to_string();
        dns |= text.starts_with("dns error");
        // Wrappers that only say "the request failed"; and pieces repeating a previous one.
        let wrapper = text.starts_with("error sending request for url")
            || text.starts_with("client error (")
            || text == "dns error";
        if !wrapper && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        // A custom io::Error's source() skips the error it wraps, so step into it instead.
        cur = match io.and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    if dns {
        let innermost = parts.last().cloned().unwrap_or_default();
        return format!("cannot resolve host name: {innermost}");
    }
    if parts.is_empty() {
        return err.to_string();
    }
    parts.join(": ")
}

fn describe_io(e: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind::*;
    let plain = match e.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset",
        ConnectionAborted => "connection aborted",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        AddrNotAvailable => "address not available",
        UnexpectedEof => "connection closed unexpectedly",
        _ => return None,
    };
    Some(plain.to_owned())
}

/// Longest check message kept: a message may quote what a target sent, and it travels in every log entry and
/// status event.
const MAX_MESSAGE: usize = 512;

/// Cuts `message` to [`MAX_MESSAGE`] bytes at a character boundary.
fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn public_target_hides_credentials_and_query() {
        let check: Check = serde_json::from_value(serde_json::json!({
            "kind": "http", "url": "https://user:secret@example.com/health?token=abc#x"
        }))
        .unwrap();
        assert_eq!(check.public_target(), "https://example.com/health");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let cut = truncate("é".repeat(600));
        assert!(cut.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short".into()), "short");
    }
}
