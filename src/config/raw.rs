//! The configuration file as written: strict serde structs, unknown keys
//! refused, every value still as the operator typed it. `validate` turns
//! them into the typed `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) storage: RawStorage,
    pub(super) authorization_server: RawAuthorizationServer,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) clients: Vec<RawClient>,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) scopes: BTreeMap<String, RawScope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScope {
    pub(super) description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) realm: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) keep_alive_timeout: Option<String>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_form_body_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) drain_timeout: Option<String>,
    pub(super) shutdown_delay: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) allowed_hosts: Option<Vec<String>>,
    pub(super) headers_with_underscores: Option<String>,
    pub(super) stream_idle_timeout: Option<String>,
    pub(super) http2_max_concurrent_streams: Option<u32>,
    pub(super) max_upstream_exchanges: Option<usize>,
    pub(super) max_upstream_exchanges_per_connection: Option<usize>,
    pub(super) workers: Option<usize>,
    pub(super) pin_workers: Option<String>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) hsts: Option<bool>,
    pub(super) hsts_max_age: Option<String>,
    pub(super) watch_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { listen: "127.0.0.1:9090".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) url: String,
    pub(super) password_env: Option<String>,
    pub(super) max_connections: Option<u32>,
    pub(super) acquire_timeout: Option<String>,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            url: "sqlite://data/portcullis.db".into(),
            password_env: None,
            max_connections: None,
            acquire_timeout: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorizationServer {
    pub(super) issuer: String,
    pub(super) audience: Option<String>,
    pub(super) access_token_ttl: Option<String>,
    pub(super) refresh_token_ttl: Option<String>,
    pub(super) authorization_code_ttl: Option<String>,
    pub(super) token_format: Option<String>,
    pub(super) leeway: Option<String>,
    pub(super) session_ttl: Option<String>,
    pub(super) dedicated_host: Option<bool>,
    pub(super) key_rotation: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) ttl: Option<String>,
    pub(super) negative_ttl: Option<String>,
    pub(super) max_entries: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
    pub(super) access: Option<bool>,
    pub(super) audit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) client_id: String,
    pub(super) name: Option<String>,
    pub(super) client_secret_hash: Option<String>,
    pub(super) client_secret_env: Option<String>,
    #[serde(default)]
    pub(super) public: bool,
    #[serde(default)]
    pub(super) redirect_uris: Vec<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) grant_types: Vec<String>,
    pub(super) require_pkce: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) username: String,
    pub(super) password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) path_prefix: String,
    pub(super) upstream: Upstreams,
    #[serde(default)]
    pub(super) public: bool,
    pub(super) scopes: Option<BTreeMap<String, Vec<String>>>,
    pub(super) allow_query_token: Option<bool>,
    pub(super) allow_body_token: Option<bool>,
    pub(super) forward_bearer: Option<bool>,
    pub(super) preserve_host: Option<bool>,
    pub(super) allow_encoded_slashes: Option<bool>,
    pub(super) allow_path_parameters: Option<bool>,
    pub(super) timeout: Option<String>,
    pub(super) ca: Option<String>,
    pub(super) tls_skip_verify: Option<bool>,
    pub(super) host: Option<String>,
    pub(super) strip_prefix: Option<bool>,
    pub(super) websockets: Option<bool>,
    pub(super) idle_timeout: Option<String>,
    pub(super) ejection_time: Option<String>,
    pub(super) health_path: Option<String>,
    pub(super) health_interval: Option<String>,
    pub(super) resolve_interval: Option<String>,
}

/// A route's `upstream`: one URL, or a list of instances.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Upstreams {
    One(String),
    Many(Vec<String>),
}
