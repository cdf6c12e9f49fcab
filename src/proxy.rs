//! Forwarding: rewriting a request that was let through for its upstream,
//! sending it on a pooled keep-alive connection (plain, or TLS as
//! `crate::upstream_tls` says), and relaying the answer.
//!
//! Bodies stream both ways untouched (except a form body whose token was
//! taken out). Hop-by-hop headers, including any the `Connection` header
//! names, are removed in both directions (RFC 9110 §7.6.1). Identity headers
//! a client sent are always stripped before the gateway adds its own, and
//! `X-Forwarded-*` from a client are believed only from a trusted proxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Upstream;
use crate::net::IpNet;
use crate::respond::{Body, Refusal, full};
use crate::tokens::Identity;
use crate::upstream_tls::UpstreamTls;

pub static X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
pub static X_AUTH_CLIENT_ID: HeaderName = HeaderName::from_static("x-auth-client-id");
pub static X_AUTH_SCOPE: HeaderName = HeaderName::from_static("x-auth-scope");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the connection-specific headers of one hop: those RFC 9110
/// §7.6.1 lists, the ones `Connection` names, and `Proxy-Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Removes every `X-Auth-*` header: only the gateway may assert identity.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("x-auth-")).cloned().collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// What the gateway established about a request, for its upstream.
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
}

/// Rewrites request headers for the upstream.
pub fn upstream_headers(headers: &mut HeaderMap, ctx: &ForwardContext<'_>) {
    strip_hop_by_hop(headers);
    strip_identity_headers(headers);
    if !ctx.keep_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    let trusted = ctx.trusted_proxies.iter().any(|net| net.contains(ctx.peer.ip()));
    let peer_ip = ctx.peer.ip().to_canonical().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()).filter(|_| trusted) {
        Some(chain) => format!("{chain}, {peer_ip}"),
        None => peer_ip,
    };
    if !trusted {
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.remove(&FORWARDED);
    }
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(ctx.proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = &ctx.host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    // Without a Host header the client writes the upstream's authority.
    headers.remove(header::HOST);
    if ctx.preserve_host
        && let Some(host) = &ctx.host
    {
        headers.insert(header::HOST, host.clone());
    }
    if let Some(id) = ctx.identity {
        headers.insert(X_AUTH_SUBJECT.clone(), id.subject_header.clone());
        headers.insert(X_AUTH_CLIENT_ID.clone(), id.client_id_header.clone());
        headers.insert(X_AUTH_SCOPE.clone(), id.scope_header.clone());
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A worker's pooled upstream clients: one for plain `http://` upstreams,
/// and one per TLS client configuration in use, so a route that skips
/// certificate verification never reuses a connection that one which
/// verifies would accept, and the other way round.
pub struct Forwarder {
    http: Client<HttpConnector, Body>,
    /// Looked up by `Arc` identity; only `https://` routes come here, and
    /// the lock is a worker's own (no other thread takes it).
    https: Mutex<Vec<(Arc<rustls::ClientConfig>, HttpsClient)>>,
}

/// A forwarded exchange's result: the response and how long the upstream
/// took to start it.
pub struct Forwarded {
    pub response: Response<Relayed>,
    pub upstream_time: Duration,
}

/// A response body on its way back: the upstream's, not yet boxed, so the
/// caller can wrap it (count it) and box it in one go.
pub enum Relayed {
    Upstream(hyper::body::Incoming),
    /// The built-in demo API's answer.
    Demo(Body),
}

impl Relayed {
    /// The body to send, its bytes added to `counter` as they pass.
    pub fn into_body(self, counter: &prometheus::IntCounter) -> Body {
        match self {
            Relayed::Upstream(body) => crate::metrics::counted(body, counter),
            Relayed::Demo(body) => crate::metrics::counted(body, counter),
        }
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder::new()
    }
}

fn tcp_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector
}

fn pooled<C>(connector: C) -> Client<C, Body>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http1_writev(false)
        .build(connector)
}

/// An error and its causes, which is where the reason lives ("client
/// error (Connect): invalid peer certificate: Expired").
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Forwarder {
    pub fn new() -> Forwarder {
        Forwarder { http: pooled(tcp_connector()), https: Mutex::new(Vec::new()) }
    }

    /// The pool for `config`, made on first use. Pools of configurations
    /// no route holds any more (a reload replaced them) are dropped then.
    fn https_client(&self, config: &Arc<rustls::ClientConfig>) -> HttpsClient {
        let mut pools = self.https.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, client)) = pools.iter().find(|(c, _)| Arc::ptr_eq(c, config)) {
            return client.clone();
        }
        pools.retain(|(c, _)| Arc::strong_count(c) > 1);
        let mut tcp = tcp_connector();
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((**config).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        let client = pooled(connector);
        pools.push((config.clone(), client.clone()));
        client
    }

    /// Sends `req` (already rewritten) to `upstream` and relays the answer.
    /// `path_and_query` is the normalised path plus the filtered query;
    /// `tls` is how an `https://` upstream is verified.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        tls: Option<&UpstreamTls>,
        mut req: Request<Body>,
        path_and_query: &str,
        timeout: Duration,
        identity: Option<&Identity>,
    ) -> Result<Forwarded, Refusal> {
        let (scheme, authority, base_path) = match upstream {
            Upstream::Static => {
                return Ok(Forwarded {
                    response: static_demo(&req, path_and_query, identity).map(Relayed::Demo),
                    upstream_time: Duration::ZERO,
                });
            }
            Upstream::Http { scheme, authority, base_path } => (scheme, authority, base_path),
        };
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(format!("{base_path}{path_and_query}"))
            .build()
            .map_err(|_| Refusal::BadRequest("The request target cannot be forwarded"))?;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let started = Instant::now();
        let sent = match tls {
            None => self.http.request(req),
            Some(tls) => self.https_client(&tls.client).request(req),
        };
        let response = match tokio::time::timeout(timeout, sent).await {
            Err(_) => {
                tracing::warn!(upstream = %authority, timeout = ?timeout, "upstream did not answer in time");
                return Err(Refusal::UpstreamTimeout);
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %authority, error = %causes(&e), connect = e.is_connect(), "upstream request failed");
                return Err(Refusal::UpstreamUnreachable);
            }
            Ok(Ok(res)) => res,
        };
        let upstream_time = started.elapsed();
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Forwarded { response: Response::from_parts(parts, Relayed::Upstream(body)), upstream_time })
    }
}

/// The built-in demo API (`upstream = "static://"`): answers with what the
/// gateway established, so the whole story runs with no other process.
fn static_demo(req: &Request<Body>, path_and_query: &str, identity: Option<&Identity>) -> Response<Body> {
    let body = serde_json::json!({
        "service": "portcullis static demo upstream",
        "method": req.method().as_str(),
        "path": path_and_query,
        "subject": identity.map(|i| i.subject.as_str()),
        "client_id": identity.map(|i| i.client_id.as_str()),
        "scope": identity.map(|i| i.scopes.to_string()),
    });
    let mut res = Response::new(full(Bytes::from(body.to_string())));
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
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
        };
        upstream_headers(&mut h, &ctx);
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-auth-subject"));
        assert!(!h.contains_key("x-auth-anything"));

        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        upstream_headers(&mut h, &ForwardContext { trusted_proxies: &trusted, ..ctx });
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
