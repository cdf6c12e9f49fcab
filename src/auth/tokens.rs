//! Access tokens: minting (RFC 9068 JWTs signed with an Ed25519 key kept in
//! the store, or opaque handles recorded in the store) and verifying them
//! back into the `Identity` the gateway enforces.
//!
//! JWT verification follows RFC 9068 §4: `typ` must be `at+jwt`, `alg` must
//! be the one bound to the key named by `kid` (never `none`, never chosen by
//! the token), `iss` is matched exactly, `aud` must contain this gateway,
//! and `exp`/`nbf` are checked with an explicit small leeway. `jku`, `x5u`
//! and `jwk` headers are never consulted: keys come only from the store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::clock::Clock;
pub use crate::auth::keys::KeyError;
use crate::auth::keys::{self, ED25519_ALG, KeyRing};
use crate::config::{AuthorizationServerConfig, TokenFormat};
use crate::scope::ScopeSet;
use crate::store::{AccessTokenRecord, Store, StoreError};
use crate::telemetry::access::Principal;

/// Opaque access tokens start with this, so they are told from JWTs (and
/// found by secret scanners) without a store lookup.
const OPAQUE_PREFIX: &str = "pca_";

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// 256 random bits, base64url: token values and identifiers (RFC 6749 §10.10
/// asks for at least 128).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// The SHA-256 of a token: what the cache and the store key it by.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a valid access token proves.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub client_id: String,
    pub scopes: ScopeSet,
    /// Unix seconds.
    pub expires_at: u64,
    pub jti: String,
    /// The values of `X-Auth-Subject`, `X-Auth-Client-Id` and `X-Auth-Scope`,
    /// built once when the token is validated, not on every request.
    pub subject_header: HeaderValue,
    pub client_id_header: HeaderValue,
    pub scope_header: HeaderValue,
}

impl Identity {
    pub fn new(subject: String, client_id: String, scopes: ScopeSet, expires_at: u64, jti: String) -> Option<Identity> {
        Some(Identity {
            subject_header: HeaderValue::from_bytes(subject.as_bytes()).ok()?,
            client_id_header: HeaderValue::from_bytes(client_id.as_bytes()).ok()?,
            scope_header: HeaderValue::from_str(&scopes.to_string()).ok()?,
            subject,
            client_id,
            scopes,
            expires_at,
            jti,
        })
    }
}

impl Identity {
    /// A copy that shares no allocation with this one. Each worker keeps
    /// its own, so the reference counts a request touches live on its
    /// core's cache lines, not on lines every core writes.
    pub fn detached(&self) -> Identity {
        let copy = |v: &HeaderValue| HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
        Identity {
            subject: self.subject.clone(),
            client_id: self.client_id.clone(),
            scopes: self.scopes.clone(),
            expires_at: self.expires_at,
            jti: self.jti.clone(),
            subject_header: copy(&self.subject_header),
            client_id_header: copy(&self.client_id_header),
            scope_header: copy(&self.scope_header),
        }
    }
}

impl Principal for Identity {
    fn client_id(&self) -> &str {
        &self.client_id
    }

    fn subject(&self) -> &str {
        &self.subject
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.subject)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes.to_string())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a token was refused. All of these are `invalid_token` to the client;
/// the distinction feeds metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    UnknownKey,
    BadSignature,
    WrongType,
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
    Revoked,
    Unknown,
}

impl Rejection {
    /// A short reason for `error_description` and the `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::WrongType => "wrong_type",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::Revoked => "revoked",
            Rejection::Unknown => "unknown",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Rejection::Expired => "The access token expired",
            Rejection::Revoked => "The access token was revoked",
            Rejection::NotYetValid => "The access token is not valid yet",
            _ => "The access token is invalid",
        }
    }
}

#[derive(Serialize)]
struct JwtClaimsOut<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    client_id: &'a str,
    scope: String,
    exp: u64,
    iat: u64,
    jti: &'a str,
}

