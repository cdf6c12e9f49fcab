//! Request-path normalisation. The gateway normalises a path exactly once;
//! the same string is then matched against routes and sent upstream, so what
//! was authorised is what the upstream receives (ory/oathkeeper
//! GHSA-p224-6x5r-fjpm was a gateway and an upstream disagreeing on a path).
//!
//! RFC 3986 §6.2.2 syntax-based normalisation, made strict:
//! - percent-encoded unreserved characters are decoded (`%7E` → `~`, `%2e` → `.`),
//!   all other escapes are kept, upper-cased; `%2F` is never decoded, so an
//!   encoded slash can neither split nor join segments;
//! - `.` and `..` segments are resolved (RFC 3986 §5.2.4), never above the root;
//! - empty segments (`//`) are merged;
//! - malformed escapes, control characters (raw or escaped) and raw
//!   backslashes are refused rather than guessed at.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    MalformedEscape,
    ForbiddenCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::MalformedEscape => "the request path has a malformed percent-encoding",
            PathError::ForbiddenCharacter => "the request path has a control character or backslash",
        })
    }
}

impl std::error::Error for PathError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the unreserved escapes of one segment and validates the rest.
fn normalize_segment(seg: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (h, l) = match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::MalformedEscape),
                };
                let decoded = h << 4 | l;
                if decoded < 0x20 || decoded == 0x7f {
                    return Err(PathError::ForbiddenCharacter);
                }
                if is_unreserved(decoded) {
                    out.push(decoded as char);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::ForbiddenCharacter),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ForbiddenCharacter),
            _ => {
                // Non-ASCII arrives here only as part of a valid UTF-8 `&str`;
                // copy the whole character.
                let ch_len = seg[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&seg[i..i + ch_len]);
                i += ch_len;
                continue;
            }
        }
    }
    Ok(())
}

/// Normalises an origin-form request path (no query). The result starts
/// with `/` and keeps a trailing slash when the input had one.
pub fn normalize(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    // Fast path: most paths are already normal (no escapes, dots or doubled
    // slashes), and copying them once is all that is needed.
    if is_plainly_normal(rest) {
        return Ok(path.to_string());
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in rest.split('/') {
        let mut seg = String::with_capacity(raw.len());
        normalize_segment(raw, &mut seg)?;
        trailing_slash = false;
        match seg.as_str() {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn is_plainly_normal(rest: &str) -> bool {
    let b = rest.as_bytes();
    if b.first() == Some(&b'/') {
        return false;
    }
    let mut prev = b'/';
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' => return false,
            c if !(0x20..0x7f).contains(&c) => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // "." or ".." segment?
                let next = b.get(i + 1).copied();
                if next.is_none()
                    || next == Some(b'/')
                    || (next == Some(b'.') && matches!(b.get(i + 2), None | Some(b'/')))
                {
                    return false;
                }
            }
            _ => {}
        }
        prev = c;
    }
    true
}

/// Whether `path` lies under `prefix` on a segment boundary: `/a` covers
/// `/a` and `/a/b` but not `/ab`. `prefix` is normalised without a trailing
/// slash; the empty prefix covers everything.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap()
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in ["/", "/a", "/a/", "/calendar/events", "/a.b/c..d/.e", "/ü"] {
            assert_eq!(n(p), p);
        }
    }

    #[test]
    fn dots_and_doubled_slashes_resolve() {
        assert_eq!(n("/a/../b"), "/b");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("//a///b//"), "/a/b/");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/public/%2e%2e/admin"), "/admin");
        assert_eq!(n("/public/%2E./admin"), "/admin");
        assert_eq!(n("/public/.%2e/admin"), "/admin");
    }

    #[test]
    fn escapes_are_canonical() {
        assert_eq!(n("/%7euser/%41"), "/~user/A");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(n("/a%20b"), "/a%20b");
    }

    #[test]
    fn malformed_is_refused() {
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%zz"), Err(PathError::MalformedEscape));
        assert_eq!(normalize("/a%2"), Err(PathError::MalformedEscape));
        assert_eq!(normalize("/a%00"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/a\\..\\b"), Err(PathError::ForbiddenCharacter));
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(under_prefix("/calendar", "/calendar"));
        assert!(under_prefix("/calendar/x", "/calendar"));
        assert!(!under_prefix("/calendars", "/calendar"));
        assert!(under_prefix("/anything", ""));
    }

    /// Normalisation is idempotent and its output never holds a segment an
    /// upstream could resolve differently: checked over many generated paths
    /// built from the pieces attacks are made of.
    #[test]
    fn output_is_a_fixed_point_without_dot_segments() {
        let pieces = ["/", "//", ".", "..", "%2e", "%2E%2e", "%2F", "a", "%7e", "~", "%41", ";", "%25", "b.", ".c"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut p = String::from("/");
            for _ in 0..(seed % 9) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                p.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let Ok(once) = normalize(&p) else { continue };
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()), "not idempotent for {p:?}");
            assert!(!once.contains("//"), "{p:?} -> {once:?}");
            for seg in once.split('/') {
                assert!(seg != "." && seg != "..", "{p:?} -> {once:?}");
                assert!(
                    !seg.eq_ignore_ascii_case("%2e") && !seg.to_ascii_lowercase().contains("%2e"),
                    "{p:?} -> {once:?}"
                );
            }
        }
    }
}
