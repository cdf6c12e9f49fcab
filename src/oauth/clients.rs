//! Client registry and client authentication (RFC 6749 §2.3.1).
//!
//! Stored secrets are argon2 hashes, and argon2 is deliberately slow: it
//! must not set the token endpoint's throughput. After a secret verifies
//! once, its keyed digest (HMAC-SHA-256 under a per-process random key) is
//! remembered, so later requests with the same secret cost one HMAC and a
//! constant-time comparison. A secret that does not match the remembered
//! digest still pays the full argon2 price, so guessing stays expensive.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _};
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::config::{ClientConfig, ClientSecret, GrantType};
use crate::oauth::throttle::Throttle;
use crate::scope::ScopeSet;
use crate::store::{Store, StoredClient};

type Digest = [u8; 32];

/// Hashes a secret or password for the config (`portcullis hash-password`).
pub fn hash_secret(secret: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(Argon2::default().hash_password(secret.as_bytes(), &salt)?.to_string())
}

/// Verifies `secret` against a PHC string; false for a malformed hash.
pub fn verify_hash(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

/// Registered clients, and the digests of secrets already proven.
pub struct ClientRegistry {
    clients: HashMap<String, Arc<ClientConfig>>,
    digest_key: [u8; 32],
    proven: RwLock<HashMap<String, (String, Digest)>>,
    store: Option<Arc<dyn Store>>,
    registered: moka::future::Cache<String, Option<Arc<ClientConfig>>>,
    /// Recent failures per client id (known or not) and address, forgotten
    /// after `FAILURE_WINDOW`; attempts for one pair take turns. Keyed by
    /// the pair, guesses cost the address that makes them: one who knows
    /// only a client's id cannot lock the client out from elsewhere.
    failures: Throttle<(String, IpAddr)>,
    /// Bounds concurrent argon2 runs, so guessing cannot take every core.
    hashing: tokio::sync::Semaphore,
    /// Verified against when the client is unknown, so an unknown client
    /// costs what a wrong secret costs.
    dummy_hash: String,
}

/// How a client authentication attempt failed; all of these are
/// `invalid_client` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownClient,
    WrongSecret,
    /// A public client presented a secret, or a confidential one presented none.
    WrongMethod,
    /// Too many recent failures for this client id; not even tried.
    Throttled,
}

/// How long a client read from the store is reused before it is read again.
pub const REGISTERED_TTL: Duration = Duration::from_secs(5);

/// Converts a stored client; `None` (and a log line) if it no longer
/// validates, so a bad row can never widen what a client may do.
pub fn stored_to_config(c: &StoredClient) -> Option<ClientConfig> {
    let grant_types: Option<Vec<GrantType>> = c.grant_types.iter().map(|g| GrantType::parse(g)).collect();
    let scopes = ScopeSet::parse(&c.scopes.join(" "));
    match (grant_types, scopes) {
        (Some(grant_types), Some(scopes)) => Some(ClientConfig {
            client_id: c.client_id.clone(),
            name: c.name.clone(),
            secret: match &c.secret_hash {
                Some(h) if !c.public => ClientSecret::Hash(h.clone()),
                _ => ClientSecret::None,
            },
            redirect_uris: c.redirect_uris.clone(),
            scopes,
            grant_types,
            public: c.public,
            require_pkce: c.public || c.require_pkce,
        }),
        _ => {
            tracing::error!(client_id = %c.client_id, "stored client is malformed; ignored");
            None
        }
    }
}

