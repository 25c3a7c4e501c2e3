//! Seed 000's flat targets: `{name, type, url | host + port, interval, keyword}` as its frontend sends them to
//! `/api/targets`, turned into a [`MonitorSpec`] (merged over the current one on an update), and the flat fields
//! a target object shows back.

use serde_json::{Map, Value, json};

use super::check::{Check, FieldError, HttpCheck, TcpCheck, UdpCheck};
use super::spec::MonitorSpec;

/// The fields a flat target may set.
const FIELDS: &[&str] = &[
    "id", "name", "type", "url", "host", "port", "interval", "keyword", "timeout", "retries",
    "tags", "paused", "isPaused",
];

/// Fields of the target objects Herald sends: a frontend may send an object back as it got it (they are
/// read-only and ignored).
const READ_ONLY: &[&str] = &[
    "kind",
    "target",
    "status",
    "responseTime",
    "lastCheckAt",
    "lastChange",
    "message",
    "uptime24h",
    "uptime30d",
    "avgResponseTime",
    "certDaysLeft",
    "recent",
    "details",
];

/// A target's flat type: `http`, `keyword`, `tcp`, `udp` (and `dns`, which only the monitor API creates).
pub fn flat_type(check: &Check) -> &'static str {
    match check {
        Check::Http(h) if h.keyword.is_some() => "keyword",
        Check::Http(_) => "http",
        Check::Tcp(_) => "tcp",
        Check::Udp(_) => "udp",
        Check::Dns(_) => "dns",
    }
}

/// The flat definition fields of a target object. `public`: the URL without credentials or query string, as
/// everyone who can see the monitor gets it (like its `target`); the key-holding API shows it whole.
pub fn flat_fields(spec: &MonitorSpec, public: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!(flat_type(&spec.check)));
    match &spec.check {
        Check::Http(h) => {
            let url = if public {
                spec.check.public_target()
            } else {
                h.url.clone()
            };
            m.insert("url".into(), json!(url));
            if let Some(k) = &h.keyword {
                m.insert("keyword".into(), json!(k));
            }
        }
        Check::Tcp(TcpCheck { host, port }) | Check::Udp(UdpCheck { host, port, .. }) => {
            m.insert("host".into(), json!(host));
            m.insert("port".into(), json!(port));
        }
        Check::Dns(d) => {
            m.insert("host".into(), json!(d.name));
        }
    }
    m
}

/// The definition a flat target body describes, over `base` (the current definition, on an update): fields the
/// body leaves out keep their value, and so do the settings a flat target cannot express (headers, accepted
/// statuses, retries…) as long as the check keeps its kind. Errors name the flat field.
pub fn spec_from_flat(base: Option<&MonitorSpec>, body: &Value) -> Result<MonitorSpec, FieldError> {
    let Value::Object(b) = body else {
        return Err(FieldError::new("", "a target is a JSON object"));
    };
    if let Some(k) = b
        .keys()
        .find(|k| !FIELDS.contains(&k.as_str()) && !READ_ONLY.contains(&k.as_str()))
    {
        return Err(FieldError::new(
            k.as_str(),
            format!("unknown field; a target has {}", FIELDS.join(", ")),
        ));
    }
    let given = |k: &str| b.get(k).filter(|v| !v.is_null());
    let name = match (given("name"), base) {
        (Some(Value::String(s)), _) => s.clone(),
        (Some(_), _) => return Err(FieldError::new("name", "must be a string")),
        (None, Some(base)) => base.name.clone(),
        (None, None) => return Err(FieldError::new("name", "missing field")),
    };
    let check_given = ["type", "url", "host", "port", "keyword"]
        .iter()
        .any(|k| given(k).is_some());
    let check = match base {
        Some(base) if !check_given => base.check.clone(),
        _ => check_from_flat(base.map(|s| &s.check), &given)?,
    };
    let mut spec = match base {
        Some(base) => MonitorSpec {
            name,
            check,
            ..base.clone()
        },
        None => MonitorSpec {
            id: None,
            name,
            check,
            interval: 60.0,
            timeout: None,
            retries: 0,
            degraded_ms: None,
            channel: None,
            tags: Vec::new(),
            paused: false,
        },
    };
    if let Some(v) = given("id") {
        spec.id = Some(string(v, "id")?);
    }
    if let Some(v) = given("interval") {
        spec.interval = number(v, "interval")?;
    }
    if let Some(v) = b.get("timeout") {
        spec.timeout = if v.is_null() {
            None
        } else {
            Some(number(v, "timeout")?)
        };
    }
    if let Some(v) = given("retries") {
        let n = number(v, "retries")?;
        if n.fract() != 0.0 || !(0.0..=100.0).contains(&n) {
            return Err(FieldError::new("retries", "a whole number from 0 to 100"));
        }
        spec.retries = n as u32;
    }
    if let Some(v) = given("tags") {
        spec.tags = serde_json::from_value(v.clone())
            .map_err(|_| FieldError::new("tags", "an array of strings"))?;
    }
    for k in ["paused", "isPaused"] {
        match given(k) {
            Some(Value::Bool(p)) => spec.paused = *p,
            Some(_) => return Err(FieldError::new(k, "true or false")),
            None => {}
        }
    }
    Ok(spec)
}

