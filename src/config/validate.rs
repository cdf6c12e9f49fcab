//! From the file as written (`raw`) to the typed `Config`: every value
//! parsed, every reference checked, and every problem collected as a
//! `field: reason` line rather than the first one returned, so an operator
//! fixes the file in one pass. Certificate files are read through `tls`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::*;
use super::*;
use crate::http::net::IpNet;
use crate::scope::{ScopeSet, is_valid_scope_token};
use crate::tls::upstream::{Trust, UpstreamTls};

/// Turns a TOML/serde error into a field error naming the line (serde's
/// message names the key itself, e.g. "unknown field `ttll`").
pub(super) fn toml_error(text: &str, e: &toml::de::Error) -> FieldError {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let message = e.message().trim().to_string();
    FieldError {
        field: match line {
            Some(l) => format!("line {l}"),
            None => "(file)".into(),
        },
        reason: message,
    }
}

pub(super) struct Validator {
    pub(super) errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, reason: impl fmt::Display) {
        self.errors.push(FieldError { field: field.into(), reason: reason.to_string() });
    }

    fn duration(&mut self, field: &str, value: Option<&str>, default: &str) -> Duration {
        match self.parse_duration(field, value.unwrap_or(default)) {
            Some(d) if d.is_zero() => {
                self.err(field, "must be longer than zero");
                Duration::from_secs(1)
            }
            Some(d) => d,
            None => Duration::from_secs(1),
        }
    }

    /// A duration where zero means "none" and is the default.
    fn duration_or_zero(&mut self, field: &str, value: Option<&str>) -> Duration {
        self.parse_duration(field, value.unwrap_or("0s")).unwrap_or(Duration::ZERO)
    }

    /// `text` as a duration, or `None` with the error reported. Ten years
    /// at most: deadlines are the clock plus a duration, and no setting
    /// may make that overflow.
    fn parse_duration(&mut self, field: &str, text: &str) -> Option<Duration> {
        const MAX: Duration = Duration::from_secs(3650 * 24 * 3600);
        match humantime::parse_duration(text) {
            Ok(d) if d <= MAX => Some(d),
            Ok(_) => {
                self.err(field, format!("{text:?} is longer than the 3650d this setting may be"));
                None
            }
            Err(e) => {
                self.err(field, format!("{text:?} is not a duration like \"30s\" or \"15m\": {e}"));
                None
            }
        }
    }

    fn socket_addr(&mut self, field: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.err(field, format!("{value:?} is not an address like \"127.0.0.1:8080\""));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    pub(super) fn config(&mut self, raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Config {
        let routes_empty = raw.routes.is_empty();
        let mut server = self.server(raw.server);
        let admin = AdminConfig { listen: self.socket_addr("admin.listen", &raw.admin.listen) };
        if admin.listen == server.listen && admin.listen.port() != 0 {
            self.err("admin.listen", "must differ from server.listen: metrics never share the public listener");
        }
        let storage = self.storage(raw.storage, env);
        let authorization_server = self.authorization_server(raw.authorization_server);
        if server.allowed_hosts.is_empty() {
            if authorization_server.dedicated_host && !routes_empty {
                self.err(
                    "server.allowed_hosts",
                    "must name the hosts of the proxied APIs when authorization_server.dedicated_host keeps the issuer's host for the authorization server alone",
                );
            }
            server.allowed_hosts = default_allowed_hosts(&authorization_server.issuer);
        }
        let cache = CacheConfig {
            ttl: self.duration("cache.ttl", raw.cache.ttl.as_deref(), "30s"),
            negative_ttl: self.duration("cache.negative_ttl", raw.cache.negative_ttl.as_deref(), "5s"),
            max_entries: raw.cache.max_entries.unwrap_or(100_000),
        };
        if cache.max_entries == 0 {
            self.err("cache.max_entries", "must be at least 1");
        }
        let log = self.log(raw.log);
        let clients = self.clients(raw.clients, env);
        let users = self.users(raw.users, &clients);
        let routes = self.routes(raw.routes, &authorization_server);
        for r in &routes {
            let Some(host) = &r.host else { continue };
            if authorization_server.dedicated_host && host.matches(authorization_server.issuer_host.as_bytes()) {
                self.err(
                    format!("route {:?}", r.name),
                    "its host is the issuer's, which authorization_server.dedicated_host keeps for the authorization server alone",
                );
            }
            // A host a route names is one the operator means to serve.
            if !server.allowed_hosts.contains(host) {
                server.allowed_hosts.push(host.clone());
            }
        }
        let mut scope_descriptions = BTreeMap::new();
        for (name, scope) in raw.scopes {
            if !is_valid_scope_token(&name) {
                self.err(format!("scopes.{name}"), "is not a valid scope name (RFC 6749 §3.3)");
            }
            if scope.description.trim().is_empty() {
                self.err(format!("scopes.{name}.description"), "must not be empty");
            }
            scope_descriptions.insert(name, scope.description);
        }
        Config { server, admin, storage, authorization_server, cache, log, clients, users, routes, scope_descriptions }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let listen = self.socket_addr("server.listen", &raw.listen);
        let realm = raw.realm.unwrap_or_else(|| "portcullis".into());
        if realm.is_empty() || realm.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            self.err("server.realm", "must be non-empty printable text without quotes or backslashes");
        }
        let max_header_bytes = raw.max_header_bytes.unwrap_or(16 * 1024);
        if !(8192..=1024 * 1024).contains(&max_header_bytes) {
            self.err("server.max_header_bytes", "must be between 8192 and 1048576");
        }
        let max_form_body_bytes = raw.max_form_body_bytes.unwrap_or(64 * 1024);
        if !(1024..=16 * 1024 * 1024).contains(&max_form_body_bytes) {
            self.err("server.max_form_body_bytes", "must be between 1024 and 16777216");
        }
        let max_connections = raw.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            self.err("server.max_connections", "must be at least 1");
        }
        let mut trusted_proxies = Vec::new();
        for (i, p) in raw.trusted_proxies.iter().enumerate() {
            match p.parse::<IpNet>() {
                Ok(net) => trusted_proxies.push(net),
                Err(reason) => self.err(format!("server.trusted_proxies[{i}]"), reason),
            }
        }
        let mut allowed_hosts = Vec::new();
        for (i, h) in raw.allowed_hosts.iter().flatten().enumerate() {
            match HostPattern::parse(h) {
                Ok(p) => allowed_hosts.push(p),
                Err(reason) => self.err(format!("server.allowed_hosts[{i}]"), reason),
            }
        }
        if raw.allowed_hosts.as_ref().is_some_and(Vec::is_empty) {
            self.err("server.allowed_hosts", "must name at least one host (\"*\" for any)");
        }
        let headers_with_underscores = match raw.headers_with_underscores.as_deref().unwrap_or("drop") {
            "drop" => UnderscoreHeaders::Drop,
            "refuse" => UnderscoreHeaders::Refuse,
            "keep" => UnderscoreHeaders::Keep,
            other => {
                self.err(
                    "server.headers_with_underscores",
                    format!("{other:?}: must be \"drop\", \"refuse\" or \"keep\""),
                );
                UnderscoreHeaders::Drop
            }
        };
        let http2_max_concurrent_streams = raw.http2_max_concurrent_streams.unwrap_or(128);
        if http2_max_concurrent_streams == 0 {
            self.err("server.http2_max_concurrent_streams", "must be at least 1");
        }
        if raw.max_upstream_exchanges == Some(0) {
            self.err("server.max_upstream_exchanges", "must be at least 1");
        }
        let max_upstream_exchanges_per_connection = raw.max_upstream_exchanges_per_connection.unwrap_or(32);
        if max_upstream_exchanges_per_connection == 0 {
            self.err("server.max_upstream_exchanges_per_connection", "must be at least 1");
        }
        ServerConfig {
            listen,
            realm,
            allowed_hosts,
            headers_with_underscores,
            stream_idle_timeout: self.duration("server.stream_idle_timeout", raw.stream_idle_timeout.as_deref(), "30s"),
            http2_max_concurrent_streams,
            max_upstream_exchanges: raw.max_upstream_exchanges,
            max_upstream_exchanges_per_connection,
            header_read_timeout: self.duration("server.header_read_timeout", raw.header_read_timeout.as_deref(), "10s"),
            keep_alive_timeout: self.duration("server.keep_alive_timeout", raw.keep_alive_timeout.as_deref(), "75s"),
            max_header_bytes,
            max_form_body_bytes,
            max_connections,
            drain_timeout: self.duration("server.drain_timeout", raw.drain_timeout.as_deref(), "30s"),
            shutdown_delay: self.duration_or_zero("server.shutdown_delay", raw.shutdown_delay.as_deref()),
            trusted_proxies,
            workers: raw.workers.unwrap_or(0),
            pin_workers: match raw.pin_workers.as_deref().unwrap_or("auto") {
                "auto" => PinWorkers::Auto,
                "on" => PinWorkers::On,
                "off" => PinWorkers::Off,
                other => {
                    self.err("server.pin_workers", format!("{other:?}: must be \"auto\", \"on\" or \"off\""));
                    PinWorkers::Auto
                }
            },
            tls: raw.tls.map(|t| self.tls(t)),
        }
    }

    fn tls(&mut self, raw: RawTls) -> TlsConfig {
        let cert = std::path::PathBuf::from(&raw.cert);
        let key = std::path::PathBuf::from(&raw.key);
        // Loaded now, so a missing, unreadable or mismatched pair is a
        // config error before anything binds.
        if let Err(e) = crate::tls::listener::load_certified_key(&cert, &key) {
            self.err(format!("server.tls.{}", e.file()), e.to_string());
        }
        let hsts_max_age = match raw.hsts {
            Some(false) => None,
            _ => Some(self.duration("server.tls.hsts_max_age", raw.hsts_max_age.as_deref(), "365d")),
        };
        TlsConfig {
            cert,
            key,
            hsts_max_age,
            watch_interval: self.duration("server.tls.watch_interval", raw.watch_interval.as_deref(), "10s"),
        }
    }

    fn storage(&mut self, raw: RawStorage, env: &dyn Fn(&str) -> Option<String>) -> StorageConfig {
        let postgres = raw.url.starts_with("postgres://") || raw.url.starts_with("postgresql://");
        if !raw.url.starts_with("sqlite:") && !postgres {
            // The URL is not echoed: it may hold a password.
            self.err(
                "storage.url",
                "must be a sqlite: URL (\"sqlite://data/portcullis.db\") or a postgres:// URL \
                 (\"postgres://portcullis@db.internal:5432/portcullis\")",
            );
        }
        if !postgres {
            for (key, set) in [
                ("password_env", raw.password_env.is_some()),
                ("max_connections", raw.max_connections.is_some()),
                ("acquire_timeout", raw.acquire_timeout.is_some()),
            ] {
                if set {
                    self.err(format!("storage.{key}"), "applies only to a postgres:// URL");
                }
            }
        }
        let max_connections = raw.max_connections.unwrap_or(8);
        if !(2..=1000).contains(&max_connections) {
            self.err("storage.max_connections", "must be 2 to 1000 (one is kept by the revocation feed)");
        }
        let acquire_timeout = self.duration("storage.acquire_timeout", raw.acquire_timeout.as_deref(), "5s");
        let mut url = raw.url;
        if let (true, Some(var)) = (postgres, raw.password_env) {
            match env(&var) {
                None => self.err("storage.password_env", format!("the environment variable {var} is not set")),
                Some(password) => match with_password(&url, &password) {
                    Ok(with) => url = with,
                    Err(reason) => self.err("storage.url", reason),
                },
            }
        }
        StorageConfig { url, max_connections, acquire_timeout }
    }

    fn authorization_server(&mut self, raw: RawAuthorizationServer) -> AuthorizationServerConfig {
        let issuer = raw.issuer.clone();
        let mut issuer_path = String::new();
        match issuer.parse::<http::Uri>() {
            Ok(uri) => {
                let scheme_ok = matches!(uri.scheme_str(), Some("https"))
                    || (uri.scheme_str() == Some("http") && uri.host().is_some_and(is_loopback_host));
                if !scheme_ok {
                    self.err(
                        "authorization_server.issuer",
                        "must be an https:// URL (http:// only for a loopback host such as 127.0.0.1 or localhost)",
                    );
                }
                if uri.query().is_some() || issuer.contains('#') {
                    self.err("authorization_server.issuer", "must not have a query or fragment (RFC 8414 §2)");
                }
                if issuer.ends_with('/') {
                    self.err("authorization_server.issuer", "must not end with a slash");
                }
                issuer_path = uri.path().trim_end_matches('/').to_string();
            }
            Err(_) => self.err("authorization_server.issuer", format!("{issuer:?} is not a URL")),
        }
        // The scheme as http parses it: `HTTPS://` is https too.
        let issuer_uri = issuer.parse::<http::Uri>().ok();
        let audience = raw.audience.unwrap_or_else(|| issuer.clone());
        if audience.is_empty() {
            self.err("authorization_server.audience", "must not be empty");
        }
        let token_format = match raw.token_format.as_deref().unwrap_or("jwt") {
            "jwt" => TokenFormat::Jwt,
            "opaque" => TokenFormat::Opaque,
            other => {
                self.err("authorization_server.token_format", format!("{other:?}: must be \"jwt\" or \"opaque\""));
                TokenFormat::Jwt
            }
        };
        let code_ttl =
            self.duration("authorization_server.authorization_code_ttl", raw.authorization_code_ttl.as_deref(), "60s");
        if code_ttl > Duration::from_secs(600) {
            self.err("authorization_server.authorization_code_ttl", "must be at most 10m (OAuth 2.1 §4.1.2)");
        }
        let leeway = self.duration("authorization_server.leeway", raw.leeway.as_deref(), "5s");
        if leeway > Duration::from_secs(300) {
            self.err("authorization_server.leeway", "must be at most 5m");
        }
        let access_token_ttl =
            self.duration("authorization_server.access_token_ttl", raw.access_token_ttl.as_deref(), "15m");
        let key_rotation =
            raw.key_rotation.as_deref().map(|r| self.duration("authorization_server.key_rotation", Some(r), r));
        // Every retired key stays published for a token's life: rotating
        // faster than tokens live, or than hourly, only grows the JWKS.
        if key_rotation.is_some_and(|r| r < Duration::from_secs(3600) || r <= access_token_ttl) {
            self.err("authorization_server.key_rotation", "must be at least 1h, and longer than access_token_ttl");
        }
        AuthorizationServerConfig {
            issuer,
            issuer_path,
            audience,
            access_token_ttl,
            refresh_token_ttl: self.duration(
                "authorization_server.refresh_token_ttl",
                raw.refresh_token_ttl.as_deref(),
                "30d",
            ),
            authorization_code_ttl: code_ttl,
            token_format,
            leeway,
            session_ttl: self.duration("authorization_server.session_ttl", raw.session_ttl.as_deref(), "8h"),
            secure_cookies: issuer_uri.as_ref().is_some_and(|u| u.scheme_str() == Some("https")),
            issuer_host: issuer_uri.as_ref().and_then(|u| u.host().map(str::to_ascii_lowercase)).unwrap_or_default(),
            dedicated_host: raw.dedicated_host.unwrap_or(false),
            key_rotation,
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.err("log.format", format!("{other:?}: must be \"text\" or \"json\""));
                LogFormat::Text
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.err(
                "log.level",
                format!("{level:?} is not a level or filter such as \"info\" or \"portcullis=debug\""),
            );
        }
        let audit = match raw.audit.as_deref() {
            None | Some("stderr") => AuditSink::Stderr,
            Some("off") => AuditSink::Off,
            Some("") => {
                self.err("log.audit", "must be \"stderr\", \"off\" or a file path");
                AuditSink::Off
            }
            Some(path) => AuditSink::File(std::path::PathBuf::from(path)),
        };
        LogConfig { format, level, access: raw.access.unwrap_or(true), audit }
    }

    fn scopes(&mut self, field: &str, list: &[String]) -> ScopeSet {
        for s in list {
            if !is_valid_scope_token(s) {
                self.err(
                    field,
                    format!(
                        "{s:?} is not a valid scope (RFC 6749 §3.3: printable ASCII, no spaces, quotes or backslashes)"
                    ),
                );
            }
        }
        ScopeSet::from_iter(list.iter().map(String::as_str))
    }

    fn clients(&mut self, raw: Vec<RawClient>, env: &dyn Fn(&str) -> Option<String>) -> Vec<ClientConfig> {
        let mut seen = HashSet::new();
        let mut clients = Vec::new();
        for (i, c) in raw.into_iter().enumerate() {
            let at = format!("clients[{i}]");
            if c.client_id.is_empty() || !c.client_id.chars().all(|ch| ch.is_ascii_graphic() && ch != ':') {
                self.err(format!("{at}.client_id"), "must be non-empty printable ASCII without spaces or ':'");
            }
            if !seen.insert(c.client_id.clone()) {
                self.err(format!("{at}.client_id"), format!("{:?} is registered twice", c.client_id));
            }
            let secret = match (c.client_secret_hash, c.client_secret_env, c.public) {
                (Some(hash), None, false) => {
                    if argon2::PasswordHash::new(&hash).is_err() {
                        self.err(
                            format!("{at}.client_secret_hash"),
                            "is not a PHC string (make one with `portcullis hash-password`)",
                        );
                    }
                    ClientSecret::Hash(hash)
                }
                (None, Some(var), false) => match env(&var) {
                    Some(secret) if !secret.is_empty() => ClientSecret::Plain(secret),
                    _ => {
                        self.err(
                            format!("{at}.client_secret_env"),
                            format!("environment variable {var} is not set or empty"),
                        );
                        ClientSecret::None
                    }
                },
                (None, None, true) => ClientSecret::None,
                (None, None, false) => {
                    self.err(at.clone(), "needs client_secret_hash or client_secret_env (or public = true)");
                    ClientSecret::None
                }
                (_, _, true) => {
                    self.err(
                        at.clone(),
                        "a public client has no secret: remove client_secret_hash / client_secret_env",
                    );
                    ClientSecret::None
                }
                (Some(_), Some(_), false) => {
                    self.err(at.clone(), "set one of client_secret_hash and client_secret_env, not both");
                    ClientSecret::None
                }
            };
            for (j, uri) in c.redirect_uris.iter().enumerate() {
                if let Err(reason) = check_redirect_uri(uri) {
                    self.err(format!("{at}.redirect_uris[{j}]"), reason);
                }
            }
            let scopes = self.scopes(&format!("{at}.scopes"), &c.scopes);
            let mut grant_types = Vec::new();
            for (j, g) in c.grant_types.iter().enumerate() {
                match GrantType::parse(g) {
                    Some(grant) if !grant_types.contains(&grant) => grant_types.push(grant),
                    Some(_) => self.err(format!("{at}.grant_types[{j}]"), format!("{g:?} is listed twice")),
                    None => self.err(
                        format!("{at}.grant_types[{j}]"),
                        format!("{g:?}: must be client_credentials, authorization_code or refresh_token"),
                    ),
                }
            }
            if grant_types.is_empty() {
                self.err(format!("{at}.grant_types"), "must list at least one grant type");
            }
            if c.public && grant_types.contains(&GrantType::ClientCredentials) {
                self.err(
                    format!("{at}.grant_types"),
                    "client_credentials is only for confidential clients (OAuth 2.1 §4.2)",
                );
            }
            if grant_types.contains(&GrantType::AuthorizationCode) && c.redirect_uris.is_empty() {
                self.err(format!("{at}.redirect_uris"), "authorization_code needs at least one redirect URI");
            }
            if c.public && c.require_pkce == Some(false) {
                self.err(format!("{at}.require_pkce"), "PKCE is mandatory for public clients (OAuth 2.1 §4.1.2.1)");
            }
            clients.push(ClientConfig {
                name: c.name.unwrap_or_else(|| c.client_id.clone()),
                client_id: c.client_id,
                secret,
                redirect_uris: c.redirect_uris,
                scopes,
                grant_types,
                public: c.public,
                require_pkce: c.public || c.require_pkce.unwrap_or(true),
            });
        }
        clients
    }

    fn users(&mut self, raw: Vec<RawUser>, clients: &[ClientConfig]) -> Vec<UserConfig> {
        let mut seen = HashSet::new();
        let mut users = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let at = format!("users[{i}]");
            if u.username.is_empty() || u.username.chars().any(|c| c.is_control()) {
                self.err(format!("{at}.username"), "must be non-empty printable text");
            } else if u.username.trim() != u.username {
                // Upstreams trim header values: "alice " would reach them as
                // the subject "alice", which may be someone else's.
                self.err(format!("{at}.username"), "must not start or end with whitespace");
            }
            if !seen.insert(u.username.clone()) {
                self.err(format!("{at}.username"), format!("{:?} is listed twice", u.username));
            }
            // RFC 9700 §4.15.1: a client's `sub` must never be taken for a user's.
            if clients.iter().any(|c| same_subject(&c.client_id, &u.username)) {
                self.err(
                    format!("{at}.username"),
                    format!("{:?} is also a client_id; a user may not share a client's subject", u.username),
                );
            }
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                self.err(
                    format!("{at}.password_hash"),
                    "is not a PHC string (make one with `portcullis hash-password`)",
                );
            }
            users.push(UserConfig { username: u.username, password_hash: u.password_hash });
        }
        users
    }

    fn routes(&mut self, raw: Vec<RawRoute>, authz: &AuthorizationServerConfig) -> Vec<RouteConfig> {
        let mut routes: Vec<RouteConfig> = Vec::new();
        // One client configuration per trust setting, shared by the routes
        // that have it (and so their TLS session cache).
        let mut clients: std::collections::HashMap<Trust, UpstreamTls> = Default::default();
        for (i, r) in raw.into_iter().enumerate() {
            let at = format!("routes[{i}]");
            let path_prefix = match crate::http::path::normalize(&r.path_prefix) {
                Ok(p) if r.path_prefix.starts_with('/') && !r.path_prefix.contains(['?', '#']) => {
                    if p.ambiguities.any() {
                        self.err(
                            format!("{at}.path_prefix"),
                            format!(
                                "{:?} holds %2F, ';' or %25, which upstreams read in different ways",
                                r.path_prefix
                            ),
                        );
                    }
                    p.path.trim_end_matches('/').to_string()
                }
                _ => {
                    self.err(
                        format!("{at}.path_prefix"),
                        format!("{:?} is not an absolute normalised path like \"/calendar/\"", r.path_prefix),
                    );
                    String::new()
                }
            };
            let host = match r.host.as_deref().map(HostPattern::parse) {
                None => None,
                Some(Ok(HostPattern::Any)) => {
                    self.err(format!("{at}.host"), "\"*\" is every host: leave host out instead");
                    None
                }
                Some(Ok(pattern)) => Some(pattern),
                Some(Err(reason)) => {
                    self.err(format!("{at}.host"), reason);
                    None
                }
            };
            // Prefixes compete only among the routes of one host.
            let same_host: Vec<&RouteConfig> = routes.iter().filter(|o| o.host == host).collect();
            if let Some(other) = same_host.iter().find(|o| o.path_prefix == path_prefix) {
                self.err(
                    format!("{at}.path_prefix"),
                    format!("{:?} is already the prefix of route {:?}", r.path_prefix, other.name),
                );
            } else if let Some(other) = same_host.iter().find(|o| o.path_prefix.eq_ignore_ascii_case(&path_prefix)) {
                // Upstreams that route without regard to case (Express,
                // ASP.NET) could not tell the two apart; the gateway refuses
                // a path whose case-blind reading is another route's.
                self.err(
                    format!("{at}.path_prefix"),
                    format!("{:?} differs from route {:?}'s prefix only in letter case", r.path_prefix, other.name),
                );
            }
            // Unnamed, a route is named by where it answers.
            let name = r.name.unwrap_or_else(|| match &r.host {
                Some(host) => format!("{}{}", host.to_ascii_lowercase(), r.path_prefix),
                None => r.path_prefix.clone(),
            });
            if routes.iter().any(|o| o.name == name) {
                self.err(format!("{at}.name"), format!("{name:?} names two routes"));
            }
            let (upstream, instances) = self.upstreams(&at, &r.upstream);
            let resolve_interval = self.resolve_interval(&at, r.resolve_interval, &upstream, &instances);
            let balanced = instances.len() > 1 || resolve_interval.is_some();
            let scopes = match (r.public, r.scopes) {
                (true, None) => None,
                (true, Some(_)) => {
                    self.err(
                        format!("{at}.scopes"),
                        "a public route needs no scopes; remove the table or set public = false",
                    );
                    None
                }
                (false, None) => {
                    self.err(
                        format!("{at}.scopes"),
                        "a protected route needs a scopes table (method -> scopes), or public = true",
                    );
                    None
                }
                (false, Some(table)) => Some(self.scope_rule(&at, table)),
            };
            if r.public && (r.allow_query_token.is_some() || r.allow_body_token.is_some() || r.forward_bearer.is_some())
            {
                self.err(
                    at.clone(),
                    "allow_query_token, allow_body_token and forward_bearer apply only to protected routes",
                );
            }
            let upstream_tls = self.upstream_tls(&at, &upstream, r.ca, r.tls_skip_verify, &mut clients);
            routes.push(RouteConfig {
                name,
                host,
                path_prefix,
                strip_prefix: r.strip_prefix.unwrap_or(false),
                upstream,
                upstream_tls,
                scopes,
                allow_query_token: r.allow_query_token.unwrap_or(true),
                allow_body_token: r.allow_body_token.unwrap_or(true),
                forward_bearer: r.forward_bearer.unwrap_or(false),
                preserve_host: r.preserve_host.unwrap_or(false),
                allow_encoded_slashes: r.allow_encoded_slashes.unwrap_or(false),
                allow_path_parameters: r.allow_path_parameters.unwrap_or(false),
                timeout: self.duration(&format!("{at}.timeout"), r.timeout.as_deref(), "30s"),
                instances,
                ejection_time: self.duration(&format!("{at}.ejection_time"), r.ejection_time.as_deref(), "5s"),
                health_check: self.health_check(&at, r.health_path, r.health_interval, balanced),
                resolve_interval,
                websockets: r.websockets.unwrap_or(true),
                idle_timeout: self.duration(&format!("{at}.idle_timeout"), r.idle_timeout.as_deref(), "5m"),
            });
        }
        for r in &routes {
            let base = &authz.issuer_path;
            if r.path_prefix.is_empty() && base.is_empty() {
                continue; // a catch-all route; the endpoints below are matched first
            }
            for endpoint in endpoints::Endpoint::ALL {
                if endpoint.path(base) == r.path_prefix {
                    self.err(
                        format!("route {:?}", r.name),
                        format!("path_prefix {:?} is an authorization server endpoint", r.path_prefix),
                    );
                }
            }
        }
        routes
    }

    /// A route's upstream, and the authorities of its instances: a list
    /// must name servers that differ only in their authority (one scheme,
    /// one base path), each once.
    fn upstreams(&mut self, at: &str, raw: &super::raw::Upstreams) -> (Upstream, Vec<http::uri::Authority>) {
        let field = format!("{at}.upstream");
        let urls: Vec<&str> = match raw {
            super::raw::Upstreams::One(url) => vec![url.as_str()],
            super::raw::Upstreams::Many(urls) => urls.iter().map(String::as_str).collect(),
        };
        let mut parsed = Vec::new();
        for url in &urls {
            match parse_upstream(url) {
                Ok(u) => parsed.push(u),
                Err(reason) => self.err(&field, reason),
            }
        }
        let Some(first) = parsed.first().cloned() else {
            if urls.is_empty() {
                self.err(&field, "an empty list: name at least one upstream");
            }
            return (Upstream::Static, Vec::new());
        };
        let mut instances = Vec::new();
        for u in &parsed {
            match (u, &first) {
                (
                    Upstream::Http { scheme, authority, base_path, http2 },
                    Upstream::Http { scheme: s0, base_path: b0, http2: h0, .. },
                ) if scheme == s0 && base_path == b0 && http2 == h0 => {
                    if instances.contains(authority) {
                        self.err(&field, format!("{:?} is listed twice", authority.as_str()));
                    }
                    instances.push(authority.clone());
                }
                (Upstream::Static, Upstream::Static) if parsed.len() == 1 => {}
                _ => {
                    self.err(
                        &field,
                        "the instances of a route differ only in host and port: one scheme, one base path",
                    );
                    break;
                }
            }
        }
        (first, instances)
    }

    /// How often a route resolves its upstreams' host names itself: only
    /// for upstream servers, and only where one is named by a host name.
    fn resolve_interval(
        &mut self,
        at: &str,
        value: Option<String>,
        upstream: &Upstream,
        instances: &[http::uri::Authority],
    ) -> Option<Duration> {
        let field = format!("{at}.resolve_interval");
        let value = value?;
        let interval = self.duration(&field, Some(&value), "5s");
        if !matches!(upstream, Upstream::Http { .. }) {
            self.err(&field, "applies to an upstream server, not static://");
            return None;
        }
        let named = |a: &http::uri::Authority| {
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            host.parse::<std::net::IpAddr>().is_err()
        };
        if !instances.iter().any(named) {
            self.err(&field, "no upstream of this route is named by a host name: there is nothing to resolve");
            return None;
        }
        Some(interval)
    }

    /// A balanced route's health probe: a path of the upstream's, asked
    /// for every `interval` (5 s by default).
    fn health_check(
        &mut self,
        at: &str,
        path: Option<String>,
        interval: Option<String>,
        balanced: bool,
    ) -> Option<(http::uri::PathAndQuery, Duration)> {
        let field = format!("{at}.health_path");
        let Some(path) = path else {
            if interval.is_some() {
                self.err(format!("{at}.health_interval"), "needs health_path");
            }
            return None;
        };
        if !balanced {
            self.err(
                &field,
                "applies to a route with several upstream instances (upstream = [...], or resolve_interval)",
            );
            return None;
        }
        let interval = self.duration(&format!("{at}.health_interval"), interval.as_deref(), "5s");
        match http::uri::PathAndQuery::try_from(path.as_str()) {
            Ok(p) if path.starts_with('/') => Some((p, interval)),
            _ => {
                self.err(&field, format!("{path:?} is not a path like \"/healthz\""));
                None
            }
        }
    }

    /// The trust setting of a route's upstream: `ca` and `tls_skip_verify`
    /// only mean something for `https://`, and not together.
    fn upstream_tls(
        &mut self,
        at: &str,
        upstream: &Upstream,
        ca: Option<String>,
        skip_verify: Option<bool>,
        clients: &mut std::collections::HashMap<Trust, UpstreamTls>,
    ) -> Option<UpstreamTls> {
        let https = matches!(upstream, Upstream::Http { scheme, .. } if *scheme == http::uri::Scheme::HTTPS);
        if !https {
            if ca.is_some() {
                self.err(format!("{at}.ca"), "applies only to an https:// upstream");
            }
            if skip_verify.is_some() {
                self.err(format!("{at}.tls_skip_verify"), "applies only to an https:// upstream");
            }
            return None;
        }
        let trust = match (ca, skip_verify.unwrap_or(false)) {
            (Some(_), true) => {
                self.err(
                    format!("{at}.tls_skip_verify"),
                    "cannot be combined with ca: a route either verifies its upstream against ca or not at all",
                );
                return None;
            }
            (Some(path), false) => Trust::Ca(std::path::PathBuf::from(path)),
            (None, true) => Trust::SkipVerify,
            (None, false) => Trust::System,
        };
        if let Some(tls) = clients.get(&trust) {
            return Some(tls.clone());
        }
        match UpstreamTls::new(trust.clone()) {
            Ok(tls) => {
                clients.insert(trust, tls.clone());
                Some(tls)
            }
            Err(e) => {
                let field = if matches!(trust, Trust::Ca(_)) { "ca" } else { "upstream" };
                self.err(format!("{at}.{field}"), e.to_string());
                None
            }
        }
    }

    fn scope_rule(&mut self, at: &str, table: BTreeMap<String, Vec<String>>) -> ScopeRule {
        let mut rule = ScopeRule { methods: BTreeMap::new(), other: None };
        if table.is_empty() {
            self.err(format!("{at}.scopes"), "is empty, so every method would be refused; name methods or \"*\"");
        }
        for (method, list) in table {
            let field = format!("{at}.scopes.{method}");
            let set = self.scopes(&field, &list);
            if method == "*" {
                rule.other = Some(set);
            } else if http::Method::from_bytes(method.as_bytes()).is_ok()
                && method.bytes().all(|b| b.is_ascii_uppercase())
            {
                rule.methods.insert(method, set);
            } else {
                self.err(field, "is not an upper-case HTTP method name or \"*\"");
            }
        }
        rule
    }
}

