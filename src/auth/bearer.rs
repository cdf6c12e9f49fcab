//! RFC 6750 on the request side: finding the bearer token in a request
//! (header §2.1, form body §2.2, query §2.3), taking it out of what goes
//! upstream, and building the `WWW-Authenticate` challenge (§3).
//!
//! Plain functions over header values and byte strings, no I/O, so the
//! rules are unit-tested and fuzzable on their own.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};

use crate::http::form::is_form_urlencoded;
use crate::scope::ScopeSet;

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Body,
    Query,
}

/// A request the bearer rules refuse with `400 invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerError {
    /// More than one `Authorization` header.
    RepeatedHeader,
    /// `Bearer` with no token, or a token that is not token68.
    MalformedHeader,
    /// `access_token` given twice in the query or the body.
    RepeatedParameter,
    /// Token sent by more than one method (RFC 6750 §2).
    MultipleMethods,
    /// A query token on a route that turned them off.
    QueryNotAllowed,
    /// `access_token=` with no value.
    EmptyParameter,
}

impl BearerError {
    pub fn description(&self) -> &'static str {
        match self {
            BearerError::RepeatedHeader => "The request has more than one Authorization header",
            BearerError::MalformedHeader => "The Authorization header is not a well-formed Bearer credential",
            BearerError::RepeatedParameter => "The access_token parameter is repeated",
            BearerError::MultipleMethods => "The request carries an access token by more than one method",
            BearerError::QueryNotAllowed => "This route does not accept an access_token query parameter",
            BearerError::EmptyParameter => "The access_token parameter is empty",
        }
    }
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
/// (RFC 9110 §11.2).
pub fn is_token68(s: &str) -> bool {
    is_token68_bytes(s.as_bytes())
}

fn is_token68_bytes(s: &[u8]) -> bool {
    let padding = s.iter().rev().take_while(|&&b| b == b'=').count();
    let body = &s[..s.len() - padding];
    // Every byte of every token of every request passes here. Without an
    // early exit inside a chunk, and with comparisons rather than a table
    // lookup, the compiler checks 16 bytes per instruction instead of one.
    !body.is_empty() && body.chunks(64).all(|chunk| chunk.iter().fold(true, |ok, &b| ok & is_token68_char(b)))
}

/// `ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"`, branch-free.
#[inline]
fn is_token68_char(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter | digit | (b == b'-') | (b == b'.') | (b == b'_') | (b == b'~') | (b == b'+') | (b == b'/')
}

/// The bearer token in the `Authorization` header, if the header uses the
/// `Bearer` scheme (matched case-insensitively). Other schemes are not
/// bearer credentials and yield `None`.
pub fn from_header(headers: &HeaderMap) -> Result<Option<&str>, BearerError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(header) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerError::RepeatedHeader);
    }
    // Bytes, not `to_str()`: the token68 check below admits only ASCII, so
    // a second pass over a long token to prove it is text would be waste.
    let value = header.as_bytes();
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        // Not ours to read, but a value that is not visible ASCII is
        // malformed whatever its scheme.
        return header.to_str().map(|_| None).map_err(|_| BearerError::MalformedHeader);
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let end = rest.iter().rposition(|&b| b != b' ').map_or(start, |i| i + 1);
    let token = &rest[start..end];
    if !is_token68_bytes(token) {
        return Err(BearerError::MalformedHeader);
    }
    // token68 is ASCII, so this cannot fail.
    std::str::from_utf8(token).map(Some).map_err(|_| BearerError::MalformedHeader)
}

