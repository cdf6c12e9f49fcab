//! Operator commands that change the store while the gateway runs:
//! registering clients (`portcullis clients …`), withdrawing users'
//! consents (`portcullis consents …`) and rotating the signing keys
//! (`portcullis keys …`). Each change is announced to the running
//! replicas (PostgreSQL); a gateway on SQLite sees a changed client within
//! `oauth::clients::REGISTERED_TTL` and a new key within `auth::keys::REREAD`.
//!
//! A client secret is generated here, shown once, and only its argon2 hash
//! is stored.

use std::fmt::Write as _;

use std::time::{Duration, UNIX_EPOCH};

use crate::auth::clock::{Clock as _, SystemClock};
use crate::auth::keys::{self, KeyRing};
use crate::auth::tokens::random_token;
use crate::config::{Config, GrantType, StorageConfig, check_redirect_uri};
use crate::oauth::clients::{hash_secret, stored_to_config};
use crate::scope::is_valid_scope_token;
use crate::store::{self, Notice, Store, StoredClient};
use crate::telemetry::audit::{self, Event};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
}

/// Tells the running replicas what changed. The change is in the store
/// already, and each replica rereads what it holds on its own schedule, so
/// a notice that cannot be sent delays the change there; it undoes nothing.
async fn tell_replicas(store: &dyn Store, what: Notice) {
    if let Err(e) = store.announce(&what).await {
        eprintln!(
            "warning: could not tell the running gateways at once ({e}); they will see the change on their next reread"
        );
    }
}

fn invalid(msg: impl Into<String>) -> ManageError {
    ManageError::Invalid(msg.into())
}

/// What `clients add` registers.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub client_id: String,
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub public: bool,
    pub no_pkce: bool,
}

/// The pool `[storage]` asks for (PostgreSQL; SQLite sizes its own).
pub fn pool_options(storage: &StorageConfig) -> store::PoolOptions {
    store::PoolOptions { max_connections: storage.max_connections, acquire_timeout: storage.acquire_timeout }
}

pub async fn open_store(config: &Config) -> Result<std::sync::Arc<dyn Store>, ManageError> {
    Ok(store::open_with(&config.storage.url, pool_options(&config.storage)).await?)
}

/// Registers a client; returns the lines to print (with the secret, once).
pub async fn add_client(config: &Config, store: &dyn Store, new: NewClient) -> Result<String, ManageError> {
    let id = &new.client_id;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_graphic() && c != ':') {
        return Err(invalid("the client id must be printable ASCII without spaces or ':'"));
    }
    if config.client(id).is_some() {
        return Err(invalid(format!("{id:?} is registered in the config file already")));
    }
    if config.users.iter().any(|u| crate::config::same_subject(id, &u.username)) {
        return Err(invalid(format!("{id:?} is a username; a client may not share a user's subject")));
    }
    for uri in &new.redirect_uris {
        check_redirect_uri(uri).map_err(|e| invalid(e.to_string()))?;
    }
    if let Some(bad) = new.scopes.iter().find(|s| !is_valid_scope_token(s)) {
        return Err(invalid(format!("{bad:?} is not a valid scope")));
    }
    let grant_types = if new.grant_types.is_empty() {
        vec!["authorization_code".to_string(), "refresh_token".to_string()]
    } else {
        new.grant_types.clone()
    };
    if let Some(bad) = grant_types.iter().find(|g| GrantType::parse(g).is_none()) {
        return Err(invalid(format!("{bad:?}: grant types are client_credentials, authorization_code, refresh_token")));
    }
    if new.public && grant_types.iter().any(|g| g == "client_credentials") {
        return Err(invalid("client_credentials is only for confidential clients (OAuth 2.1 §4.2)"));
    }
    if new.public && new.no_pkce {
        return Err(invalid("PKCE is mandatory for public clients"));
    }
    if grant_types.iter().any(|g| g == "authorization_code") && new.redirect_uris.is_empty() {
        return Err(invalid("authorization_code needs at least one --redirect-uri"));
    }
    let secret = (!new.public).then(random_token);
    let secret_hash = match &secret {
        Some(s) => Some(hash_secret(s).map_err(|e| invalid(format!("hashing failed: {e}")))?),
        None => None,
    };
    let client = StoredClient {
        client_id: id.clone(),
        name: new.name.clone().unwrap_or_else(|| id.clone()),
        secret_hash,
        public: new.public,
        require_pkce: !new.no_pkce,
        redirect_uris: new.redirect_uris.clone(),
        scopes: new.scopes.clone(),
        grant_types,
        created_at: SystemClock.unix() as i64,
    };
    if stored_to_config(&client).is_none() {
        return Err(invalid("the client does not validate"));
    }
    if !store.insert_client(&client).await? {
        return Err(invalid(format!("{id:?} is registered already")));
    }
    audit::record(Event::ClientRegistered, audit::Fields { client_id: Some(id), ..Default::default() });
    // A replica may have read it as unknown a moment ago.
    tell_replicas(store, Notice::Client(id.clone())).await;
    let mut out = format!("client_id: {id}\n");
    match secret {
        Some(s) => {
            let _ = writeln!(out, "client_secret: {s}");
            out.push_str("(the secret is shown only now; only its hash is stored)\n");
        }
        None => out.push_str("public client: no secret; PKCE is required\n"),
    }
    Ok(out)
}

