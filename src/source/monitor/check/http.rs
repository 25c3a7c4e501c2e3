//! HTTP(S) checks: one request (plus redirects, followed here so each check has its own limit),
//! a body read that stops at `max_body_bytes`, then status, certificate, keyword and JSON verdicts.
//! Two shared clients (verifying and not) without connection pooling, so every check pays for
//! and measures a fresh connect and sees the certificate the server presents now.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use reqwest::Url;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::BuilderVerifierExt;

use super::json_path::{self, JsonPath};
use super::{FieldError, HttpCheck, Verdict, cert, describe_error};

/// One accepted status pattern: "200", "200-299" or "3xx".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest accepted code.
    pub lo: u16,
    /// Highest accepted code.
    pub hi: u16,
}

impl StatusRange {
    /// Parses "200", "200-299" or "3xx" (case-insensitive x).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(n) if (100..=599).contains(&n) => Ok(n),
                _ => Err(format!("\"{t}\" is not a status code (100-599)")),
            }
        };
        let lower = s.to_ascii_lowercase();
        if lower.len() == 3 && lower.ends_with("xx") {
            let c = lower.as_bytes()[0];
            if (b'1'..=b'5').contains(&c) {
                let base = u16::from(c - b'0') * 100;
                return Ok(Self {
                    lo: base,
                    hi: base + 99,
                });
            }
            return Err(format!("\"{s}\" is not a status class (1xx-5xx)"));
        }
        if let Some((a, b)) = s.split_once('-') {
            let (lo, hi) = (code(a)?, code(b)?);
            if lo > hi {
                return Err(format!("\"{s}\": range start is above its end"));
            }
            return Ok(Self { lo, hi });
        }
        let n = code(s)?;
        Ok(Self { lo: n, hi: n })
    }

    /// Whether `code` is in the range.
    pub fn contains(&self, code: u16) -> bool {
        (self.lo..=self.hi).contains(&code)
    }
}

/// Static checks; returns the parsed URL for the caller's convenience.
pub(super) fn validate(c: &HttpCheck) -> Result<Url, FieldError> {
    let url = Url::parse(c.url.trim())
        .map_err(|e| FieldError::new("check.url", format!("not a valid URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(FieldError::new(
            "check.url",
            format!("scheme must be http or https, not \"{}\"", url.scheme()),
        ));
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(FieldError::new("check.url", "URL has no host")),
    }
    if url.port() == Some(0) {
        return Err(FieldError::new(
            "check.url",
            "port must be between 1 and 65535",
        ));
    }
    method(&c.method)?;
    headers(c)?;
    if c.accepted_status.is_empty() {
        return Err(FieldError::new(
            "check.accepted_status",
            "must list at least one status, e.g. \"200-299\"",
        ));
    }
    for (i, s) in c.accepted_status.iter().enumerate() {
        StatusRange::parse(s)
            .map_err(|m| FieldError::new(format!("check.accepted_status[{i}]"), m))?;
    }
    match &c.keyword {
        Some(k) if k.is_empty() => {
            return Err(FieldError::new("check.keyword", "must not be empty"));
        }
        None if c.keyword_absent => {
            return Err(FieldError::new(
                "check.keyword_absent",
                "needs a keyword to look for",
            ));
        }
        _ => {}
    }
    match &c.json_path {
        Some(p) => {
            JsonPath::parse(p).map_err(|e| FieldError::new("check.json_path", e.to_string()))?;
        }
        None if c.json_expected.is_some() => {
            return Err(FieldError::new(
                "check.json_expected",
                "needs json_path to say where the value is",
            ));
        }
        None => {}
    }
    if c.max_body_bytes == 0 {
        return Err(FieldError::new(
            "check.max_body_bytes",
            "must be at least 1",
        ));
    }
    Ok(url)
}

fn method(m: &str) -> Result<Method, FieldError> {
    Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| FieldError::new("check.method", format!("\"{m}\" is not an HTTP method")))
}