#[derive(Deserialize)]
struct JwtClaimsIn {
    /// A string (RFC 9068 §2.2): jsonwebtoken would also take an array
    /// that holds the issuer, which is no token this server issues.
    iss: String,
    sub: String,
    client_id: String,
    #[serde(default)]
    scope: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    aud: Audience,
    jti: String,
}

/// `aud`: one audience, or several (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

/// A freshly minted access token.
pub struct IssuedToken {
    pub value: String,
    pub expires_in: u64,
    pub scopes: ScopeSet,
    pub jti: String,
}

/// Mints and verifies access tokens.
pub struct TokenService {
    issuer: String,
    audience: String,
    ttl: Duration,
    format: TokenFormat,
    store: Arc<dyn Store>,
    /// The signing keys, replaced whole when the store's change.
    keys: ArcSwap<KeyRing>,
    /// How long a token outlives its signing: what a retired key must.
    outlives: Duration,
    /// Every claim checked by jsonwebtoken, on the system clock: for
    /// `inspect`, which turns the time checks off.
    validation: Validation,
    jwt: JwtVerifier,
    clock: Arc<dyn Clock>,
}

/// The checks a presented JWT must pass (RFC 9068 §4), apart from
/// revocation: with no store and no clock of its own, so that they can be
/// run on any moment and any key ring (the `jwt` fuzz target does).
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    /// The signature and the presence of `exp`, `iss` and `aud` only: the
    /// rest is checked against the moment given (with `leeway`).
    signature_only: Validation,
}