pub async fn list_clients(config: &Config, store: &dyn Store) -> Result<String, ManageError> {
    let mut out = String::new();
    let _ = writeln!(out, "{:<24} {:<7} {:<12} {:<40} scopes", "client_id", "source", "type", "grant types");
    for c in &config.clients {
        let grants: Vec<&str> = c.grant_types.iter().map(|g| g.as_str()).collect();
        let kind = if c.public { "public" } else { "confidential" };
        let _ = writeln!(out, "{:<24} {:<7} {:<12} {:<40} {}", c.client_id, "config", kind, grants.join(","), c.scopes);
    }
    for c in store.list_clients().await? {
        let kind = if c.public { "public" } else { "confidential" };
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<12} {:<40} {}",
            c.client_id,
            "store",
            kind,
            c.grant_types.join(","),
            c.scopes.join(" ")
        );
    }
    Ok(out)
}

pub async fn remove_client(config: &Config, store: &dyn Store, client_id: &str) -> Result<String, ManageError> {
    if config.client(client_id).is_some() {
        return Err(invalid(format!("{client_id:?} is in the config file; remove it there")));
    }
    if store.delete_client(client_id).await? {
        revoke_tokens(config, store, client_id, true).await?;
        audit::record(Event::ClientRemoved, audit::Fields { client_id: Some(client_id), ..Default::default() });
        tell_replicas(store, Notice::Client(client_id.to_string())).await;
        Ok(format!("removed {client_id}; its grants and the access tokens it was issued are revoked\n"))
    } else {
        Err(invalid(format!("no registered client {client_id:?}")))
    }
}

pub async fn rotate_secret(config: &Config, store: &dyn Store, client_id: &str) -> Result<String, ManageError> {
    if config.client(client_id).is_some() {
        return Err(invalid(format!("{client_id:?} is in the config file; change its client_secret_hash there")));
    }
    let secret = random_token();
    let hash = hash_secret(&secret).map_err(|e| invalid(format!("hashing failed: {e}")))?;
    if store.set_client_secret(client_id, &hash).await? {
        // Whoever held the old secret may have minted tokens with it; the
        // client's grants stay (refreshing needs the new secret).
        revoke_tokens(config, store, client_id, false).await?;
        audit::record(Event::ClientSecretRotated, audit::Fields { client_id: Some(client_id), ..Default::default() });
        tell_replicas(store, Notice::Client(client_id.to_string())).await;
        Ok(format!(
            "client_id: {client_id}\nclient_secret: {secret}\n(the old secret stops working, and the access tokens issued until now are revoked; this one is shown only now)\n"
        ))
    } else {
        Err(invalid(format!("no registered confidential client {client_id:?}")))
    }
}

pub async fn list_consents(store: &dyn Store, user: Option<&str>) -> Result<String, ManageError> {
    let mut out = format!("{:<20} {:<24} {:<20} scopes\n", "user", "client_id", "granted_at (unix)");
    for c in store.list_consents(user).await? {
        let _ = writeln!(out, "{:<20} {:<24} {:<20} {}", c.subject, c.client_id, c.granted_at, c.scope);
    }
    Ok(out)
}