fn headers(c: &HttpCheck) -> Result<HeaderMap, FieldError> {
    let mut map = HeaderMap::new();
    for (k, v) in &c.headers {
        let field = format!("check.headers.{k}");
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| FieldError::new(&field, "not a valid header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| FieldError::new(&field, "not a valid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Accepts any certificate (the check's `ignore_tls`) while still checking handshake
/// signatures, so the connection is at least to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn build_client(ignore_tls: bool) -> Result<reqwest::Client, String> {
    // The ring provider is passed explicitly so checks work whether or not the process
    // installed a default provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let tls = if ignore_tls {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_platform_verifier()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .no_proxy()
        .user_agent(concat!("Herald-Monitor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client setup: {}", describe_error(&e)))
}

fn client(ignore_tls: bool) -> Result<&'static reqwest::Client, String> {
    static VERIFYING: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    static IGNORING: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    let cell = if ignore_tls { &IGNORING } else { &VERIFYING };
    cell.get_or_init(|| build_client(ignore_tls))
        .as_ref()
        .map_err(Clone::clone)
}

fn cert_days(der: &[u8]) -> Option<i64> {
    let not_after = cert::not_after_unix(der).ok()?;
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    Some((not_after - now).div_euclid(86_400))
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub(super) async fn run(c: &HttpCheck) -> Verdict {
    // `validate` already passed in `Check::run`; these repeat it only to obtain the values.
    let (mut url, mut method, mut headers) = match (validate(c), method(&c.method), headers(c)) {
        (Ok(u), Ok(m), Ok(h)) => (u, m, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Verdict::down(format!("invalid check: {e}"));
        }
    };
    let client = match client(c.ignore_tls) {
        Ok(c) => c,
        Err(e) => return Verdict::down(e),
    };
    let mut body = c.body.clone();
    let mut redirects = 0u32;
    let mut days: Option<i64> = None;
    let mut response = loop {
        let mut req = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(b) = &body {
            req = req.body(b.clone());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let mut v = Verdict::down(describe_error(&e));
                v.cert_days = days;
                return v;
            }
        };
        // The certificate judged is the first one seen: the monitored URL's own, or the first
        // https hop's when an http URL redirects.
        if days.is_none()
            && let Some(der) = resp
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|i| i.peer_certificate())
        {
            days = cert_days(der);
        }
        let status = resp.status();
        let location = resp.headers().get(header::LOCATION).cloned();
        match location {
            Some(loc) if status.is_redirection() && c.max_redirects > 0 => {
                if redirects >= c.max_redirects {
                    let mut v = Verdict::down(format!(
                        "too many redirects (more than {})",
                        c.max_redirects
                    ));
                    v.cert_days = days;
                    return v;
                }
                let next = match loc.to_str().ok().and_then(|l| url.join(l).ok()) {
                    Some(n) if n.scheme() == "http" || n.scheme() == "https" => n,
                    _ => {
                        let mut v = Verdict::down(format!(
                            "{} redirect to an invalid location {:?}",
                            status.as_u16(),
                            String::from_utf8_lossy(loc.as_bytes())
                        ));
                        v.cert_days = days;
                        return v;
                    }
                };
                // What browsers do: 303 always, 301/302 after POST, become a body-less GET.
                if status == StatusCode::SEE_OTHER
                    || (method == Method::POST
                        && (status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND))
                {
                    method = Method::GET;
                    body = None;
                    headers.remove(header::CONTENT_TYPE);
                    headers.remove(header::CONTENT_LENGTH);
                }
                // Credentials are for the origin they were configured for.
                if !same_origin(&url, &next) {
                    headers.remove(header::AUTHORIZATION);
                    headers.remove(header::COOKIE);
                    headers.remove(header::PROXY_AUTHORIZATION);
                }
                redirects += 1;
                url = next;
            }
            _ => break resp,
        }
    };

    let status = response.status();
    let cap = usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX);
    let mut buf: Vec<u8> = Vec::new();
    let mut truncated = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - buf.len();
                if chunk.len() > room {
                    buf.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    // Dropping the response closes the connection: the rest is never read.
                    break;
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let mut v = Verdict::down(format!(
                    "{} {}, then reading the body failed: {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or(""),
                    describe_error(&e)
                ));
                v.cert_days = days;
                return v;
            }
        }
    }
    drop(response);
    let mut verdict = judge(c, status, &buf, truncated, days);
    verdict.cert_days = days;
    verdict
}

fn judge(
    c: &HttpCheck,
    status: StatusCode,
    body: &[u8],
    truncated: bool,
    days: Option<i64>,
) -> Verdict {
    let status_text = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned();
    let accepted = c
        .accepted_status
        .iter()
        .filter_map(|s| StatusRange::parse(s).ok())
        .any(|r| r.contains(status.as_u16()));
    if !accepted {
        return Verdict::down(format!(
            "{status_text} (accepted: {})",
            c.accepted_status.join(", ")
        ));
    }
    if let (Some(min), Some(d)) = (c.cert_expiry_days, days)
        && d < i64::from(min)
    {
        return Verdict::down(if d < 0 {
            format!("certificate expired {} days ago", -d)
        } else {
            format!("certificate expires in {d} days (minimum {min})")
        });
    }
    let cut = if truncated {
        format!(" in the first {} bytes", body.len())
    } else {
        String::new()
    };
    if let Some(k) = &c.keyword {
        let text = String::from_utf8_lossy(body);
        let found = text.contains(k.as_str());
        if found && c.keyword_absent {
            return Verdict::down(format!("{status_text}, keyword \"{k}\" found"));
        }
        if !found && !c.keyword_absent {
            return Verdict::down(format!("{status_text}, keyword \"{k}\" not found{cut}"));
        }
    }
    if let Some(p) = &c.json_path {
        let Ok(path) = JsonPath::parse(p) else {
            return Verdict::down(format!("invalid json_path \"{p}\""));
        };
        let doc: serde_json::Value = match serde_json::from_slice(body) {
            Ok(d) => d,
            Err(e) => {
                let why = if truncated {
                    format!("cut off at {} bytes (max_body_bytes)", body.len())
                } else {
                    e.to_string()
                };
                return Verdict::down(format!("{status_text}, body is not JSON: {why}"));
            }
        };
        match (path.get(&doc), &c.json_expected) {
            (None, _) => return Verdict::down(format!("{status_text}, {p} not found in the body")),
            (Some(v), Some(expected)) if !json_path::matches(v, expected) => {
                return Verdict::down(format!("{status_text}, {p} is {v}, expected {expected}"));
            }
            (Some(v), None) if v.is_null() || *v == serde_json::Value::Bool(false) => {
                return Verdict::down(format!("{status_text}, {p} is {v}"));
            }
            _ => {}
        }
    }
    Verdict::up(status_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        let r = |s| StatusRange::parse(s);
        assert_eq!(r("200"), Ok(StatusRange { lo: 200, hi: 200 }));
        assert_eq!(r("200-299"), Ok(StatusRange { lo: 200, hi: 299 }));
        assert_eq!(r("3xx"), Ok(StatusRange { lo: 300, hi: 399 }));
        assert_eq!(r("5XX"), Ok(StatusRange { lo: 500, hi: 599 }));
        for bad in ["", "abc", "99", "600", "299-200", "6xx", "2x", "200-", "-"] {
            assert!(r(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