impl TokenService {
    /// Loads the signing keys from the store, generating and persisting the
    /// first one on first start.
    pub async fn load(
        config: &AuthorizationServerConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<TokenService, KeyError> {
        let outlives = config.token_outlives_signing();
        let mut stored = store.signing_keys().await?;
        if !stored.iter().any(|k| k.alg == ED25519_ALG) {
            // The first key signs at once: there is no token to outlive,
            // and replicas starting together settle on one.
            if let Some(key) = keys::rotate(&*store, clock.unix(), Duration::ZERO, Some(0)).await? {
                tracing::info!(kid = %key.kid, "generated a new token-signing key");
            }
            stored = store.signing_keys().await?;
        }
        let ring = KeyRing::new(&stored, outlives)?;

        Ok(TokenService {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: config.access_token_ttl,
            format: config.token_format,
            store,
            keys: ArcSwap::from_pointee(ring),
            outlives,
            validation: full_validation(&config.issuer, &config.audience, config.leeway),
            jwt: JwtVerifier::new(&config.issuer, &config.audience, config.leeway),
            clock,
        })
    }

    /// Reads the signing keys from the store again (one was added, or
    /// deleted, perhaps by another replica). Whether they changed; on an
    /// error the keys held stay in use.
    pub async fn reread_keys(&self) -> Result<bool, KeyError> {
        let ring = KeyRing::new(&self.store.signing_keys().await?, self.outlives)?;
        if ring.same_as(&self.keys.load()) {
            return Ok(false);
        }
        self.keys.store(Arc::new(ring));
        Ok(true)
    }

    /// The signing keys as held now.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    /// The keys the sign-in form's CSRF tokens may be signed with, the one
    /// to sign with first: a form shown before a rotation still posts after.
    pub fn form_keys(&self) -> Vec<[u8; 32]> {
        self.keys.load().form_keys(self.clock.unix())
    }

    /// The JWKS document (RFC 7517) of the keys published now.
    pub fn jwks(&self) -> Bytes {
        self.keys.load().jwks(self.clock.unix())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock tokens are minted and checked by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Mints an access token for `subject` acting through `client_id`.
    pub async fn issue(&self, client_id: &str, subject: &str, scopes: ScopeSet) -> Result<IssuedToken, StoreError> {
        let iat = self.clock.unix();
        let exp = iat.saturating_add(self.ttl.as_secs());
        let jti = random_token();
        let value = match self.format {
            TokenFormat::Jwt => {
                let ring = self.keys.load();
                let key = ring.signing(iat);
                let mut header = Header::new(Algorithm::EdDSA);
                header.typ = Some("at+jwt".into());
                header.kid = Some(key.kid.clone());
                let claims = JwtClaimsOut {
                    iss: &self.issuer,
                    sub: subject,
                    aud: &self.audience,
                    client_id,
                    scope: scopes.to_string(),
                    exp,
                    iat,
                    jti: &jti,
                };
                jsonwebtoken::encode(&header, &claims, &key.signing)
                    .map_err(|e| StoreError::Unavailable(format!("signing failed: {e}")))?
            }
            TokenFormat::Opaque => {
                let value = format!("{OPAQUE_PREFIX}{}", random_token());
                self.store
                    .save_access_token(&AccessTokenRecord {
                        token_hash: token_hash(&value),
                        jti: jti.clone(),
                        client_id: client_id.to_string(),
                        subject: subject.to_string(),
                        scope: scopes.to_string(),
                        issued_at: i64::try_from(iat).unwrap_or(i64::MAX),
                        expires_at: i64::try_from(exp).unwrap_or(i64::MAX),
                    })
                    .await?;
                value
            }
        };
        Ok(IssuedToken { value, expires_in: self.ttl.as_secs(), scopes, jti })
    }

    /// Verifies a presented access token of either format. `Ok(Err(_))` is
    /// a definite refusal; `Err(_)` means the store could not be asked.
    pub async fn verify(&self, token: &str) -> Result<Result<Identity, Rejection>, StoreError> {
        if token.len() > MAX_TOKEN_LEN {
            return Ok(Err(Rejection::Malformed));
        }
        let (identity, issued_at) = if let Some(rest) = token.strip_prefix(OPAQUE_PREFIX) {
            if rest.is_empty() {
                return Ok(Err(Rejection::Malformed));
            }
            match self.verify_opaque(token).await? {
                Ok(verified) => verified,
                Err(r) => return Ok(Err(r)),
            }
        } else {
            match self.jwt.verify(token, &self.keys.load(), self.clock.unix()) {
                Ok(verified) => verified,
                Err(r) => return Ok(Err(r)),
            }
        };
        let issued_at = i64::try_from(issued_at).unwrap_or(i64::MAX);
        if self.store.is_revoked(&identity.jti, &identity.client_id, issued_at).await? {
            return Ok(Err(Rejection::Revoked));
        }
        Ok(Ok(identity))
    }

    /// The identity of a valid opaque token, and when it was issued.
    async fn verify_opaque(&self, token: &str) -> Result<Result<(Identity, u64), Rejection>, StoreError> {
        let Some(record) = self.store.find_access_token(&token_hash(token)).await? else {
            return Ok(Err(Rejection::Unknown));
        };
        let exp = u64::try_from(record.expires_at).unwrap_or(0);
        if exp <= self.clock.unix() {
            return Ok(Err(Rejection::Expired));
        }
        let scopes = ScopeSet::parse(&record.scope).unwrap_or_default();
        let issued_at = u64::try_from(record.issued_at).unwrap_or(0);
        let identity = Identity::new(record.subject, record.client_id, scopes, exp, record.jti);
        Ok(identity.map(|id| (id, issued_at)).ok_or(Rejection::Malformed))
    }

    /// Identifies a token this server issued, whether or not it is still
    /// valid: for revocation, where an expired token may still be named.
    /// `None` for anything that is not verifiably ours.
    pub async fn inspect(&self, token: &str) -> Result<Option<TokenOwner>, StoreError> {
        if token.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        if token.starts_with(OPAQUE_PREFIX) {
            return Ok(self.store.find_access_token(&token_hash(token)).await?.map(|r| TokenOwner {
                jti: r.jti,
                client_id: r.client_id,
                expires_at: u64::try_from(r.expires_at).unwrap_or(0),
            }));
        }
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let ring = self.keys.load();
        Ok(jsonwebtoken::decode_header(token)
            .ok()
            .filter(|h| h.typ.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("at+jwt")))
            .and_then(|h| h.kid.and_then(|kid| ring.verifying(&kid, self.clock.unix())))
            .and_then(|k| jsonwebtoken::decode::<JwtClaimsIn>(token, &k.verifying, &validation).ok())
            .map(|d| TokenOwner { jti: d.claims.jti, client_id: d.claims.client_id, expires_at: d.claims.exp }))
    }
}

/// Whether a token's segment is base64url of JSON that a strict reader
/// takes whole.
fn is_json_text(segment: &str) -> bool {
    B64.decode(segment).is_ok_and(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).is_ok())
}

