//! Configuration: the TOML file as written (`RawConfig`, strict serde with
//! unknown keys refused) and the validated `Config` the rest of the gateway
//! runs on. Parsing and validation happen before any socket is bound, and a
//! bad file is reported as a list of `field: reason` lines, all at once, so
//! an operator fixes everything in one pass.
//!
//! `raw` holds the file as written, `validate` the checks, `endpoints` the
//! one table of the authorization server's paths. Every room reads this
//! one; it imports only `http` (paths, addresses, form limits), `scope`
//! and `tls` (which reads the certificate files it names).

pub mod endpoints;
mod raw;
mod validate;

use raw::RawConfig;
use validate::{Validator, toml_error};

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::http::form::FormReader;
use crate::http::net::IpNet;
use crate::scope::ScopeSet;
use crate::tls::upstream::Trust;

/// One problem in a configuration file: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration in {}:", self.source_name)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The validated configuration.

/// A validated configuration: every value has its real type and every
/// cross-reference has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub authorization_server: AuthorizationServerConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub clients: Vec<ClientConfig>,
    pub users: Vec<UserConfig>,
    pub routes: Vec<RouteConfig>,
    /// What each scope lets a client do, in plain words for consent pages.
    pub scope_descriptions: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The `realm` of every `WWW-Authenticate: Bearer` challenge.
    pub realm: String,
    /// Slowloris guard: a connection that has not sent a whole request head
    /// in this time is closed.
    pub header_read_timeout: Duration,
    /// A connection with no new request for this long is closed (an
    /// exchange in flight finishes first), so idle clients do not hold
    /// connection slots.
    pub keep_alive_timeout: Duration,
    /// Larger request heads are answered with 431.
    pub max_header_bytes: usize,
    /// The most we buffer of a form body (token endpoint, body-parameter
    /// bearer tokens); larger bodies get 413.
    pub max_form_body_bytes: usize,
    pub max_connections: usize,
    /// An HTTP/2 stream that moves nothing for this long while not waiting
    /// on its upstream (its client holds the window at zero, or stopped
    /// sending its body) is reset (`crate::http::h2_streams`).
    pub stream_idle_timeout: Duration,
    /// Streams an HTTP/2 client may have open at once (nginx: 128).
    pub http2_max_concurrent_streams: u32,
    /// Upstream exchanges that HTTP/2 streams run alongside another of
    /// their connection's, in flight at once in the whole process; more
    /// wait. A connection's first exchange never does (`proxy::ExchangeLimit`).
    /// `None`: half the process's file-descriptor limit.
    pub max_upstream_exchanges: Option<usize>,
    /// Upstream exchanges in flight at once for one client connection (its
    /// HTTP/2 streams); more wait, holding no upstream connection.
    pub max_upstream_exchanges_per_connection: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// How long the listeners keep accepting after SIGTERM, with `/readyz`
    /// already failing, before the drain begins: the time a load balancer
    /// takes to stop sending new connections.
    pub shutdown_delay: Duration,
    /// Peers whose `X-Forwarded-*` headers are believed and extended; from
    /// anyone else they are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// The host names clients may reach proxied routes by (the `Host`, or
    /// a trusted proxy's `X-Forwarded-Host`): upstreams build links from
    /// them. By default the issuer's host (and every loopback name when
    /// that is a loopback address).
    pub allowed_hosts: Vec<HostPattern>,
    /// What becomes of a client's header whose name holds `_`.
    pub headers_with_underscores: UnderscoreHeaders,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    /// Whether each public worker is kept on a CPU of its own.
    pub pin_workers: PinWorkers,
    /// TLS on the public listener; `None` for plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl ServerConfig {
    /// How the gateway reads a form body: at most `max_form_body_bytes`,
    /// within `header_read_timeout`.
    pub fn form_reader(&self) -> FormReader {
        FormReader::new(self.max_form_body_bytes, self.header_read_timeout)
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first) and PEM private key.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// `Strict-Transport-Security` max-age; `None` sends no HSTS.
    pub hsts_max_age: Option<Duration>,
    /// How often the files are checked for changes.
    pub watch_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub url: String,
    /// PostgreSQL only: connections kept (one by the revocation feed).
    pub max_connections: u32,
    /// PostgreSQL only: how long a request waits for a connection before
    /// it is answered 503.
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    /// RFC 9068 JWT access tokens, verified locally with the published key.
    Jwt,
    /// Random handles looked up in the store.
    Opaque,
}

#[derive(Debug, Clone)]
pub struct AuthorizationServerConfig {
    /// The issuer identifier (RFC 8414 §2): `https://host[:port][/path]`,
    /// no query or fragment, no trailing slash.
    pub issuer: String,
    /// The path component of the issuer ("" for none); endpoints live below it.
    pub issuer_path: String,
    /// This gateway's resource identifier, the `aud` of every access token.
    pub audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub authorization_code_ttl: Duration,
    pub token_format: TokenFormat,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How long a user stays logged in at the authorization endpoint.
    pub session_ttl: Duration,
    /// Whether the issuer is served over TLS (session cookies get `Secure`).
    pub secure_cookies: bool,
    /// The issuer's host name, lower-cased, without its port.
    pub issuer_host: String,
    /// Whether the issuer's host is the authorization server's alone: the
    /// sign-in and consent pages answer on no other host, and no proxied
    /// route answers on it, so no upstream's content shares the pages'
    /// origin (where its scripts could set their cookies).
    pub dedicated_host: bool,
    /// How often a new signing key is rotated in unattended; `None` (the
    /// default): only by `portcullis keys rotate`.
    pub key_rotation: Option<Duration>,
}

