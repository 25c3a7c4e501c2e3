//! Reads the expiry (notAfter) of an X.509 certificate from its DER bytes. Only the few
//! structures on the way to `validity` are walked, which keeps a full X.509 parser out of the
//! build for the one date the monitor needs.

/// The certificate could not be read far enough to find its expiry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DerError(&'static str);

/// One DER element: tag and contents; `rest` is what follows it.
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    rest: &'a [u8],
}

fn read_tlv(input: &[u8]) -> Result<Tlv<'_>, DerError> {
    let (&tag, after_tag) = input.split_first().ok_or(DerError("truncated"))?;
    let (&first, after_len) = after_tag.split_first().ok_or(DerError("truncated"))?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), after_len)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after_len.len() < n {
            return Err(DerError("bad length"));
        }
        let len = after_len[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &after_len[n..])
    };
    if body.len() < len {
        return Err(DerError("truncated"));
    }
    Ok(Tlv {
        tag,
        contents: &body[..len],
        rest: &body[len..],
    })
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION_TAG: u8 = 0xa0;

/// Unix time (seconds) at which the certificate expires.
pub fn not_after_unix(der: &[u8]) -> Result<i64, DerError> {
    let cert = read_tlv(der)?;
    if cert.tag != SEQUENCE {
        return Err(DerError("certificate is not a sequence"));
    }
    let tbs = read_tlv(cert.contents)?;
    if tbs.tag != SEQUENCE {
        return Err(DerError("tbsCertificate is not a sequence"));
    }
    let mut field = read_tlv(tbs.contents)?;
    if field.tag == VERSION_TAG {
        field = read_tlv(field.rest)?;
    }
    // serialNumber, signature, issuer, then validity.
    let signature = read_tlv(field.rest)?;
    let issuer = read_tlv(signature.rest)?;
    let validity = read_tlv(issuer.rest)?;
    if validity.tag != SEQUENCE {
        return Err(DerError("validity is not a sequence"));
    }
    let not_before = read_tlv(validity.contents)?;
    let not_after = read_tlv(not_before.rest)?;
    parse_time(not_after.tag, not_after.contents)
}

fn parse_time(tag: u8, text: &[u8]) -> Result<i64, DerError> {
    let digits = |s: &[u8]| -> Result<i64, DerError> {
        s.iter().try_fold(0i64, |acc, &b| {
            if b.is_ascii_digit() {
                Ok(acc * 10 + i64::from(b - b'0'))
            } else {
                Err(DerError("bad time"))
            }
        })
    };
    // DER requires the "Z" form with seconds: YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ.
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 13 => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 15 => (digits(&text[..4])?, &text[4..]),
        _ => return Err(DerError("unsupported time format")),
    };
    if rest[10] != b'Z' {
        return Err(DerError("time is not UTC"));
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(DerError("time out of range"));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 23), 20_780);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(UTC_TIME, b"700101000000Z"), Ok(0));
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"20261123000001Z"),
            Ok(20_780 * 86_400 + 1)
        );
        assert!(parse_time(UTC_TIME, b"70010100000Z").is_err());
        assert!(parse_time(UTC_TIME, b"701301000000Z").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3],
            &[0x30, 0x02, 0x30, 0x05],
        ] {
            assert!(not_after_unix(bad).is_err());
        }
    }
}