/// The check of a flat target: `type` (inferred from `url` / `host` when absent), then the fields of that type,
/// each taken from the body or else from `base` when it is of the same transport.
fn check_from_flat<'a>(
    base: Option<&Check>,
    given: &impl Fn(&str) -> Option<&'a Value>,
) -> Result<Check, FieldError> {
    let kind = match given("type") {
        Some(Value::String(t)) => match t.to_ascii_lowercase().as_str() {
            "http" | "https" => "http",
            "keyword" => "keyword",
            "tcp" | "port" => "tcp",
            "udp" => "udp",
            _ => {
                return Err(FieldError::new(
                    "type",
                    format!("unknown type {t:?}; expected http, keyword, tcp or udp"),
                ));
            }
        },
        Some(_) => return Err(FieldError::new("type", "must be a string")),
        None => match base {
            Some(c) if flat_type(c) != "dns" => flat_type(c),
            _ if given("keyword").is_some() => "keyword",
            _ if given("url").is_some() && given("host").is_none() => "http",
            _ if given("host").is_some() => "tcp",
            _ => {
                return Err(FieldError::new(
                    "type",
                    "missing; expected http, keyword, tcp or udp",
                ));
            }
        },
    };
    match kind {
        "http" | "keyword" => {
            let mut h = match base {
                Some(Check::Http(h)) => h.clone(),
                _ => serde_json::from_value::<HttpCheck>(json!({"url": ""}))
                    .map_err(|e| FieldError::new("url", e.to_string()))?,
            };
            match given("url") {
                Some(v) => h.url = string(v, "url")?,
                None if h.url.is_empty() => return Err(FieldError::new("url", "missing field")),
                None => {}
            }
            let keyword = match given("keyword") {
                Some(v) => Some(string(v, "keyword")?).filter(|k| !k.is_empty()),
                None => h.keyword.take(),
            };
            h.keyword = match (kind, keyword) {
                ("keyword", None) => {
                    return Err(FieldError::new("keyword", "required for a keyword target"));
                }
                // A plain HTTP target: a keyword from an earlier keyword type is dropped.
                ("http", _) if given("keyword").is_none() => None,
                (_, k) => k,
            };
            Ok(Check::Http(h))
        }
        _ => {
            let (base_host, base_port) = match base {
                Some(Check::Tcp(c)) => (Some(c.host.clone()), Some(c.port)),
                Some(Check::Udp(c)) => (Some(c.host.clone()), Some(c.port)),
                _ => (None, None),
            };
            // A form with one address field may send it as `url`: `host:port` or `tcp://host:port`.
            let from_url = match given("url") {
                Some(v) if given("host").is_none() => Some(host_port(&string(v, "url")?)?),
                _ => None,
            };
            let host = match (given("host"), &from_url, base_host) {
                (Some(v), _, _) => string(v, "host")?,
                (None, Some((h, _)), _) => h.clone(),
                (None, None, Some(h)) => h,
                (None, None, None) => return Err(FieldError::new("host", "missing field")),
            };
            let port = match (given("port"), &from_url, base_port) {
                (Some(v), _, _) => port(v)?,
                (None, Some((_, Some(p))), _) => *p,
                (None, _, Some(p)) => p,
                (None, _, None) => return Err(FieldError::new("port", "missing field")),
            };
            if kind == "tcp" {
                Ok(Check::Tcp(TcpCheck { host, port }))
            } else {
                let mut u = match base {
                    Some(Check::Udp(u)) => u.clone(),
                    _ => UdpCheck {
                        host: String::new(),
                        port,
                        payload: String::new(),
                        payload_hex: None,
                        expect: None,
                    },
                };
                u.host = host;
                u.port = port;
                Ok(Check::Udp(u))
            }
        }
    }
}