impl AuthorizationServerConfig {
    /// How long an access token is honoured after it is signed: its
    /// lifetime, and the leeway `exp` is checked with. A retired signing
    /// key stays published this long.
    pub fn token_outlives_signing(&self) -> Duration {
        self.access_token_ttl.saturating_add(self.leeway)
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    /// How long a refusal is remembered, so a flood of one bad token costs
    /// one check.
    pub negative_ttl: Duration,
    pub max_entries: u64,
}

/// One entry of `server.allowed_hosts`: a name, `*.` and a domain (its
/// subdomains, not itself), or `*` for any host. Compared without regard to
/// case or port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// Names ending in this (`.example.com`).
    Subdomains(String),
}

/// The name a `Host` header's value (`host[:port]`, `[v6][:port]`) names:
/// without its port, and without a final dot (`api.example.com.` is
/// `api.example.com` to DNS). Letter case is left as it is.
pub fn host_name(host: &[u8]) -> &[u8] {
    let name = match host.first() {
        Some(b'[') => host.iter().position(|b| *b == b']').map_or(host, |end| &host[..=end]),
        _ => host.iter().position(|b| *b == b':').map_or(host, |colon| &host[..colon]),
    };
    name.strip_suffix(b".").unwrap_or(name)
}

impl HostPattern {
    /// Parses an `allowed_hosts` entry.
    pub fn parse(text: &str) -> Result<HostPattern, HostPatternError> {
        let lower = text.to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = |n: &str| {
            !n.is_empty()
                && (n.starts_with('[') && n.ends_with(']') && n[1..n.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()
                    || n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        };
        match lower.as_str() {
            "*" => Ok(HostPattern::Any),
            _ if !valid(name) => Err(HostPatternError(text.to_string())),
            _ if lower.starts_with("*.") => Ok(HostPattern::Subdomains(lower[1..].to_string())),
            _ => Ok(HostPattern::Exact(lower)),
        }
    }

    /// Whether `host`, a `Host` header's value (port and all), is one this
    /// pattern allows.
    pub fn matches(&self, host: &[u8]) -> bool {
        let name = host_name(host);
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(n) => name.eq_ignore_ascii_case(n.as_bytes()),
            HostPattern::Subdomains(suffix) => {
                name.len() > suffix.len() && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// `server.headers_with_underscores`: nginx ignores such headers
/// (`underscores_in_headers off`), Envoy can drop or refuse them, and WSGI,
/// CGI and several frameworks read `X_Auth_Subject` as `X-Auth-Subject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Not forwarded (the default).
    Drop,
    /// The request is refused with 400.
    Refuse,
    /// Forwarded as sent.
    Keep,
}

/// `server.pin_workers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinWorkers {
    /// When the process has exactly one CPU per worker to itself: all the
    /// CPUs it may run on, and no CPU quota below that (see `affinity`).
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// One access log line per request (target `access`, level info).
    pub access: bool,
    /// Where the audit log of security events goes.
    pub audit: AuditSink,
}

/// The audit log's destination: JSON lines, whatever `format` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Interleaved with the rest of the log on stderr (the default).
    Stderr,
    /// Appended to this file, created if missing.
    File(std::path::PathBuf),
    Off,
}

/// How a client proves who it is at the token endpoint.
#[derive(Clone)]
pub enum ClientSecret {
    /// An argon2 PHC string.
    Hash(String),
    /// The secret itself, read from the environment at start.
    Plain(String),
    /// A public client: it has no secret.
    None,
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientSecret::Hash(_) => f.write_str("Hash(<redacted>)"),
            ClientSecret::Plain(_) => f.write_str("Plain(<redacted>)"),
            ClientSecret::None => f.write_str("None"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    ClientCredentials,
    AuthorizationCode,
    RefreshToken,
}

impl GrantType {
    pub fn parse(s: &str) -> Option<GrantType> {
        match s {
            "client_credentials" => Some(GrantType::ClientCredentials),
            "authorization_code" => Some(GrantType::AuthorizationCode),
            "refresh_token" => Some(GrantType::RefreshToken),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub client_id: String,
    pub name: String,
    pub secret: ClientSecret,
    pub redirect_uris: Vec<String>,
    pub scopes: ScopeSet,
    pub grant_types: Vec<GrantType>,
    /// A client with no secret (a browser or native app): PKCE is always
    /// required of it (OAuth 2.1 §4.1.2.1).
    pub public: bool,
    /// Whether authorization requests must carry a PKCE challenge. Always
    /// true for public clients; on by default for confidential ones.
    pub require_pkce: bool,
}

#[derive(Clone)]
pub struct UserConfig {
    pub username: String,
    pub password_hash: String,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig").field("username", &self.username).field("password_hash", &"<redacted>").finish()
    }
}

/// Where a route sends what it lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// An HTTP server: `scheme://authority`, and a base path prepended to
    /// the request's path ("" for none); `http2` for `h2c://`, HTTP/2 with
    /// prior knowledge (its scheme is `http`).
    Http { scheme: http::uri::Scheme, authority: http::uri::Authority, base_path: String, http2: bool },
    /// The built-in demo API (`static://`): answers every request itself
    /// with a JSON echo of what the gateway established.
    Static,
}

/// The scopes a method needs: every listed scope is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRule {
    pub methods: BTreeMap<String, ScopeSet>,
    /// The `"*"` entry: required for any method not named.
    pub other: Option<ScopeSet>,
}

impl ScopeRule {
    /// The scopes `method` needs, or `None` when the route does not allow
    /// the method at all (fail closed). A `HEAD` not named is a `GET`:
    /// frameworks answer it with their GET handler (RFC 9110 §9.3.2).
    pub fn required(&self, method: &http::Method) -> Option<&ScopeSet> {
        let named = self.methods.get(method.as_str());
        let as_get = || (*method == http::Method::HEAD).then(|| self.methods.get("GET")).flatten();
        named.or_else(as_get).or(self.other.as_ref())
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// The host the route answers for (a name, or `*.example.com`), or
    /// `None` for requests whose host has no routes of its own.
    pub host: Option<HostPattern>,
    /// Normalised, without a trailing slash ("" for the root).
    pub path_prefix: String,
    /// Send the path without `path_prefix` (decided on the whole path).
    pub strip_prefix: bool,
    /// The first of its upstream instances; the others (`instances`)
    /// differ from it only in their authority.
    pub upstream: Upstream,
    /// Every instance's authority, the first's included: one for most
    /// routes, which are not balanced.
    pub instances: Vec<http::uri::Authority>,
    /// How long an instance that keeps failing is left out, the first time
    /// (twice as long each time after, up to 16 times as long).
    pub ejection_time: Duration,
    /// Active health: the path each instance is asked for, and how often.
    pub health_check: Option<(http::uri::PathAndQuery, Duration)>,
    /// How often the upstreams' host names are resolved, each address an
    /// instance (`crate::upstream::balance`); `None`: each new connection
    /// resolves its name.
    pub resolve_interval: Option<Duration>,
    /// `None` for a public route.
    pub scopes: Option<ScopeRule>,
    pub allow_query_token: bool,
    pub allow_body_token: bool,
    /// Pass the client's `Authorization: Bearer` header upstream.
    pub forward_bearer: bool,
    /// Keep the client's `Host` instead of the upstream's authority.
    pub preserve_host: bool,
    /// Forward paths holding `%2F` (or `%25` escapes) untouched, as long as
    /// a server that decodes them still lands in this route; refused with
    /// 400 otherwise (`crate::http::path`).
    pub allow_encoded_slashes: bool,
    /// Forward paths with `;` parameters in a segment, as long as a servlet
    /// container that cuts them off still lands in this route.
    pub allow_path_parameters: bool,
    /// How long the upstream has to start its response.
    pub timeout: Duration,
    /// Relay WebSocket handshakes (RFC 6455); refused with 403 when off.
    pub websockets: bool,
    /// How long a WebSocket may carry nothing either way before the
    /// gateway closes it.
    pub idle_timeout: Duration,
    /// How an `https://` upstream is verified; `None` for the others.
    pub upstream_tls: Option<crate::tls::upstream::UpstreamTls>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            errors: vec![FieldError { field: "(file)".into(), reason: format!("cannot read: {e}") }],
        })?;
        Config::parse(&text, &name, &|var| std::env::var(var).ok())
    }

