//! TCP and UDP checks. TCP: a completed connect is UP. UDP has no connection, so the check sends
//! a datagram on a connected socket and waits for one reply; the connected socket is what turns
//! an ICMP port-unreachable into a "connection refused" instead of a silent timeout.

use std::net::SocketAddr;

use tokio::net::{TcpStream, UdpSocket, lookup_host};

use super::{
    FieldError, TcpCheck, UdpCheck, Verdict, describe_error, host_port, validate_host,
    validate_port,
};

pub(super) fn validate_udp(c: &UdpCheck) -> Result<(), FieldError> {
    validate_host(&c.host, "check.host")?;
    validate_port(c.port, "check.port")?;
    if let Some(hex) = &c.payload_hex {
        if !c.payload.is_empty() {
            return Err(FieldError::new(
                "check.payload_hex",
                "set either payload or payload_hex, not both",
            ));
        }
        decode_hex(hex).map_err(|m| FieldError::new("check.payload_hex", m))?;
    }
    if c.expect.as_deref() == Some("") {
        return Err(FieldError::new(
            "check.expect",
            "must not be empty (leave it out to accept any reply)",
        ));
    }
    Ok(())
}

/// Decodes hex, ignoring spaces and colons so "de:ad be ef" works.
pub(super) fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'\t'))
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("hex payload has an odd number of digits".to_owned());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(format!(
                    "\"{}\" is not a hex byte",
                    String::from_utf8_lossy(pair)
                )),
            }
        })
        .collect()
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match lookup_host((bare, port)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("host \"{host}\" has no addresses"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("cannot resolve \"{host}\": {e}")),
    }
}

pub(super) async fn run_tcp(c: &TcpCheck) -> Verdict {
    let addrs = match resolve(&c.host, c.port).await {
        Ok(a) => a,
        Err(m) => return Verdict::down(m),
    };
    match TcpStream::connect(&addrs[..]).await {
        Ok(_) => Verdict::up(format!("connected to {}", host_port(&c.host, c.port))),
        Err(e) => Verdict::down(describe_error(&e)),
    }
}

pub(super) async fn run_udp(c: &UdpCheck) -> Verdict {
    let payload = match &c.payload_hex {
        Some(hex) => match decode_hex(hex) {
            Ok(p) => p,
            Err(m) => return Verdict::down(m),
        },
        None => c.payload.as_bytes().to_vec(),
    };
    let addrs = match resolve(&c.host, c.port).await {
        Ok(a) => a,
        Err(m) => return Verdict::down(m),
    };
    let addr = addrs[0];
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => return Verdict::down(format!("binding a UDP socket: {}", describe_error(&e))),
    };
    if let Err(e) = sock.connect(addr).await {
        return Verdict::down(describe_error(&e));
    }
    if let Err(e) = sock.send(&payload).await {
        return Verdict::down(describe_error(&e));
    }
    // The largest possible datagram, so a long reply is judged whole rather than cut.
    let mut buf = vec![0u8; 65_536];
    let n = match sock.recv(&mut buf).await {
        Ok(n) => n,
        Err(e) => return Verdict::down(describe_error(&e)),
    };
    let reply = &buf[..n];
    match &c.expect {
        Some(pattern) => {
            let text = String::from_utf8_lossy(reply);
            if text.contains(pattern.as_str()) {
                Verdict::up(format!("reply of {n} bytes contains \"{pattern}\""))
            } else {
                Verdict::down(format!(
                    "reply of {n} bytes does not contain \"{pattern}\": {}",
                    preview(&text)
                ))
            }
        }
        None => Verdict::up(format!("reply of {n} bytes")),
    }
}

/// The start of a reply, for a message that stays one short line.
fn preview(text: &str) -> String {
    let short: String = text.chars().take(64).collect();
    let short = short.escape_debug().to_string();
    if text.chars().count() > 64 {
        format!("\"{short}\"…")
    } else {
        format!("\"{short}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(decode_hex("deadBEEF"), Ok(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(decode_hex("de:ad be ef"), Ok(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(decode_hex(""), Ok(vec![]));
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert!(decode_hex("é1").is_err());
    }
}