/// `host:port` or `scheme://host:port`, as some forms send a TCP/UDP address in `url`.
fn host_port(url: &str) -> Result<(String, Option<u16>), FieldError> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or_default();
    let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        // `[v6]:port`
        Some((h, p)) => (h, p.strip_prefix(':')),
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return Err(FieldError::new("url", "expected host:port"));
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| FieldError::new("url", "the port must be 1 to 65535"))?,
        ),
        None => None,
    };
    Ok((host.to_owned(), port))
}

fn string(v: &Value, field: &str) -> Result<String, FieldError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| FieldError::new(field, "must be a string"))
}

/// A number, or a string holding one (HTML forms send strings).
fn number(v: &Value, field: &str) -> Result<f64, FieldError> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.filter(|n| n.is_finite())
        .ok_or_else(|| FieldError::new(field, "must be a number"))
}

fn port(v: &Value) -> Result<u16, FieldError> {
    let n = number(v, "port")?;
    if n.fract() != 0.0 || !(1.0..=65535.0).contains(&n) {
        return Err(FieldError::new("port", "1 to 65535"));
    }
    Ok(n as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(base: Option<&MonitorSpec>, v: Value) -> Result<MonitorSpec, String> {
        spec_from_flat(base, &v).map_err(|e| e.field)
    }

    #[test]
    fn flat_bodies_become_checks() {
        let k = spec(None, json!({"name": "a", "type": "keyword", "url": "http://x/", "keyword": "ok", "interval": "30"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.interval, 30.0);
        assert!(matches!(&k.check, Check::Http(h) if h.keyword.as_deref() == Some("ok")));
        assert_eq!(flat_fields(&k, false)["type"], "keyword");
        let t = spec(
            None,
            json!({"name": "db", "type": "TCP", "host": "10.0.0.1", "port": 5432}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            flat_fields(&t, true),
            json!({"type": "tcp", "host": "10.0.0.1", "port": 5432})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
        let u = spec(
            None,
            json!({"name": "dns", "type": "udp", "url": "udp://10.0.0.1:53"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&u.check, Check::Udp(c) if c.host == "10.0.0.1" && c.port == 53));
        // An update keeps what the body leaves out; switching to http drops the keyword.
        let renamed =
            spec(Some(&k), json!({"name": "b", "status": "up"})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((renamed.name.as_str(), &renamed.check), ("b", &k.check));
        let plain = spec(Some(&k), json!({"type": "http"})).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&plain.check, Check::Http(h) if h.keyword.is_none() && h.url == "http://x/")
        );
        let paused = spec(Some(&k), json!({"isPaused": true})).unwrap_or_else(|e| panic!("{e}"));
        assert!(paused.paused);
    }

    #[test]
    fn errors_name_the_flat_field() {
        assert_eq!(
            spec(None, json!({"type": "http", "url": "http://x/"}))
                .err()
                .as_deref(),
            Some("name")
        );
        assert_eq!(
            spec(None, json!({"name": "a", "type": "smtp"}))
                .err()
                .as_deref(),
            Some("type")
        );
        assert_eq!(
            spec(
                None,
                json!({"name": "a", "type": "keyword", "url": "http://x/"})
            )
            .err()
            .as_deref(),
            Some("keyword")
        );
        assert_eq!(
            spec(None, json!({"name": "a", "type": "tcp", "host": "x"}))
                .err()
                .as_deref(),
            Some("port")
        );
        assert_eq!(
            spec(
                None,
                json!({"name": "a", "type": "tcp", "host": "x", "port": 70000})
            )
            .err()
            .as_deref(),
            Some("port")
        );
        assert_eq!(
            spec(None, json!({"name": "a", "type": "http"}))
                .err()
                .as_deref(),
            Some("url")
        );
        assert_eq!(
            spec(None, json!({"name": "a", "url": "http://x/", "colour": 1}))
                .err()
                .as_deref(),
            Some("colour")
        );
        assert_eq!(
            spec(
                None,
                json!({"name": "a", "url": "http://x/", "interval": "often"})
            )
            .err()
            .as_deref(),
            Some("interval")
        );
    }
}
