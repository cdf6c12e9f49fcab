//! What the gateway reads of gRPC's HTTP/2 mapping: whether a request is
//! a gRPC call (its refusals are then said in gRPC's terms, and an HTTP/2
//! upstream is sent the `te: trailers` gRPC servers insist on), and the
//! deadline the call carries.

use std::time::Duration;

use http::{HeaderMap, header};

/// Whether a request is a gRPC call: `content-type: application/grpc`,
/// with or without a `+proto`-like suffix, in any letter case.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc")
    })
}

/// A `grpc-timeout` value (`TimeoutValue TimeoutUnit`: at most 8
/// digits, then `H`, `M`, `S`, `m`, `u` or `n`), if it is one.
pub fn timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let headers = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            h
        };
        assert!(is_grpc(&headers("application/grpc")) && is_grpc(&headers("Application/GRPC+proto")));
        assert!(is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/json")) && !is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_are_read_as_the_protocol_writes_them() {
        assert_eq!(timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout(b"99999999S"), Some(Duration::from_secs(99_999_999)));
        assert_eq!(timeout(b"500m"), Some(Duration::from_millis(500)));
        assert_eq!(timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"S", b"123456789S", b"10s", b"-1S", b"1.5S", b"10"] {
            assert_eq!(timeout(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
