//! DNS checks through hickory: the system resolver's name servers or the check's own, no cache
//! and no hosts file, so each check asks the server again and judges what it says now.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::OnceLock;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};

use super::{DNS_RECORD_TYPES, DnsCheck, FieldError, Verdict};

pub(super) fn validate(c: &DnsCheck) -> Result<(), FieldError> {
    if c.name.trim().is_empty() {
        return Err(FieldError::new("check.name", "must not be empty"));
    }
    Name::from_str(c.name.trim())
        .map_err(|e| FieldError::new("check.name", format!("not a valid DNS name: {e}")))?;
    let rtype = record_type(&c.record_type)?;
    if let Some(r) = &c.resolver {
        parse_resolver(r)?;
    }
    match c.expected.as_deref().map(str::trim) {
        Some("") => Err(FieldError::new(
            "check.expected",
            "must not be empty (leave it out to accept any answer)",
        )),
        // An address expectation that is not an address of the right family could never match.
        Some(e) if rtype == RecordType::A && e.parse::<std::net::Ipv4Addr>().is_err() => Err(
            FieldError::new("check.expected", format!("\"{e}\" is not an IPv4 address")),
        ),
        Some(e) if rtype == RecordType::AAAA && e.parse::<std::net::Ipv6Addr>().is_err() => Err(
            FieldError::new("check.expected", format!("\"{e}\" is not an IPv6 address")),
        ),
        _ => Ok(()),
    }
}

fn record_type(s: &str) -> Result<RecordType, FieldError> {
    let upper = s.trim().to_ascii_uppercase();
    if !DNS_RECORD_TYPES.contains(&upper.as_str()) {
        return Err(FieldError::new(
            "check.record_type",
            format!(
                "\"{s}\" is not a supported record type ({})",
                DNS_RECORD_TYPES.join(", ")
            ),
        ));
    }
    RecordType::from_str(&upper).map_err(|e| FieldError::new("check.record_type", e.to_string()))
}

/// "IP", "IP:PORT" or "[IPv6]:PORT".
fn parse_resolver(s: &str) -> Result<SocketAddr, FieldError> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(FieldError::new(
                "check.resolver",
                "port must be between 1 and 65535",
            ));
        }
        return Ok(sa);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            FieldError::new(
                "check.resolver",
                format!("\"{s}\" is not IP or IP:PORT (a name server is given by address)"),
            )
        })
}

/// The system's name servers, read once: /etc/resolv.conf does not change under a check.
fn system_conf() -> Result<&'static (ResolverConfig, ResolverOpts), String> {
    static CONF: OnceLock<Result<(ResolverConfig, ResolverOpts), String>> = OnceLock::new();
    CONF.get_or_init(|| {
        hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("reading the system resolver configuration: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

pub(super) async fn run(c: &DnsCheck, timeout: std::time::Duration) -> Verdict {
    let (rtype, resolver_addr) = match (
        record_type(&c.record_type),
        c.resolver.as_deref().map(parse_resolver).transpose(),
    ) {
        (Ok(t), Ok(r)) => (t, r),
        (Err(e), _) | (_, Err(e)) => return Verdict::down(format!("invalid check: {e}")),
    };
    let (config, mut opts) = match resolver_addr {
        Some(addr) => {
            let mut ns = hickory_resolver::config::NameServerConfig::udp_and_tcp(addr.ip());
            for conn in &mut ns.connections {
                conn.port = addr.port();
            }
            (
                ResolverConfig::from_name_servers(vec![ns]),
                ResolverOpts::default(),
            )
        }
        None => match system_conf() {
            Ok((c, o)) => (c.clone(), o.clone()),
            Err(m) => return Verdict::down(m),
        },
    };
    // A fresh resolver per check: nothing cached between checks, and the outer timeout bounds
    // the whole lookup, so the per-query timeout only has to allow one retry inside it.
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = timeout / 2;
    opts.attempts = 2;
    let resolver = match Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
    {
        Ok(r) => r,
        Err(e) => return Verdict::down(format!("resolver setup: {e}")),
    };
    // Always fully qualified: search domains would turn "db" into "db.corp.example" silently.
    let mut name = c.name.trim().to_owned();
    if !name.ends_with('.') {
        name.push('.');
    }
    let rt = rtype.to_string();
    let lookup = match resolver.lookup(name.as_str(), rtype).await {
        Ok(l) => l,
        Err(e) => return Verdict::down(describe_dns_error(&e, &rt, &name)),
    };
    let answers: Vec<String> = lookup
        .answers()
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.to_string())
        .collect();
    if answers.is_empty() {
        return Verdict::down(format!("no {rt} records for {name}"));
    }
    let shown = answers.join(", ");
    match &c.expected {
        None => Verdict::up(format!("{rt} {shown}")),
        Some(exp) => {
            if answers.iter().any(|a| answer_matches(rtype, a, exp)) {
                Verdict::up(format!("{rt} {shown}"))
            } else {
                Verdict::down(format!("expected \"{exp}\", got {rt} {shown}"))
            }
        }
    }
}

/// Addresses compare as addresses ("1.2.3.4" never matches "1.2.3.40"); names compare without
/// the trailing dot and case, and other answers may contain the expectation (an MX
/// "10 mail.example.com." contains "mail.example.com").
fn answer_matches(rtype: RecordType, answer: &str, expected: &str) -> bool {
    if matches!(rtype, RecordType::A | RecordType::AAAA) {
        return match (
            answer.trim().parse::<IpAddr>(),
            expected.trim().parse::<IpAddr>(),
        ) {
            (Ok(a), Ok(e)) => a == e,
            _ => false,
        };
    }
    let norm = |s: &str| s.trim().trim_end_matches('.').to_ascii_lowercase();
    let (a, e) = (norm(answer), norm(expected));
    let a_unquoted = a.trim_matches('"');
    a == e || a_unquoted == e || a.contains(&e)
}

fn describe_dns_error(e: &NetError, rt: &str, name: &str) -> String {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NXDomain => format!("NXDOMAIN: {name} does not exist"),
            _ => format!("no {rt} records for {name}"),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => format!("server answered {code}"),
        NetError::Timeout => "DNS query timed out".to_owned(),
        other => format!("DNS query failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers() {
        assert_eq!(
            parse_resolver("127.0.0.1:5353").ok(),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("1.1.1.1").ok(),
            Some("1.1.1.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("[::1]").ok(),
            Some("[::1]:53".parse().unwrap())
        );
        assert!(parse_resolver("dns.google").is_err());
        assert!(parse_resolver("1.1.1.1:0").is_err());
    }

    #[test]
    fn matching() {
        let mx = RecordType::MX;
        assert!(answer_matches(
            mx,
            "10 mail.example.com.",
            "mail.example.com"
        ));
        assert!(answer_matches(
            RecordType::CNAME,
            "Example.COM.",
            "example.com."
        ));
        assert!(answer_matches(RecordType::TXT, "\"v=spf1 -all\"", "v=spf1"));
        assert!(answer_matches(RecordType::A, "1.2.3.4", " 1.2.3.4"));
        assert!(!answer_matches(RecordType::A, "1.2.3.40", "1.2.3.4"));
        assert!(answer_matches(RecordType::AAAA, "::1", "0:0::1"));
    }
}