/// Splits `access_token` out of a form-encoded string (a query or an
/// `application/x-www-form-urlencoded` body). Returns the token, if any,
/// and the remaining pairs exactly as they were written. A repeated
/// `access_token` is an error (RFC 6749 §3.1 forbids repeated parameters).
pub fn split_form_token(form: &[u8]) -> Result<(Option<String>, Vec<u8>), BearerError> {
    let mut token = None;
    let mut rest = Vec::with_capacity(form.len());
    for pair in form.split(|b| *b == b'&') {
        let is_token = form_urlencoded::parse(pair).next().is_some_and(|(k, _)| k == "access_token");
        if is_token {
            if token.is_some() {
                return Err(BearerError::RepeatedParameter);
            }
            token = Some(form_urlencoded::parse(pair).next().map(|(_, v)| v.into_owned()).unwrap_or_default());
        } else if !pair.is_empty() {
            if !rest.is_empty() {
                rest.push(b'&');
            }
            rest.extend_from_slice(pair);
        }
    }
    if token.as_deref() == Some("") {
        return Err(BearerError::EmptyParameter);
    }
    Ok((token, rest))
}

/// Whether a query string may carry a token, checked without allocating:
/// the common case (no `access_token` anywhere) costs one scan.
pub fn query_mentions_token(query: &str) -> bool {
    query.contains("access_token") || query.contains('%')
}

/// Whether RFC 6750 §2.2 lets this request carry the token in its body:
/// a single-part `application/x-www-form-urlencoded` entity with a method
/// whose body has defined semantics (not GET or HEAD).
pub fn body_may_carry_token(method: &Method, headers: &HeaderMap) -> bool {
    if *method == Method::GET || *method == Method::HEAD {
        return false;
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(ct), None) => is_form_urlencoded(ct),
        _ => false,
    }
}

/// The error a challenge reports (RFC 6750 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeError {
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
}

impl ChallengeError {
    pub fn code(self) -> &'static str {
        match self {
            ChallengeError::InvalidRequest => "invalid_request",
            ChallengeError::InvalidToken => "invalid_token",
            ChallengeError::InsufficientScope => "insufficient_scope",
        }
    }
}