/// `server.allowed_hosts` when the file names none: the issuer's host, and
/// when that is a loopback address, every loopback name (a developer's
/// `curl localhost:8080` is as good as `127.0.0.1:8080`).
fn default_allowed_hosts(issuer: &str) -> Vec<HostPattern> {
    let Some(host) = issuer.parse::<http::Uri>().ok().and_then(|u| u.host().map(str::to_ascii_lowercase)) else {
        return Vec::new();
    };
    if is_loopback_host(&host) {
        ["localhost", "127.0.0.1", "[::1]"].into_iter().map(|h| HostPattern::Exact(h.into())).collect()
    } else {
        vec![HostPattern::Exact(host)]
    }
}

/// Why a route's `upstream` is not one; each names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum UpstreamUrlError {
    #[error("{0:?} is not a URL like \"http://127.0.0.1:9001\"")]
    NotAUrl(String),
    #[error(
        "{0:?} must start with http://, https:// or h2c:// (HTTP/2 without TLS), or be static:// for the built-in demo API"
    )]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} must not carry credentials")]
    Credentials(String),
    #[error("{0:?} must not have a query")]
    Query(String),
}

pub(super) fn parse_upstream(s: &str) -> Result<Upstream, UpstreamUrlError> {
    if s == "static://" || s == "static://demo" {
        return Ok(Upstream::Static);
    }
    let uri: http::Uri = s.parse().map_err(|_| UpstreamUrlError::NotAUrl(s.to_string()))?;
    let (scheme, http2) = match uri.scheme_str() {
        Some("http") => (http::uri::Scheme::HTTP, false),
        Some("https") => (http::uri::Scheme::HTTPS, false),
        // Traefik's name for HTTP/2 with prior knowledge.
        Some("h2c") => (http::uri::Scheme::HTTP, true),
        _ => return Err(UpstreamUrlError::Scheme(s.to_string())),
    };
    let authority = uri.authority().cloned().ok_or_else(|| UpstreamUrlError::NoHost(s.to_string()))?;
    if authority.as_str().contains('@') {
        return Err(UpstreamUrlError::Credentials(s.to_string()));
    }
    if uri.query().is_some() {
        return Err(UpstreamUrlError::Query(s.to_string()));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Upstream::Http { scheme, authority, base_path, http2 })
}

/// `postgres://user@host/db` with `password` put in (percent-encoded), for
/// `storage.password_env`: the file names the user, the environment holds
/// the secret.
fn with_password(url: &str, password: &str) -> Result<String, &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("is not a URL")?;
    let (userinfo, host) = match rest.split_once('@') {
        Some((userinfo, host)) if !userinfo.contains('/') => (userinfo, host),
        _ => return Err("names no user (postgres://USER@host/db) for password_env's password"),
    };
    if userinfo.contains(':') {
        return Err("has a password already; with password_env, leave it out of the URL");
    }
    let encoded = percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
    Ok(format!("{scheme}://{userinfo}:{encoded}@{host}"))
}