    /// Parses and validates TOML text. `env` resolves `client_secret_env`.
    pub fn parse(text: &str, source_name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let fail = |errors| ConfigError { source_name: source_name.to_string(), errors };
        let raw: RawConfig = toml::from_str(text).map_err(|e| fail(vec![toml_error(text, &e)]))?;
        let mut v = Validator { errors: Vec::new() };
        let config = v.config(raw, env);
        if v.errors.is_empty() { Ok(config) } else { Err(fail(v.errors)) }
    }

    /// Routes that overlap, for `check` and reloads to report: a nested
    /// prefix takes part of its parent's paths (longest prefix wins), and
    /// the authorization server's endpoints are served before any route.
    pub fn route_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let shown = |p: &str| if p.is_empty() { "/".to_string() } else { p.to_string() };
        for outer in &self.routes {
            for inner in self.routes.iter().filter(|r| r.host == outer.host) {
                if inner.path_prefix != outer.path_prefix
                    && crate::http::path::under_prefix(&inner.path_prefix, &outer.path_prefix)
                {
                    notes.push(format!(
                        "route {:?} ({}) takes the paths under {} from route {:?} ({})",
                        inner.name,
                        shown(&inner.path_prefix),
                        shown(&inner.path_prefix),
                        outer.name,
                        shown(&outer.path_prefix)
                    ));
                }
            }
            let base = &self.authorization_server.issuer_path;
            for endpoint in endpoints::Endpoint::ALL.into_iter().filter(|e| e.under_issuer()) {
                let path = endpoint.path(base);
                if crate::http::path::under_prefix(&path, &outer.path_prefix) {
                    notes.push(format!(
                        "{path} is the authorization server's, served before route {:?} ({})",
                        outer.name,
                        shown(&outer.path_prefix)
                    ));
                }
            }
        }
        notes
    }

    /// Settings that are valid but unsafe, for `check` and the log at every
    /// start and reload: today, routes that do not verify their upstream.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.upstream_tls.as_ref().is_some_and(|t| t.trust == Trust::SkipVerify))
            .map(|r| {
                format!(
                    "route {:?} does not verify its upstream's certificate (tls_skip_verify): anyone on the network path can impersonate the upstream and read its traffic, tokens' identities included",
                    r.name
                )
            })
            .collect();
        // A scope no client in the file may be granted, and that [scopes]
        // does not describe for clients registered in the store: most likely
        // a typo (`calender.read`), and the route refuses every token.
        for r in &self.routes {
            let Some(rule) = &r.scopes else { continue };
            let mut unknown: Vec<&str> = rule
                .methods
                .values()
                .chain(&rule.other)
                .flat_map(ScopeSet::iter)
                .filter(|s| {
                    !self.clients.iter().any(|c| c.scopes.contains(s)) && !self.scope_descriptions.contains_key(*s)
                })
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            for scope in unknown {
                warnings.push(format!(
                    "route {:?} requires the scope {scope:?}, which no client may be granted and [scopes] does not describe: a typo? The route refuses every token until a client has it",
                    r.name
                ));
            }
        }
        // An exchange that waits on its upstream makes no move for up to the
        // route's timeout (twice that between a stalled body's chunks); a
        // closing connection that makes none for keep_alive_timeout is cut.
        // (An HTTP/2 stream waiting on its upstream is not: `h2_streams`.)
        let keep_alive = self.server.keep_alive_timeout;
        warnings.extend(self.routes.iter().filter(|r| r.timeout * 2 >= keep_alive).map(|r| {
            format!(
                "route {:?} waits up to {} for its upstream, but a closing connection that does not move for server.keep_alive_timeout ({}) is cut: make keep_alive_timeout more than twice the route's timeout",
                r.name,
                humantime::format_duration(r.timeout),
                humantime::format_duration(keep_alive)
            )
        }));
        warnings
    }

    /// The client registered under `client_id`.
    pub fn client(&self, client_id: &str) -> Option<&ClientConfig> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