/// Appends `name="value"` with `"` and `\` escaped (RFC 9110 §5.6.4).
fn push_param(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, ", {name}=\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Builds a `WWW-Authenticate` value. With no error it is the bare
/// `Bearer realm="…"` a request without credentials gets (RFC 6750 §3.1:
/// no error code then). Each auth-param appears at most once.
pub fn challenge(realm: &str, error: Option<(ChallengeError, &str)>, scope: Option<&ScopeSet>) -> HeaderValue {
    let mut out = String::with_capacity(96);
    out.push_str("Bearer realm=\"");
    out.push_str(realm);
    out.push('"');
    if let Some((code, description)) = error {
        push_param(&mut out, "error", code.code());
        push_param(&mut out, "error_description", description);
    }
    if let Some(scope) = scope {
        push_param(&mut out, "scope", &scope.to_string());
    }
    // Realm, codes and descriptions are our own printable ASCII; scope
    // tokens are validated printable ASCII.
    HeaderValue::try_from(out).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// A token found in the query, and the query to send upstream without it.
pub struct QueryToken {
    pub token: Option<String>,
    pub rest: Option<String>,
}

/// Takes `access_token` out of a query string.
pub fn split_query_token(query: &str) -> Result<QueryToken, BearerError> {
    let (token, rest) = split_form_token(query.as_bytes())?;
    // The remainder is a sub-sequence of a valid query, so still UTF-8.
    let rest = String::from_utf8(rest).unwrap_or_default();
    Ok(QueryToken { token, rest: (!rest.is_empty()).then_some(rest) })
}

/// A token found in a form body, and the body to send upstream without it.
pub fn split_body_token(body: &Bytes) -> Result<(Option<String>, Bytes), BearerError> {
    let (token, rest) = split_form_token(body)?;
    Ok(match token {
        Some(t) => (Some(t), Bytes::from(rest)),
        None => (None, body.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn token68_characters_are_exactly_rfc_9110s() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_token68_char(b), expected, "byte {b:#04x}");
        }
        let long = "a".repeat(200);
        assert!(is_token68(&long));
        assert!(!is_token68(&format!("{long}!{long}")), "a bad byte past the first chunk");
        assert!(is_token68("abc=="));
        assert!(!is_token68("=="));
        assert!(!is_token68("a=b"));
    }

    #[test]
    fn header_scheme_is_case_insensitive() {
        assert_eq!(from_header(&headers(&["Bearer abc"])).unwrap(), Some("abc"));
        assert_eq!(from_header(&headers(&["bearer abc=="])).unwrap(), Some("abc=="));
        assert_eq!(from_header(&headers(&["BEARER  a.b.c"])).unwrap(), Some("a.b.c"));
        assert_eq!(from_header(&headers(&["Basic dXNlcjpwYXNz"])).unwrap(), None);
        assert_eq!(from_header(&headers(&[])).unwrap(), None);
    }

    #[test]
    fn header_must_be_single_and_token68() {
        assert_eq!(from_header(&headers(&["Bearer a", "Bearer b"])), Err(BearerError::RepeatedHeader));
        assert_eq!(from_header(&headers(&["Bearer"])), Err(BearerError::MalformedHeader));
        assert_eq!(from_header(&headers(&["Bearer a b"])), Err(BearerError::MalformedHeader));
        assert_eq!(from_header(&headers(&["Bearer a,b"])), Err(BearerError::MalformedHeader));
        assert_eq!(from_header(&headers(&["Bearer ="])), Err(BearerError::MalformedHeader));
        assert_eq!(from_header(&headers(&["Bearer \tabc"])), Err(BearerError::MalformedHeader));
        assert_eq!(from_header(&headers(&["Bearer  abc  "])).unwrap(), Some("abc"));
        assert_eq!(from_header(&headers(&["Bearer a=b"])), Err(BearerError::MalformedHeader));
        let obs_text = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
            from_header(&h).map(|t| t.map(str::to_owned))
        };
        assert_eq!(obs_text(b"Bearer abc\xff"), Err(BearerError::MalformedHeader));
        assert_eq!(obs_text(b"Basic \xff"), Err(BearerError::MalformedHeader), "not text, whatever the scheme");
    }

    #[test]
    fn query_token_is_split_out_verbatim() {
        let q = split_query_token("a=1&access_token=t%2Bx&b=%20").unwrap();
        assert_eq!(q.token.as_deref(), Some("t+x"));
        assert_eq!(q.rest.as_deref(), Some("a=1&b=%20"));
        let q = split_query_token("access_token=t").unwrap();
        assert_eq!(q.rest, None);
        // an encoded name is still the parameter
        let q = split_query_token("access%5Ftoken=t&x=1").unwrap();
        assert_eq!(q.token.as_deref(), Some("t"));
        assert_eq!(q.rest.as_deref(), Some("x=1"));
        assert!(matches!(split_query_token("access_token=a&access_token=b"), Err(BearerError::RepeatedParameter)));
        assert!(matches!(split_query_token("access_token=&a=1"), Err(BearerError::EmptyParameter)));
        let q = split_query_token("x=access_token").unwrap();
        assert_eq!(q.token, None);
    }

    #[test]
    fn body_tokens_only_for_single_form_entities() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
        assert!(body_may_carry_token(&Method::POST, &h));
        assert!(!body_may_carry_token(&Method::GET, &h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=x"));
        assert!(!body_may_carry_token(&Method::POST, &h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        h.append(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        assert!(!body_may_carry_token(&Method::POST, &h));
    }

    #[test]
    fn challenges() {
        assert_eq!(challenge("api", None, None), "Bearer realm=\"api\"");
        assert_eq!(
            challenge("api", Some((ChallengeError::InvalidToken, "The access token expired")), None),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"The access token expired\""
        );
        let scope = ScopeSet::parse("b a").unwrap();
        assert_eq!(
            challenge("api", Some((ChallengeError::InsufficientScope, "x")), Some(&scope)),
            "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"x\", scope=\"a b\""
        );
    }
}