/// Failed authentications per client id and address per `FAILURE_WINDOW` before further
/// attempts are refused unverified.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl ClientRegistry {
    /// Clients from the config, and (with `store`) those registered at run
    /// time with `portcullis clients`, looked up on demand so new ones work
    /// without a restart.
    pub fn new(clients: &[ClientConfig], store: Option<Arc<dyn Store>>) -> ClientRegistry {
        let mut digest_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut digest_key);
        let dummy_hash = hash_secret("portcullis-dummy-secret").unwrap_or_default();
        let mut failures = Throttle::new(MAX_FAILURES, FAILURE_WINDOW, 10_000);
        if let Some(store) = &store {
            failures = failures.shared(store.clone(), "client-auth", |(id, from)| format!("{from} {id}"));
        }
        ClientRegistry {
            clients: clients.iter().map(|c| (c.client_id.clone(), Arc::new(c.clone()))).collect(),
            store,
            registered: moka::future::Cache::builder().max_capacity(10_000).time_to_live(REGISTERED_TTL).build(),
            digest_key,
            proven: RwLock::new(HashMap::new()),
            failures,
            hashing: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
            dummy_hash,
        }
    }

    /// Drops what was read of a registered client, so the next request
    /// reads it again (another replica, or the CLI, changed it).
    pub async fn forget(&self, client_id: &str) {
        self.registered.invalidate(client_id).await;
    }

    /// Drops everything read of registered clients.
    pub fn forget_all(&self) {
        self.registered.invalidate_all();
    }

    /// The client `client_id`: from the config, else from the store (what
    /// the store says is reused for `REGISTERED_TTL`, so a rotated secret or
    /// removed client takes effect within that time).
    pub async fn get(&self, client_id: &str) -> Option<Arc<ClientConfig>> {
        if let Some(c) = self.clients.get(client_id) {
            return Some(c.clone());
        }
        let store = self.store.as_ref()?;
        self.registered
            .get_with(client_id.to_string(), async {
                match store.find_client(client_id).await {
                    Ok(found) => found.and_then(|c| stored_to_config(&c)).map(Arc::new),
                    Err(e) => {
                        tracing::error!(error = %e, "client lookup failed");
                        None
                    }
                }
            })
            .await
    }

    /// The clients of the config file.
    pub fn configured(&self) -> impl Iterator<Item = &Arc<ClientConfig>> {
        self.clients.values()
    }

    fn digest(&self, secret: &str) -> Digest {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.digest_key).expect("HMAC takes any key length");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Authenticates a confidential client by its secret. A secret already
    /// proven costs one HMAC; anything else pays argon2 on a blocking
    /// thread, at most one per core at a time, and a client id with too many
    /// recent failures is refused without trying (RFC 6749 §10.10: guessing
    /// must be slowed down; the digest path still admits the real client).
    pub async fn authenticate(
        self: &Arc<Self>,
        client_id: &str,
        secret: &str,
        from: IpAddr,
    ) -> Result<Arc<ClientConfig>, AuthFailure> {
        let presented = self.digest(secret);
        let client = self.get(client_id).await;
        match client.as_deref().map(|c| &c.secret) {
            Some(ClientSecret::None) => return Err(AuthFailure::WrongMethod),
            Some(ClientSecret::Plain(expected)) if bool::from(self.digest(expected).ct_eq(&presented)) => {
                return client.ok_or(AuthFailure::UnknownClient);
            }
            Some(ClientSecret::Hash(phc))
                if self.remembered(client_id, phc).is_some_and(|d| bool::from(d.ct_eq(&presented))) =>
            {
                return client.ok_or(AuthFailure::UnknownClient);
            }
            _ => {}
        }
        // One attempt at a time per client id and address
        // (`crate::oauth::throttle`), so a burst of guesses gets no more tries than
        // a sequence would.
        let attempt = self.failures.attempt((client_id.to_string(), from)).await;
        if self.failures.refuses(&attempt) {
            return Err(AuthFailure::Throttled);
        }
        // An attempt that waited its turn behind the real client's first
        // one finds its secret proven by then, and skips argon2.
        if let Some(ClientSecret::Hash(phc)) = client.as_deref().map(|c| &c.secret)
            && self.remembered(client_id, phc).is_some_and(|d| bool::from(d.ct_eq(&presented)))
        {
            return client.ok_or(AuthFailure::UnknownClient);
        }
        let verified = match client.as_deref().map(|c| &c.secret) {
            Some(ClientSecret::Hash(phc)) => self.slow_verify(secret, Some(phc.clone())).await,
            Some(_) => false,
            None => self.slow_verify(secret, None).await,
        };
        match client {
            Some(client) if verified => {
                if let (Ok(mut m), ClientSecret::Hash(phc)) = (self.proven.write(), &client.secret) {
                    m.insert(client_id.to_string(), (phc.clone(), presented));
                }
                Ok(client)
            }
            found => {
                attempt.failed().await;
                Err(if found.is_some() { AuthFailure::WrongSecret } else { AuthFailure::UnknownClient })
            }
        }
    }

    /// The digest proven against `phc`; one proven against an older hash
    /// (before `rotate-secret`) does not count.
    fn remembered(&self, client_id: &str, phc: &str) -> Option<Digest> {
        self.proven.read().ok().and_then(|m| m.get(client_id).filter(|(p, _)| p == phc).map(|(_, d)| *d))
    }

    async fn slow_verify(&self, secret: &str, phc: Option<String>) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let secret = secret.to_string();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.clone());
        let ok = tokio::task::spawn_blocking(move || verify_hash(&secret, &phc)).await.unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GrantType;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn client(id: &str, secret: ClientSecret) -> ClientConfig {
        ClientConfig {
            client_id: id.into(),
            name: id.into(),
            secret,
            redirect_uris: vec![],
            scopes: ScopeSet::default(),
            grant_types: vec![GrantType::ClientCredentials],
            public: false,
            require_pkce: true,
        }
    }

    #[tokio::test]
    async fn hashed_and_plain_secrets() {
        let reg = Arc::new(ClientRegistry::new(
            &[
                client("h", ClientSecret::Hash(hash_secret("s1").unwrap())),
                client("p", ClientSecret::Plain("s2".into())),
                client("pub", ClientSecret::None),
            ],
            None,
        ));
        assert!(reg.authenticate("h", "s1", HERE).await.is_ok());
        // second time through the remembered digest
        assert!(reg.authenticate("h", "s1", HERE).await.is_ok());
        assert_eq!(reg.authenticate("h", "s2", HERE).await.unwrap_err(), AuthFailure::WrongSecret);
        assert!(reg.authenticate("p", "s2", HERE).await.is_ok());
        assert_eq!(reg.authenticate("p", "s1", HERE).await.unwrap_err(), AuthFailure::WrongSecret);
        assert_eq!(reg.authenticate("pub", "x", HERE).await.unwrap_err(), AuthFailure::WrongMethod);
        assert_eq!(reg.authenticate("nobody", "s1", HERE).await.unwrap_err(), AuthFailure::UnknownClient);
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_but_the_proven_secret_still_works() {
        let reg = Arc::new(ClientRegistry::new(&[client("h", ClientSecret::Hash(hash_secret("s1").unwrap()))], None));
        assert!(reg.authenticate("h", "s1", HERE).await.is_ok());
        for _ in 0..MAX_FAILURES {
            assert_eq!(reg.authenticate("h", "guess", HERE).await.unwrap_err(), AuthFailure::WrongSecret);
        }
        assert_eq!(reg.authenticate("h", "guess", HERE).await.unwrap_err(), AuthFailure::Throttled);
        assert!(reg.authenticate("h", "s1", HERE).await.is_ok());
    }

    /// Guesses sent all at once, waiting their turn at argon2, get no more
    /// tries than guesses sent one after another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_guesses_gets_no_more_tries_than_a_sequence() {
        let reg = Arc::new(ClientRegistry::new(&[client("h", ClientSecret::Hash(hash_secret("s1").unwrap()))], None));
        let outcomes = all_at_once(&reg, "guess").await;
        let refused = |o: &Result<(), AuthFailure>| matches!(o, Err(AuthFailure::WrongSecret | AuthFailure::Throttled));
        assert!(outcomes.iter().all(refused), "{outcomes:?}");
        let tried = outcomes.iter().filter(|o| **o == Err(AuthFailure::WrongSecret)).count();
        assert_eq!(tried, MAX_FAILURES as usize, "{outcomes:?}");
        assert_eq!(reg.authenticate("h", "s1", HERE).await.unwrap_err(), AuthFailure::Throttled, "not yet proven");
    }

    /// The real client's requests all at once (replicas starting together,
    /// its secret not yet proven in this process): none is refused for
    /// the others in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_right_secrets_is_never_throttled() {
        let reg = Arc::new(ClientRegistry::new(&[client("h", ClientSecret::Hash(hash_secret("s1").unwrap()))], None));
        for outcome in all_at_once(&reg, "s1").await {
            assert_eq!(outcome, Ok(()));
        }
    }

    /// Four times `MAX_FAILURES` authentications of client `h` with
    /// `secret`, all started at once.
    async fn all_at_once(reg: &Arc<ClientRegistry>, secret: &'static str) -> Vec<Result<(), AuthFailure>> {
        let attempts: Vec<_> = (0..4 * MAX_FAILURES)
            .map(|_| {
                let reg = reg.clone();
                tokio::spawn(async move { reg.authenticate("h", secret, HERE).await.map(|_| ()) })
            })
            .collect();
        let mut outcomes = Vec::new();
        for attempt in attempts {
            outcomes.push(attempt.await.unwrap());
        }
        outcomes
    }
}
