//! The request head an upstream receives and the response head a client
//! gets back: hop-by-hop headers removed both ways (RFC 9110 §7.6.1), the
//! gateway's cookies kept out of both directions, identity and address
//! headers a client sent stripped before the gateway writes its own, and
//! `X-Forwarded-*` believed only from a trusted proxy.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::auth::tokens::Identity;
use crate::config::endpoints::GATEWAY_COOKIES;
use crate::http::net::IpNet;
use crate::upstream::http1::Added;

pub static X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
pub static X_AUTH_CLIENT_ID: HeaderName = HeaderName::from_static("x-auth-client-id");
pub static X_AUTH_SCOPE: HeaderName = HeaderName::from_static("x-auth-scope");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The path prefix a `strip_prefix` route took off.
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The headers RFC 9110 §7.6.1 lists as connection-specific, and
/// `Proxy-Connection`; `Connection` first.
static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Removes the connection-specific headers of one hop: those RFC 9110
/// §7.6.1 lists, the ones `Connection` names, and `Proxy-Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present, and nothing allocated: most
    // requests carry none of these, and most responses only `Connection`.
    let mut found = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            found[i] = true;
        }
    }
    if found[0] {
        // Copies of the values (reference counts), since what they name
        // is removed from the map that holds them; a second one is rare.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            let Ok(value) = value.to_str() else { continue };
            for name in value.split(',').map(str::trim) {
                // By `&str`: looked up without allocating a name, and a
                // string that is no valid name finds nothing.
                headers.remove(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, present)| *present) {
        headers.remove(*name);
    }
}

/// Whether a `name=value` pair of a `Cookie` or `Set-Cookie` header is one
/// of the gateway's own (`config::endpoints`): a login session is for the
/// authorization pages, never for an upstream. Bytes, not text: a cookie
/// may hold any octet, and one the gateway cannot read is not its own.
fn is_gateway_cookie(pair: &[u8]) -> bool {
    let name = pair.split(|&b| b == b'=').next().unwrap_or_default().trim_ascii();
    GATEWAY_COOKIES.iter().any(|ours| name == ours.as_bytes())
}

fn pairs(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|&b| b == b';').map(<[u8]>::trim_ascii).filter(|p| !p.is_empty())
}

/// Takes the gateway's cookies out of the `Cookie` headers going upstream,
/// keeping the others as they were; a header left empty goes.
pub fn strip_gateway_cookies(headers: &mut HeaderMap) {
    if !headers.get_all(header::COOKIE).iter().any(|v| pairs(v).any(is_gateway_cookie)) {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    headers.remove(header::COOKIE);
    for value in &values {
        let kept: Vec<&[u8]> = pairs(value).filter(|p| !is_gateway_cookie(p)).collect();
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..]))
            && !kept.is_empty()
        {
            headers.append(header::COOKIE, v);
        }
    }
}

/// Takes out of an upstream's response any `Set-Cookie` for the gateway's
/// own cookies: an upstream on the same host could otherwise plant a login
/// session (session fixation) or a login form's CSRF cookie.
pub fn strip_gateway_set_cookies(headers: &mut HeaderMap) {
    // A nameless cookie (`=portcullis_session=x`) is stored by browsers and
    // sent back as its bare value, which reads as the gateway's own: no
    // upstream needs one, so it goes too.
    let ours =
        |v: &HeaderValue| pairs(v).next().is_none_or(|first| first.starts_with(b"=") || is_gateway_cookie(first));
    if !headers.get_all(header::SET_COOKIE).iter().any(ours) {
        return;
    }
    let kept: Vec<HeaderValue> = headers.get_all(header::SET_COOKIE).iter().filter(|v| !ours(v)).cloned().collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// What the gateway established about a request, for its upstream.
#[derive(Clone)]
pub struct ForwardContext<'a> {
    pub peer: SocketAddr,
    pub trusted_proxies: &'a [IpNet],
    /// `http` or `https`: how the client reached the gateway.
    pub proto: &'static str,
    /// The client-facing `Host` (or `:authority`).
    pub host: Option<HeaderValue>,
    pub identity: Option<&'a Identity>,
    pub keep_authorization: bool,
    pub preserve_host: bool,
    /// Whether headers whose names hold `_` go (`server.headers_with_underscores`).
    pub drop_underscored: bool,
}