/// Every claim checked by jsonwebtoken, times on the system clock.
fn full_validation(issuer: &str, audience: &str, leeway: Duration) -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    // CVE-2026-25537: only claims listed here are guaranteed present.
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.leeway = leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation
}

impl JwtVerifier {
    /// Tokens from `issuer` for `audience`, their times checked with
    /// `leeway`.
    pub fn new(issuer: &str, audience: &str, leeway: Duration) -> JwtVerifier {
        // What is asked of the library: the signature and that the claims
        // are there. The times are checked against the moment given, and
        // so, to keep jsonwebtoken's order (times, then issuer, then
        // audience), are the issuer and the audience.
        let mut signature_only = full_validation(issuer, audience, leeway);
        signature_only.validate_exp = false;
        signature_only.validate_nbf = false;
        signature_only.validate_aud = false;
        signature_only.iss = None;
        JwtVerifier { issuer: issuer.into(), audience: audience.into(), signature_only }
    }

    /// The identity a JWT proves at `now` (unix seconds) with `ring`'s
    /// keys, and when it was issued (0 without `iat`: before any client
    /// revocation).
    pub fn verify(&self, token: &str, ring: &KeyRing, now: u64) -> Result<(Identity, u64), Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        // RFC 9068 §4: reject anything not explicitly typed as an access
        // token (an ID token or a refresh JWT replayed here, say).
        match header.typ.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(Rejection::WrongType),
        }
        // RFC 7515 §4.1.11: a `crit` header names extensions the recipient
        // must understand or refuse the token; this server issues none and
        // understands none.
        if header.crit.is_some() {
            return Err(Rejection::Malformed);
        }
        let key = header.kid.as_deref().and_then(|kid| ring.verifying(kid, now));
        let key = key.ok_or(Rejection::UnknownKey)?;
        // The algorithm is the key's, not the token's to choose.
        if header.alg != Algorithm::EdDSA {
            return Err(Rejection::BadSignature);
        }
        let data = jsonwebtoken::decode::<JwtClaimsIn>(token, &key.verifying, &self.signature_only).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature | K::InvalidAlgorithm | K::InvalidAlgorithmName => Rejection::BadSignature,
                _ => Rejection::Malformed,
            }
        })?;
        // RFC 8259 §8.1, RFC 7519 §7.2: the header and claims are UTF-8
        // JSON. serde skips a member it does not know without reading it
        // through (its bytes need not be UTF-8, its escapes need not name
        // characters), which a stricter reader (a relying party reading
        // the token again, a log pipeline) would refuse: refused here too.
        // After the signature, so only a token this server signed costs it.
        if !token.split('.').take(2).all(is_json_text) {
            return Err(Rejection::Malformed);
        }
        let c = data.claims;
        // jsonwebtoken's rules, at `now`: expired when `exp` is more than
        // the leeway behind, not yet valid when `nbf` is more than the
        // leeway ahead.
        let leeway = self.signature_only.leeway;
        if c.exp < now.saturating_sub(leeway) {
            return Err(Rejection::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(Rejection::NotYetValid);
        }
        if c.iss != self.issuer {
            return Err(Rejection::WrongIssuer);
        }
        if !c.aud.names(&self.audience) {
            return Err(Rejection::WrongAudience);
        }
        let scopes = ScopeSet::parse(&c.scope).ok_or(Rejection::Malformed)?;
        let identity = Identity::new(c.sub, c.client_id, scopes, c.exp, c.jti).ok_or(Rejection::Malformed)?;
        Ok((identity, c.iat.unwrap_or(0)))
    }
}