pub async fn revoke_consent(store: &dyn Store, user: &str, client_id: &str) -> Result<String, ManageError> {
    if store.delete_consent(user, client_id, SystemClock.unix() as i64).await? {
        audit::record(
            Event::ConsentWithdrawn,
            audit::Fields { client_id: Some(client_id), subject: Some(user), ..Default::default() },
        );
        Ok(format!("withdrew {user}'s consent for {client_id}; its grants and tokens are revoked\n"))
    } else {
        Err(invalid(format!("{user} has no consent for {client_id}")))
    }
}

/// Revokes the access tokens `client_id` was issued until now (to the
/// second: one issued later in the second of the change is refused too,
/// one the old secret got from a replica that had not heard yet in the
/// next second is not), and with `grants` its grants.
async fn revoke_tokens(config: &Config, store: &dyn Store, client_id: &str, grants: bool) -> Result<(), ManageError> {
    let now = SystemClock.unix();
    let expires = now.saturating_add(config.authorization_server.token_outlives_signing().as_secs());
    let as_i64 = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
    Ok(store.revoke_client(client_id, as_i64(now), as_i64(expires), grants).await?)
}

/// The signing keys and where each is in its life (`portcullis keys list`).
pub async fn list_keys(config: &Config, store: &dyn Store) -> Result<String, ManageError> {
    let stored = store.signing_keys().await?;
    if stored.is_empty() {
        return Ok("no signing key yet: the gateway creates the first when it starts\n".into());
    }
    let ring = KeyRing::new(&stored, config.authorization_server.token_outlives_signing())?;
    let now = SystemClock.unix();
    let mut out = format!("{:<44} {:<21} {:<21} state\n", "kid", "created", "signs from");
    for k in ring.keys() {
        let _ = writeln!(
            out,
            "{:<44} {:<21} {:<21} {}",
            k.kid,
            utc(k.created_at),
            utc(k.activates_at),
            match ring.state(k, now) {
                keys::KeyState::Retired { until } => format!("retired, published until {}", utc(until)),
                state => state.to_string(),
            }
        );
    }
    Ok(out)
}

/// Adds the next signing key (`portcullis keys rotate`): published by
/// every replica at once, signing after `activate_in`, while the key it
/// replaces stays published until the tokens it signed have expired.
/// `activate_in` defaults to `keys::PUBLISH_LEAD`.
pub async fn rotate_keys(
    config: &Config,
    store: &dyn Store,
    activate_in: Option<Duration>,
) -> Result<String, ManageError> {
    let now = SystemClock.unix();
    let activate_in = activate_in.unwrap_or(keys::PUBLISH_LEAD);
    // Read first, so a store whose keys cannot be used is not added to.
    let stored = store.signing_keys().await?;
    if !stored.is_empty() {
        KeyRing::new(&stored, config.authorization_server.token_outlives_signing())?;
    }
    let key = keys::rotate(store, now, activate_in, None).await?.ok_or_else(|| invalid("the key was not stored"))?;
    tell_replicas(store, Notice::Keys).await;
    let activates_at = u64::try_from(key.activates_at).unwrap_or(0);
    Ok(format!(
        "kid: {}\npublished now; signs from {} (in {}); the key it replaces stays published until {}\n",
        key.kid,
        utc(activates_at),
        humantime::format_duration(activate_in),
        utc(activates_at.saturating_add(config.authorization_server.token_outlives_signing().as_secs())),
    ))
}

/// Unix seconds as `2026-12-07T18:51:56Z`; as the number itself past the
/// year 9999, which RFC 3339 cannot write (a huge `--activate-in`, or a
/// stored time no key should have, must not crash the listing).
fn utc(unix: u64) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    if unix >= YEAR_10000 {
        return format!("{unix} (unix seconds)");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_whatever_their_size() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(utc(253_402_300_800), "253402300800 (unix seconds)");
        assert_eq!(utc(u64::MAX), format!("{} (unix seconds)", u64::MAX));
    }
}