/// Headers that tell an upstream the client's address; believed from a
/// trusted proxy only, and `X-Real-IP` is always the gateway's own.
static CLIENT_ADDRESS_HEADERS: [&str; 8] = [
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
];

/// Headers that make IIS, Symfony and some Spring set-ups act on another
/// path than the request line's: the path the gateway authorised is the
/// only one, whoever sent them.
static PATH_OVERRIDE_HEADERS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Headers that ask frameworks to run another method than the request
/// line's (Rails, Express's method-override, Laravel, Google APIs); on a
/// protected route the gateway refuses them (`crate::gateway`).
pub static METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What a client header is to the gateway, when it is anything.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owned {
    /// `X-Auth-*`: only the gateway asserts identity.
    Identity,
    /// `X-Forwarded-*` and `Forwarded`: from a trusted proxy only.
    Forwarded,
    /// One of [`CLIENT_ADDRESS_HEADERS`].
    ClientAddress,
    /// One of [`PATH_OVERRIDE_HEADERS`].
    PathOverride,
    /// A name with `_`, which CGI-style servers read as `-`.
    Underscored,
    Cookie,
}

fn owned(name: &HeaderName) -> Option<Owned> {
    if name == header::COOKIE {
        return Some(Owned::Cookie);
    }
    let name = name.as_str();
    if name.contains('_') {
        // `X_Auth_Subject` is `X-Auth-Subject` to CGI-style servers: one
        // that reads as a name the gateway owns goes, whatever
        // `headers_with_underscores` says. (An allocation, for the rare
        // name with an underscore.)
        let dashed = name.replace('_', "-");
        let spoof = owned_name(&dashed).is_some() || METHOD_OVERRIDE_HEADERS.contains(&dashed.as_str());
        return Some(if spoof { Owned::Identity } else { Owned::Underscored });
    }
    owned_name(name)
}

/// What a header name without underscores is to the gateway.
fn owned_name(name: &str) -> Option<Owned> {
    if name.starts_with("x-auth-") {
        Some(Owned::Identity)
    } else if name.starts_with("x-forwarded-") || name == "forwarded" {
        Some(Owned::Forwarded)
    } else if CLIENT_ADDRESS_HEADERS.contains(&name) {
        Some(Owned::ClientAddress)
    } else if PATH_OVERRIDE_HEADERS.contains(&name) {
        Some(Owned::PathOverride)
    } else {
        None
    }
}