/// Whose a token is, as far as revocation needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub jti: String,
    pub client_id: String,
    pub expires_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::clock::{ManualClock, SystemClock};
    use crate::store::SqliteStore;

    fn config(format: TokenFormat) -> AuthorizationServerConfig {
        AuthorizationServerConfig {
            issuer: "http://127.0.0.1:8080".into(),
            issuer_path: String::new(),
            audience: "http://127.0.0.1:8080".into(),
            access_token_ttl: Duration::from_secs(60),
            refresh_token_ttl: Duration::from_secs(600),
            authorization_code_ttl: Duration::from_secs(60),
            token_format: format,
            leeway: Duration::from_secs(5),
            session_ttl: Duration::from_secs(3600),
            secure_cookies: false,
            issuer_host: "127.0.0.1".into(),
            dedicated_host: false,
            key_rotation: None,
        }
    }

    async fn service(format: TokenFormat) -> TokenService {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        TokenService::load(&config(format), store, Arc::new(SystemClock)).await.unwrap()
    }

    fn scopes(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    #[tokio::test]
    async fn jwt_round_trip_and_revocation() {
        let svc = service(TokenFormat::Jwt).await;
        let t = svc.issue("app", "app", scopes("a b")).await.unwrap();
        let id = svc.verify(&t.value).await.unwrap().unwrap();
        assert_eq!((id.subject.as_str(), id.client_id.as_str()), ("app", "app"));
        assert_eq!(id.scopes, scopes("a b"));
        let owner = svc.inspect(&t.value).await.unwrap().unwrap();
        assert_eq!(owner.client_id, "app");
        svc.store().revoke(&owner.jti, owner.expires_at as i64).await.unwrap();
        assert_eq!(svc.verify(&t.value).await.unwrap(), Err(Rejection::Revoked));
    }

    /// `exp` is checked on the service's clock, with the leeway (5 s here)
    /// as jsonwebtoken counts it: a token is good while `exp` is no more
    /// than the leeway behind now. Opaque tokens have no leeway.
    #[tokio::test]
    async fn expiry_is_read_on_the_injected_clock() {
        for format in [TokenFormat::Jwt, TokenFormat::Opaque] {
            let clock = Arc::new(ManualClock::starting_now());
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
            let svc = TokenService::load(&config(format), store, clock.clone()).await.unwrap();
            let t = svc.issue("app", "app", scopes("a")).await.unwrap();
            clock.advance(Duration::from_secs(59));
            assert!(svc.verify(&t.value).await.unwrap().is_ok(), "{format:?}: a second before exp");
            if format == TokenFormat::Jwt {
                clock.advance(Duration::from_secs(6));
                assert!(svc.verify(&t.value).await.unwrap().is_ok(), "exp is 5 s behind: within the leeway");
            }
            clock.advance(Duration::from_secs(1));
            assert_eq!(svc.verify(&t.value).await.unwrap(), Err(Rejection::Expired), "{format:?}: past it");
        }
    }

    #[tokio::test]
    async fn opaque_round_trip() {
        let svc = service(TokenFormat::Opaque).await;
        let t = svc.issue("app", "app", scopes("a")).await.unwrap();
        assert!(t.value.starts_with(OPAQUE_PREFIX));
        assert!(svc.verify(&t.value).await.unwrap().is_ok());
        assert_eq!(svc.verify("pca_nope").await.unwrap(), Err(Rejection::Unknown));
    }

    #[tokio::test]
    async fn forged_and_confused_tokens_are_refused() {
        let svc = service(TokenFormat::Jwt).await;
        let t = svc.issue("app", "app", scopes("a")).await.unwrap().value;
        let parts: Vec<&str> = t.split('.').collect();
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();

        let with_header =
            |h: serde_json::Value, sig: &str| format!("{}.{}.{}", B64.encode(h.to_string()), parts[1], sig);
        // alg none, signature dropped
        let mut none = header.clone();
        none["alg"] = "none".into();
        assert!(svc.verify(&with_header(none, "")).await.unwrap().is_err());
        // HS256 "signed" with the public key (algorithm confusion)
        let mut hs = header.clone();
        hs["alg"] = "HS256".into();
        assert!(svc.verify(&with_header(hs, parts[2])).await.unwrap().is_err());
        // wrong typ
        let mut typ = header.clone();
        typ["typ"] = "JWT".into();
        assert_eq!(svc.verify(&with_header(typ, parts[2])).await.unwrap(), Err(Rejection::WrongType));
        // unknown kid
        let mut kid = header.clone();
        kid["kid"] = "other".into();
        assert_eq!(svc.verify(&with_header(kid, parts[2])).await.unwrap(), Err(Rejection::UnknownKey));
        // tampered payload
        let tampered = format!("{}.{}.{}", parts[0], B64.encode(br#"{"sub":"x"}"#), parts[2]);
        assert!(svc.verify(&tampered).await.unwrap().is_err());
        // garbage
        assert_eq!(svc.verify("a.b.c").await.unwrap(), Err(Rejection::Malformed));
    }

    #[tokio::test]
    async fn keys_survive_reload_and_other_issuers_are_refused() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        let a = TokenService::load(&config(TokenFormat::Jwt), store.clone(), Arc::new(SystemClock)).await.unwrap();
        let b = TokenService::load(&config(TokenFormat::Jwt), store.clone(), Arc::new(SystemClock)).await.unwrap();
        assert!(a.keys().same_as(&b.keys()), "one key, settled on by both");
        let t = a.issue("app", "app", scopes("a")).await.unwrap().value;
        assert!(b.verify(&t).await.unwrap().is_ok());

        let mut other = config(TokenFormat::Jwt);
        other.issuer = "https://elsewhere.example".into();
        let c = TokenService::load(&other, store, Arc::new(SystemClock)).await.unwrap();
        assert_eq!(c.verify(&t).await.unwrap(), Err(Rejection::WrongIssuer));
    }

    /// A rotated-in key is read by another service on the store, signs
    /// there only from its activation, and the key it replaced verifies
    /// what it signed until those tokens have expired.
    #[tokio::test]
    async fn a_rotated_key_signs_from_its_activation_everywhere() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        let clock = Arc::new(ManualClock::starting_now());
        let svc = TokenService::load(&config(TokenFormat::Jwt), store.clone(), clock.clone()).await.unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        let before = svc.issue("app", "app", scopes("a")).await.unwrap().value;
        let old = kid(&before);

        let new = keys::rotate(&*store, clock.unix(), Duration::from_secs(30), None).await.unwrap().unwrap();
        assert!(svc.reread_keys().await.unwrap(), "a new key is a change");
        assert!(!svc.reread_keys().await.unwrap(), "read twice, no change");
        assert!(std::str::from_utf8(&svc.jwks()).unwrap().contains(&new.kid), "published at once");
        assert_eq!(kid(&svc.issue("app", "app", scopes("a")).await.unwrap().value), old, "pending: not signing");

        clock.advance(Duration::from_secs(30));
        let after = svc.issue("app", "app", scopes("a")).await.unwrap().value;
        assert_eq!(kid(&after), new.kid, "signs from its activation");
        assert!(svc.verify(&before).await.unwrap().is_ok(), "the old key still verifies its tokens");
        assert!(std::str::from_utf8(&svc.jwks()).unwrap().contains(&old));

        // 60 s tokens and a 5 s leeway: the old key is published 65 s more.
        clock.advance(Duration::from_secs(65));
        assert!(!std::str::from_utf8(&svc.jwks()).unwrap().contains(&old));
        assert_eq!(svc.keys().expired(clock.unix()), [old.as_str()]);
        assert!(svc.verify(&after).await.unwrap().is_ok());
    }
}