/// Whether a user name and a client id would name the same subject to an
/// upstream: a client-credentials token's `sub` is its client id (RFC 9068
/// §2.2), and an upstream that compares without regard to case (or a
/// database collation that does) must not take one for the other.
pub fn same_subject(client_id: &str, username: &str) -> bool {
    client_id.eq_ignore_ascii_case(username)
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An `allowed_hosts` entry that is not a host name or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a host name like \"api.example.com\", \"*.example.com\" or \"*\" (no port or scheme)")]
pub struct HostPatternError(pub String);

/// Why a redirect URI cannot be registered; each names the URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("{0:?} is not an absolute URI")]
    NotAbsolute(String),
    #[error("{0:?} must not have a fragment (RFC 6749 §3.1.2)")]
    Fragment(String),
    #[error("{0:?}: plain http is allowed only for loopback hosts")]
    PlainHttp(String),
    #[error("{0:?} is not an absolute https URI")]
    NotHttps(String),
}

/// A registered redirect URI: absolute, no fragment, and `https` unless it
/// points at the loopback interface (RFC 9700 §2.1, RFC 8252 §7.3); a
/// private-use scheme (`com.example.app:/cb`) is allowed for native apps.
pub fn check_redirect_uri(uri: &str) -> Result<(), RedirectUriError> {
    let parsed: http::Uri = uri.parse().map_err(|_| RedirectUriError::NotAbsolute(uri.to_string()))?;
    if uri.contains('#') {
        return Err(RedirectUriError::Fragment(uri.to_string()));
    }
    match parsed.scheme_str() {
        Some("https") if parsed.host().is_some() => Ok(()),
        Some("http") if parsed.host().is_some_and(is_loopback_host) => Ok(()),
        Some("http") => Err(RedirectUriError::PlainHttp(uri.to_string())),
        Some(s) if s.contains('.') => Ok(()),
        _ => Err(RedirectUriError::NotHttps(uri.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::validate::parse_upstream;
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [admin]
        listen = "127.0.0.1:0"
        [authorization_server]
        issuer = "http://127.0.0.1:8080"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &|_| None)
    }

    /// [`MINIMAL`] with `line` added to its `[server]` table.
    fn with_server_line(line: &str) -> String {
        let anchor = "listen = \"127.0.0.1:0\"\n        [admin]";
        assert!(MINIMAL.contains(anchor), "MINIMAL's [server] table changed");
        MINIMAL.replace(anchor, &format!("listen = \"127.0.0.1:0\"\n{line}\n[admin]"))
    }

    fn fields(text: &str) -> Vec<String> {
        parse(text).unwrap_err().errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.authorization_server.audience, "http://127.0.0.1:8080");
        assert_eq!(c.authorization_server.token_format, TokenFormat::Jwt);
        assert_eq!(c.authorization_server.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.cache.ttl, Duration::from_secs(30));
        assert_eq!(c.server.realm, "portcullis");
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.keep_alive_timeout, Duration::from_secs(75));
        assert_eq!(c.server.shutdown_delay, Duration::ZERO);
        assert_eq!(c.server.pin_workers, PinWorkers::Auto);
        assert_eq!(c.server.stream_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.server.http2_max_concurrent_streams, 128);
        assert_eq!(c.server.max_upstream_exchanges_per_connection, 32);
        assert_eq!(c.server.max_upstream_exchanges, None);
        assert_eq!(c.server.headers_with_underscores, UnderscoreHeaders::Drop);
    }

    #[test]
    fn a_route_timeout_near_keep_alive_timeout_is_warned_about() {
        let route = |timeout: &str| {
            format!(
                "{MINIMAL}\n[[routes]]\nname = \"slow\"\npath_prefix = \"/a/\"\nupstream = \"static://\"\npublic = true\ntimeout = \"{timeout}\"\n"
            )
        };
        // keep_alive_timeout is 75 s by default.
        assert_eq!(parse(&route("37s")).unwrap().warnings(), Vec::<String>::new());
        let warnings = parse(&route("40s")).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("route \"slow\" waits up to 40s for its upstream"), "{warnings:?}");
        assert!(warnings[0].contains("server.keep_alive_timeout (1m 15s)"), "{warnings:?}");
    }

    #[test]
    fn pin_workers_is_auto_on_or_off() {
        let with = |v: &str| with_server_line(&format!("pin_workers = \"{v}\""));
        assert_eq!(parse(&with("on")).unwrap().server.pin_workers, PinWorkers::On);
        assert_eq!(parse(&with("off")).unwrap().server.pin_workers, PinWorkers::Off);
        assert_eq!(parse(&with("auto")).unwrap().server.pin_workers, PinWorkers::Auto);
        let err = parse(&with("yes")).unwrap_err();
        assert_eq!(err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["server.pin_workers"]);
        assert!(err.to_string().contains("must be \"auto\", \"on\" or \"off\""), "{err}");
    }

    #[test]
    fn shutdown_delay_may_be_zero_but_must_be_a_duration() {
        let with = |v: &str| with_server_line(&format!("shutdown_delay = {v}"));
        assert_eq!(parse(&with("\"5s\"")).unwrap().server.shutdown_delay, Duration::from_secs(5));
        assert_eq!(parse(&with("\"0s\"")).unwrap().server.shutdown_delay, Duration::ZERO);
        let err = parse(&with("\"soon\"")).unwrap_err();
        assert_eq!(err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["server.shutdown_delay"]);
        assert!(err.to_string().contains("\"soon\" is not a duration"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{MINIMAL}\n[cache]\nttl = \"1s\"\nttll = \"2s\"\n");
        let err = parse(&text).unwrap_err();
        assert!(err.to_string().contains("ttll"), "{err}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let text = r#"
            [server]
            listen = "nowhere"
            [authorization_server]
            issuer = "http://example.com"
            access_token_ttl = "soon"
            token_format = "paseto"
            [[routes]]
            path_prefix = "calendar"
            upstream = "ftp://x"
            [routes.scopes]
            get = ["calendar.read"]
        "#;
        let f = fields(text);
        for want in [
            "server.listen",
            "authorization_server.issuer",
            "authorization_server.access_token_ttl",
            "authorization_server.token_format",
            "routes[0].path_prefix",
            "routes[0].upstream",
            "routes[0].scopes.get",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
        }
    }

    #[test]
    fn scope_rule_falls_back_to_star_and_fails_closed_without_it() {
        let text = format!(
            "{MINIMAL}\n[[routes]]\npath_prefix = \"/a/\"\nupstream = \"static://\"\n[routes.scopes]\nGET = [\"r\"]\n"
        );
        let c = parse(&text).unwrap();
        let rule = c.routes[0].scopes.as_ref().unwrap();
        assert!(rule.required(&http::Method::GET).is_some());
        assert!(rule.required(&http::Method::POST).is_none());
        let text = text.replace("GET = [\"r\"]", "GET = [\"r\"]\n\"*\" = [\"w\"]");
        let c = parse(&text).unwrap();
        let rule = c.routes[0].scopes.as_ref().unwrap();
        assert_eq!(rule.required(&http::Method::DELETE).unwrap().to_string(), "w");
    }

    #[test]
    fn client_secret_env_must_be_set() {
        let text = format!(
            "{MINIMAL}\n[[clients]]\nclient_id = \"c\"\nclient_secret_env = \"C_SECRET\"\nscopes = [\"a\"]\ngrant_types = [\"client_credentials\"]\n"
        );
        assert_eq!(fields(&text), vec!["clients[0].client_secret_env"]);
        let ok = Config::parse(&text, "t", &|v| (v == "C_SECRET").then(|| "s3cret".to_string())).unwrap();
        assert!(matches!(ok.clients[0].secret, ClientSecret::Plain(_)));
        assert_eq!(format!("{:?}", ok.clients[0].secret), "Plain(<redacted>)");
    }

    #[test]
    fn redirect_uris_are_https_or_loopback() {
        assert!(check_redirect_uri("https://app.example/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:3000/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("http://app.example/cb").is_err());
        assert!(check_redirect_uri("https://app.example/cb#x").is_err());
        assert!(check_redirect_uri("/cb").is_err());
    }

    #[test]
    fn upstreams_parse() {
        assert_eq!(parse_upstream("static://").unwrap(), Upstream::Static);
        match parse_upstream("http://127.0.0.1:9001/api/").unwrap() {
            Upstream::Http { authority, base_path, .. } => {
                assert_eq!(authority.as_str(), "127.0.0.1:9001");
                assert_eq!(base_path, "/api");
            }
            other => panic!("{other:?}"),
        }
        match parse_upstream("https://api.internal:8443").unwrap() {
            Upstream::Http { scheme, authority, base_path, http2 } => {
                assert_eq!(scheme, http::uri::Scheme::HTTPS);
                assert_eq!(authority.as_str(), "api.internal:8443");
                assert_eq!(base_path, "");
                assert!(!http2);
            }
            other => panic!("{other:?}"),
        }
        match parse_upstream("h2c://grpc.internal:50051").unwrap() {
            Upstream::Http { scheme, authority, http2, .. } => {
                assert_eq!(scheme, http::uri::Scheme::HTTP);
                assert_eq!(authority.as_str(), "grpc.internal:50051");
                assert!(http2);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_upstream("http://u:p@host").is_err());
        assert!(parse_upstream("127.0.0.1:9001").is_err());
        assert!(parse_upstream("ftp://host").is_err());
    }

    #[test]
    fn upstream_tls_settings_are_checked() {
        let route = |upstream: &str, tls: &str| {
            format!("{MINIMAL}\n[[routes]]\npath_prefix = \"/a/\"\nupstream = \"{upstream}\"\npublic = true\n{tls}\n")
        };
        let fields = |text: String| -> Vec<String> {
            parse(&text).unwrap_err().errors.into_iter().map(|e| format!("{}: {}", e.field, e.reason)).collect()
        };
        let c = parse(&route("https://api.internal", "")).unwrap();
        let tls = c.routes[0].upstream_tls.as_ref().expect("an https route has TLS settings");
        assert_eq!(tls.trust, Trust::System);
        assert!(c.warnings().is_empty());
        assert!(parse(&route("http://api.internal", "")).unwrap().routes[0].upstream_tls.is_none());

        let errors = fields(route("http://api.internal", "ca = \"ca.pem\"\ntls_skip_verify = false"));
        assert_eq!(
            errors,
            [
                "routes[0].ca: applies only to an https:// upstream",
                "routes[0].tls_skip_verify: applies only to an https:// upstream"
            ]
        );
        let errors = fields(route("https://api.internal", "ca = \"ca.pem\"\ntls_skip_verify = true"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("routes[0].tls_skip_verify: cannot be combined with ca"), "{errors:?}");
        let errors = fields(route("https://api.internal", "ca = \"/nonexistent/ca.pem\""));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("routes[0].ca: cannot read /nonexistent/ca.pem"), "{errors:?}");

        let c = parse(&route("https://api.internal", "tls_skip_verify = true")).unwrap();
        assert_eq!(c.routes[0].upstream_tls.as_ref().map(|t| &t.trust), Some(&Trust::SkipVerify));
        assert_eq!(c.warnings().len(), 1);
    }

    #[test]
    fn nested_routes_and_endpoints_under_a_route_are_noted() {
        let route = |name: &str, prefix: &str| {
            format!(
                "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"static://\"\npublic = true\n"
            )
        };
        let c = parse(&format!("{MINIMAL}{}{}", route("api", "/api/"), route("admin", "/api/admin/"))).unwrap();
        assert_eq!(
            c.route_notes(),
            vec!["route \"admin\" (/api/admin) takes the paths under /api/admin from route \"api\" (/api)"]
        );
        let c = parse(&format!("{MINIMAL}{}{}", route("all", "/"), route("pub", "/public/"))).unwrap();
        let notes = c.route_notes();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("route \"pub\" (/public) takes the paths under /public from route \"all\" (/)")),
            "{notes:?}"
        );
        assert!(notes.iter().any(|n| n.starts_with("/oauth/token is the authorization server's")), "{notes:?}");
        let c = parse(&format!("{MINIMAL}{}{}", route("a", "/a/"), route("b", "/b/"))).unwrap();
        assert!(c.route_notes().is_empty());
    }

    /// `[storage]`: SQLite or PostgreSQL URLs; a PostgreSQL password may
    /// come from the environment (`password_env`), percent-encoded into the
    /// URL; errors never echo the URL, which may hold a password.
    #[test]
    fn storage_urls_and_the_password_from_the_environment() {
        let storage = |table: &str| MINIMAL.replace("[admin]", &format!("[storage]\n{table}\n[admin]"));
        let with_env = |table: &str| {
            Config::parse(&storage(table), "t", &|v| (v == "PG_PASSWORD").then(|| "p@ss:w/rd".to_string()))
        };
        for url in ["sqlite://data/p.db", "postgres://gw@db:5432/p", "postgresql://gw:secret@db/p"] {
            assert_eq!(parse(&storage(&format!("url = \"{url}\""))).unwrap().storage.url, url);
        }
        let c = with_env("url = \"postgres://gw@db:5432/p\"\npassword_env = \"PG_PASSWORD\"").unwrap();
        assert_eq!(c.storage.url, "postgres://gw:p%40ss%3Aw%2Frd@db:5432/p");

        let c =
            parse(&storage("url = \"postgres://gw@db/p\"\nmax_connections = 32\nacquire_timeout = \"2s\"")).unwrap();
        assert_eq!((c.storage.max_connections, c.storage.acquire_timeout), (32, Duration::from_secs(2)));
        let c = parse(&storage("url = \"postgres://gw@db/p\"")).unwrap();
        assert_eq!((c.storage.max_connections, c.storage.acquire_timeout), (8, Duration::from_secs(5)));
        for (table, field) in [
            ("url = \"sqlite://p.db\"\nmax_connections = 4", "storage.max_connections"),
            ("url = \"sqlite://p.db\"\nacquire_timeout = \"2s\"", "storage.acquire_timeout"),
            ("url = \"postgres://gw@db/p\"\nmax_connections = 1", "storage.max_connections"),
            ("url = \"postgres://gw@db/p\"\nacquire_timeout = \"soon\"", "storage.acquire_timeout"),
        ] {
            let err = parse(&storage(table)).unwrap_err();
            assert_eq!(err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{table}");
        }

        let err = parse(&storage("url = \"mysql://gw:secret@db/p\"")).unwrap_err();
        assert_eq!(err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["storage.url"]);
        assert!(!err.to_string().contains("secret"), "{err}");
        for (table, field) in [
            ("url = \"postgres://gw@db/p\"\npassword_env = \"UNSET\"", "storage.password_env"),
            ("url = \"sqlite://p.db\"\npassword_env = \"PG_PASSWORD\"", "storage.password_env"),
            ("url = \"postgres://gw:old@db/p\"\npassword_env = \"PG_PASSWORD\"", "storage.url"),
            ("url = \"postgres://db/p\"\npassword_env = \"PG_PASSWORD\"", "storage.url"),
        ] {
            let err = with_env(table).unwrap_err();
            assert_eq!(err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{table}");
        }
    }

    /// No route may take the exact path of an endpoint of the authorization
    /// server (`endpoints::Endpoint`, the one table); a path below one is a
    /// route's to take.
    #[test]
    fn a_route_on_an_endpoint_path_is_refused() {
        let route = |prefix: &str| {
            format!("\n[[routes]]\nname = \"r\"\npath_prefix = \"{prefix}\"\nupstream = \"static://\"\npublic = true\n")
        };
        for endpoint in endpoints::Endpoint::ALL {
            let path = endpoint.path("");
            assert_eq!(fields(&format!("{MINIMAL}{}", route(&path))), ["route \"r\""], "{path}");
            assert!(parse(&format!("{MINIMAL}{}", route(&format!("{path}/more")))).is_ok(), "{path}/more");
        }
    }

    #[test]
    fn a_route_scope_no_client_may_be_granted_is_warned_about() {
        let config = |route_scope: &str, described: bool| {
            let scopes = if described { "[scopes]\n\"calender.read\" = { description = \"x\" }\n" } else { "" };
            format!(
                "{MINIMAL}\n[[clients]]\nclient_id = \"app\"\npublic = true\nredirect_uris = [\"https://a.example/cb\"]\n\
                 grant_types = [\"authorization_code\"]\nscopes = [\"calendar.read\"]\n\
                 [[routes]]\nname = \"cal\"\npath_prefix = \"/cal/\"\nupstream = \"static://\"\n\
                 [routes.scopes]\nGET = [{route_scope:?}]\n\"*\" = [\"calendar.read\", {route_scope:?}]\n{scopes}"
            )
        };
        assert_eq!(parse(&config("calendar.read", false)).unwrap().warnings(), Vec::<String>::new());
        assert_eq!(
            parse(&config("calender.read", false)).unwrap().warnings(),
            [
                "route \"cal\" requires the scope \"calender.read\", which no client may be granted and [scopes] does not describe: a typo? The route refuses every token until a client has it"
            ]
        );
        // Described, it is meant for clients registered in the store.
        assert_eq!(parse(&config("calender.read", true)).unwrap().warnings(), Vec::<String>::new());
    }

    #[test]
    fn user_names_are_plain_and_never_a_clients() {
        let config = |client: &str, user: &str| {
            format!(
                "{MINIMAL}\n[[clients]]\nclient_id = {client:?}\npublic = true\nredirect_uris = [\"https://a.example/cb\"]\n\
                 grant_types = [\"authorization_code\"]\n[[users]]\nusername = {user:?}\npassword_hash = \"{HASH}\"\n"
            )
        };
        const HASH: &str =
            "$argon2id$v=19$m=19456,t=2,p=1$JY630gxMHjUwUo/PH7g4ZA$b69xjb6VhafcJlAoNpheoVnQvGqIftr3hG6qJ7iPi6A";
        assert!(parse(&config("calendar-app", "alice")).is_ok());
        for (user, reason) in [
            ("calendar-app ", "must not start or end with whitespace"),
            ("\talice", "must be non-empty printable text"),
            (" alice", "must not start or end with whitespace"),
            ("Calendar-App", "\"Calendar-App\" is also a client_id; a user may not share a client's subject"),
        ] {
            let err = parse(&config("calendar-app", user)).unwrap_err();
            assert_eq!(
                err.errors,
                [FieldError { field: "users[0].username".into(), reason: reason.into() }],
                "{user:?}"
            );
        }
        for id in [" calendar-app", "calendar-app\n", "calendar app"] {
            assert_eq!(fields(&config(id, "alice")), ["clients[0].client_id"], "{id:?}");
        }
    }

    #[test]
    fn durations_are_bounded_so_no_deadline_overflows() {
        let text = MINIMAL.replace("[authorization_server]", "[authorization_server]\naccess_token_ttl = \"3651d\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.errors,
            [FieldError {
                field: "authorization_server.access_token_ttl".into(),
                reason: "\"3651d\" is longer than the 3650d this setting may be".into(),
            }]
        );
        let text = MINIMAL.replace("[authorization_server]", "[authorization_server]\nrefresh_token_ttl = \"3650d\"");
        assert_eq!(parse(&text).unwrap().authorization_server.refresh_token_ttl, Duration::from_secs(3650 * 86400));
        assert_eq!(fields(&with_server_line("keep_alive_timeout = \"100000000y\"")), ["server.keep_alive_timeout"]);
    }

    #[test]
    fn a_prefix_is_unique_per_host_and_route_hosts_are_allowed() {
        let route = |host: &str, prefix: &str| {
            let host = if host.is_empty() { String::new() } else { format!("host = \"{host}\"\n") };
            format!("\n[[routes]]\n{host}path_prefix = \"{prefix}\"\nupstream = \"static://\"\npublic = true\n")
        };
        let two = format!(
            "{MINIMAL}{}{}{}",
            route("", "/a/"),
            route("api.example.com", "/a/"),
            route("*.example.com", "/a/")
        );
        let c = parse(&two).unwrap();
        assert_eq!(c.routes[1].host, Some(HostPattern::Exact("api.example.com".into())));
        assert_eq!(c.routes[2].host, Some(HostPattern::Subdomains(".example.com".into())));
        assert!(
            c.server.allowed_hosts.contains(&HostPattern::Exact("api.example.com".into())),
            "{:?}",
            c.server.allowed_hosts
        );
        assert!(c.server.allowed_hosts.contains(&HostPattern::Subdomains(".example.com".into())));
        // Nested prefixes are noted per host only.
        let nested = format!("{two}{}", route("api.example.com", "/a/b/"));
        assert_eq!(parse(&nested).unwrap().route_notes().len(), 1);

        let clash = format!("{MINIMAL}{}{}", route("API.example.com", "/a/"), route("api.example.com", "/a/"));
        assert_eq!(fields(&clash), ["routes[1].path_prefix", "routes[1].name"]);
        assert_eq!(fields(&format!("{MINIMAL}{}", route("*", "/a/"))), ["routes[0].host"]);
        assert_eq!(fields(&format!("{MINIMAL}{}", route("a b", "/a/"))), ["routes[0].host"]);
    }

    #[test]
    fn key_rotation_is_off_by_default_and_no_faster_than_tokens_live() {
        let rotation = |line: &str| {
            let text = MINIMAL.replace("[authorization_server]", &format!("[authorization_server]\n{line}"));
            parse(&text).map(|c| c.authorization_server.key_rotation).map_err(|e| e.errors)
        };
        assert_eq!(rotation(""), Ok(None));
        assert_eq!(rotation("key_rotation = \"30d\""), Ok(Some(Duration::from_secs(30 * 86400))));
        let refused = Err(vec![FieldError {
            field: "authorization_server.key_rotation".into(),
            reason: "must be at least 1h, and longer than access_token_ttl".into(),
        }]);
        assert_eq!(rotation("key_rotation = \"59m\""), refused);
        assert_eq!(rotation("key_rotation = \"2h\"\naccess_token_ttl = \"2h\""), refused);
        assert_eq!(
            fields(&MINIMAL.replace("[authorization_server]", "[authorization_server]\nkey_rotation = \"0s\"")),
            ["authorization_server.key_rotation", "authorization_server.key_rotation"]
        );
    }

    #[test]
    fn allowed_hosts_default_to_the_issuers_and_are_checked() {
        let hosts = |text: &str| parse(text).unwrap().server.allowed_hosts;
        let loopback: Vec<HostPattern> =
            ["localhost", "127.0.0.1", "[::1]"].into_iter().map(|h| HostPattern::Exact(h.into())).collect();
        assert_eq!(hosts(MINIMAL), loopback);
        let public = MINIMAL.replace("http://127.0.0.1:8080", "https://Auth.Example.com:8443/base");
        assert_eq!(hosts(&public), [HostPattern::Exact("auth.example.com".into())]);
        assert_eq!(
            hosts(&with_server_line(r#"allowed_hosts = ["API.example.com", "*.apps.example.com", "*", "[::1]"]"#)),
            [
                HostPattern::Exact("api.example.com".into()),
                HostPattern::Subdomains(".apps.example.com".into()),
                HostPattern::Any,
                HostPattern::Exact("[::1]".into()),
            ]
        );
        for bad in ["api.example.com:443", "https://api.example.com", "*example.com", "a b", ""] {
            assert_eq!(
                fields(&with_server_line(&format!("allowed_hosts = [{bad:?}]"))),
                ["server.allowed_hosts[0]"],
                "{bad}"
            );
        }
        assert_eq!(fields(&with_server_line("allowed_hosts = []")), ["server.allowed_hosts"]);
        for zero in ["http2_max_concurrent_streams", "max_upstream_exchanges", "max_upstream_exchanges_per_connection"]
        {
            assert_eq!(fields(&with_server_line(&format!("{zero} = 0"))), [format!("server.{zero}")]);
        }
        assert_eq!(
            fields(&with_server_line("headers_with_underscores = \"allow\"")),
            ["server.headers_with_underscores"]
        );
        let exact = HostPattern::Exact("api.example.com".into());
        assert!(exact.matches(b"API.example.com:8080") && !exact.matches(b"api.example.com.evil"));
        let subdomains = HostPattern::Subdomains(".example.com".into());
        assert!(subdomains.matches(b"a.b.example.com") && !subdomains.matches(b"example.com"));
        assert!(HostPattern::Exact("[::1]".into()).matches(b"[::1]:80"));
        assert!(exact.matches(b"api.example.com.:443") && !exact.matches(b"api.example.com.."));
    }

    #[test]
    fn prefixes_must_mean_one_path_to_every_upstream() {
        let route = |name: &str, prefix: &str, more: &str| {
            format!(
                "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"static://\"\npublic = true\n{more}"
            )
        };
        for prefix in ["/a%2Fb/", "/a;b/", "/a%252e/", "/a%3Bb/"] {
            let err = parse(&format!("{MINIMAL}{}", route("x", prefix, ""))).unwrap_err();
            assert_eq!(
                err.errors,
                [FieldError {
                    field: "routes[0].path_prefix".into(),
                    reason: format!("{prefix:?} holds %2F, ';' or %25, which upstreams read in different ways"),
                }]
            );
        }
        let err = parse(&format!("{MINIMAL}{}{}", route("api", "/api/", ""), route("API", "/API/", ""))).unwrap_err();
        assert_eq!(
            err.errors,
            [FieldError {
                field: "routes[1].path_prefix".into(),
                reason: "\"/API/\" differs from route \"api\"'s prefix only in letter case".into(),
            }]
        );
        // The opt-ins parse, and default to off.
        let c = parse(&format!(
            "{MINIMAL}{}{}",
            route("files", "/files/", "allow_encoded_slashes = true\nallow_path_parameters = true\n"),
            route("plain", "/plain/", "")
        ))
        .unwrap();
        let flags: Vec<(bool, bool)> =
            c.routes.iter().map(|r| (r.allow_encoded_slashes, r.allow_path_parameters)).collect();
        assert_eq!(flags, [(true, true), (false, false)]);
    }
}