/// Rewrites request headers for the upstream: what goes is removed from
/// `headers`, what the gateway adds comes back, for the upstream client's
/// encoder to write after them.
pub fn upstream_headers(headers: &mut HeaderMap, ctx: ForwardContext<'_>) -> Added {
    strip_hop_by_hop(headers);
    let trusted = crate::http::net::is_trusted(ctx.trusted_proxies, ctx.peer.ip());
    // One look at the names present: most requests carry none of the
    // headers below, and looking up or removing an absent name still
    // hashes it.
    let (mut forwarded, mut cookies) = (false, false);
    let mut going: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let Some(kind) = owned(name) else { continue };
        let goes = match kind {
            Owned::Cookie => {
                cookies = true;
                false
            }
            Owned::Forwarded => {
                forwarded = true;
                !trusted
            }
            Owned::Identity | Owned::PathOverride => true,
            Owned::ClientAddress => !trusted || name == X_REAL_IP,
            Owned::Underscored => ctx.drop_underscored,
        };
        if goes {
            going.push(name.clone());
        }
    }
    for name in going {
        headers.remove(name);
    }
    if cookies {
        strip_gateway_cookies(headers);
    }
    if !ctx.keep_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    // What a trusted proxy said is kept, and extended; anyone else's went.
    let kept = trusted && forwarded;
    let mut added = Added { host: None, fields: Vec::with_capacity(7) };
    let peer_ip = ip_text(ctx.peer.ip().to_canonical());
    let chain = if kept { forwarded_for_chain(headers) } else { None };
    let client = match &chain {
        Some(chain) => {
            crate::http::net::client_address(ctx.peer.ip(), std::iter::once(&chain[..]), ctx.trusted_proxies)
        }
        None => ctx.peer.ip().to_canonical(),
    };
    let xff = match chain {
        Some(mut chain) => {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(peer_ip.as_str().as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(chain))
        }
        None => HeaderValue::from_str(peer_ip.as_str()),
    };
    if let Ok(v) = xff {
        added.fields.push((&X_FORWARDED_FOR, v));
    }
    let real_ip = if client == ctx.peer.ip().to_canonical() { peer_ip } else { ip_text(client) };
    if let Ok(v) = HeaderValue::from_str(real_ip.as_str()) {
        added.fields.push((&X_REAL_IP, v));
    }
    if !(kept && headers.contains_key(&X_FORWARDED_PROTO)) {
        added.fields.push((&X_FORWARDED_PROTO, HeaderValue::from_static(ctx.proto)));
    }
    if !(kept && headers.contains_key(&X_FORWARDED_HOST))
        && let Some(host) = &ctx.host
    {
        added.fields.push((&X_FORWARDED_HOST, host.clone()));
    }
    // Without a Host of its own the request goes with the upstream's
    // authority (`Forwarder::forward`).
    headers.remove(header::HOST);
    if ctx.preserve_host {
        added.host = ctx.host;
    }
    if let Some(id) = ctx.identity {
        added.fields.push((&X_AUTH_SUBJECT, id.subject_header.clone()));
        added.fields.push((&X_AUTH_CLIENT_ID, id.client_id_header.clone()));
        added.fields.push((&X_AUTH_SCOPE, id.scope_header.clone()));
    }
    added
}

/// Takes the `X-Forwarded-For` lines a trusted proxy sent out of `headers`,
/// as one list (RFC 9110 §5.3: several lines are one comma-separated
/// value). A proxy that appends its own line instead of extending the
/// client's leaves the true client last; keeping only the first line would
/// drop it and keep what the client made up. Bytes, not text: what a
/// client wrote to the left of what its proxy appended may be anything,
/// and must not cost the entries the proxy vouches for.
fn forwarded_for_chain(headers: &mut HeaderMap) -> Option<Vec<u8>> {
    let mut chain = Vec::new();
    for line in headers.get_all(&X_FORWARDED_FOR) {
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(line.as_bytes());
    }
    headers.remove(&X_FORWARDED_FOR);
    (!chain.is_empty()).then_some(chain)
}

/// An address as text, on the stack: IPv4 by hand, since `Display` goes
/// through the formatting machinery four times per request.
fn ip_text(ip: std::net::IpAddr) -> IpText {
    let mut text = IpText { bytes: [0; 45], len: 0 };
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                if octet >= 100 {
                    text.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    text.push(b'0' + octet / 10 % 10);
                }
                text.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut text.bytes[..]);
            // 45 bytes hold the longest IPv6 text form.
            let _ = write!(cursor, "{v6}");
            text.len = cursor.position() as usize;
        }
    }
    text
}

struct IpText {
    bytes: [u8; 45],
    len: usize,
}

impl IpText {
    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, dots, hex and colons are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.99.100.109",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn a_request_with_no_hop_by_hop_headers_keeps_all_it_has() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.append(header::CONNECTION, HeaderValue::from_static(" ,X-Other ,, not a name"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert("x-auth-subject", HeaderValue::from_static("admin"));
        h.insert("x-auth-anything", HeaderValue::from_static("x"));
        let ctx = ForwardContext {
            peer: "10.0.0.7:5000".parse().unwrap(),
            trusted_proxies: &[],
            proto: "http",
            host: Some(HeaderValue::from_static("gw.example")),
            identity: None,
            keep_authorization: false,
            preserve_host: false,
            drop_underscored: true,
        };
        let added = upstream_headers(&mut h, ctx.clone());
        assert!(h.is_empty(), "{h:?}");
        assert_eq!(
            fields(&added),
            [
                ("x-forwarded-for", "10.0.0.7"),
                ("x-real-ip", "10.0.0.7"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "gw.example")
            ]
        );
        assert_eq!(added.host, None);

        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let added = upstream_headers(&mut h, ForwardContext { trusted_proxies: &trusted, preserve_host: true, ..ctx });
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            fields(&added),
            [("x-forwarded-for", "1.2.3.4, 10.0.0.7"), ("x-real-ip", "1.2.3.4"), ("x-forwarded-host", "gw.example")]
        );
        assert_eq!(added.host, Some(HeaderValue::from_static("gw.example")));
    }

    #[test]
    fn a_trusted_chain_on_several_lines_is_kept_whole() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        // The client's made-up line, then the one its trusted proxy added.
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let ctx = ForwardContext {
            peer: "10.0.0.5:5000".parse().unwrap(),
            trusted_proxies: &trusted,
            proto: "http",
            host: None,
            identity: None,
            keep_authorization: false,
            preserve_host: false,
            drop_underscored: true,
        };
        let added = upstream_headers(&mut h, ctx.clone());
        assert_eq!(fields(&added)[0], ("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.0.0.5"));
        assert!(h.is_empty(), "{h:?}");

        // Bytes that are not text stay as they came, and cost the entries
        // right of them nothing: the client is the one the proxy vouches for.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff, 203.0.113.7").unwrap());
        let added = upstream_headers(&mut h, ctx);
        assert_eq!(added.fields[0].1.as_bytes(), b"\xff, 203.0.113.7, 10.0.0.5");
        assert_eq!(added.fields[1], (&X_REAL_IP, HeaderValue::from_static("203.0.113.7")));
    }

    #[test]
    fn the_gateways_cookies_do_not_go_upstream() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; portcullis_session=s3cret;b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("portcullis_login=x"));
        h.append(header::COOKIE, HeaderValue::from_bytes(b"c=\xe9t\xe9 ; portcullis_session =y").unwrap());
        h.append(header::COOKIE, HeaderValue::from_static("portcullis_sessionx=kept"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-portcullis_session=s; __Host-portcullis_login=l; d=4"),
        );
        strip_gateway_cookies(&mut h);
        let left: Vec<&[u8]> = h.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(left, [&b"a=1; b=2"[..], b"c=\xe9t\xe9", b"portcullis_sessionx=kept", b"d=4"]);

        // Without one of the gateway's, the header is left as it came.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static(" a=1;;b=2 "));
        strip_gateway_cookies(&mut h);
        assert_eq!(h[header::COOKIE], " a=1;;b=2 ");
    }

    #[test]
    fn an_upstream_cannot_set_the_gateways_cookies() {
        let mut h = HeaderMap::new();
        h.append(header::SET_COOKIE, HeaderValue::from_static("app=1; Path=/"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("portcullis_session=planted; Path=/oauth"));
        h.append(header::SET_COOKIE, HeaderValue::from_static(" portcullis_login=x"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("other=1; Comment=portcullis_session=x"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("=portcullis_session=planted; Path=/oauth"));
        h.append(header::SET_COOKIE, HeaderValue::from_static(" =x"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("__Host-portcullis_session=planted; Path=/; Secure"));
        strip_gateway_set_cookies(&mut h);
        let left: Vec<&str> = h.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["app=1; Path=/", "other=1; Comment=portcullis_session=x"]);
    }

    fn fields(added: &Added) -> Vec<(&str, &str)> {
        added.fields.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect()
    }
}
