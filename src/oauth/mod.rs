//! The authorization server's protocol logic, free of HTTP types: request
//! parameters in, a token response or an RFC 6749 §5.2 error out. The HTTP
//! adapter (`crate::web::endpoints`) only moves bytes in and out of this module.
//!
//! The room holds the grants (here), the authorization endpoint's rules
//! (`authorize`), clients and their authentication (`clients`), sign-in
//! sessions and consents (`sessions`), attempt throttles (`throttle`) and
//! the operator's store commands (`manage`). It imports neither hyper nor
//! the validation cache: revocations go out through `RevocationSink`,
//! which start-up wires to the cache. Below it: `auth` (minting tokens),
//! `store`, `config`, `telemetry`, `scope`.

pub mod authorize;
pub mod clients;
pub mod manage;
mod revocation;
mod sessions;
pub mod throttle;

/// What the pages see of the store: a session, and why it could not be read.
pub use crate::store::{SessionRecord, StoreError};
pub use revocation::{Announcement, Revocation, RevocationSink};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use crate::auth::tokens::{TokenService, random_token, token_hash};
use crate::config::endpoints::Endpoint;
use crate::config::{AuthorizationServerConfig, ClientConfig, GrantType};
use crate::scope::ScopeSet;
use crate::store::{CodeRecord, Consumed, GrantRecord, RefreshRecord, Store};
use crate::telemetry::audit::{self, Event};
use authorize::AuthorizationRequest;
use clients::{AuthFailure, ClientRegistry};

/// RFC 6749 §5.2 error codes (plus the RFC 6749 §4.1.2.1 ones the token
/// endpoint can also meet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    ServerError,
    TemporarilyUnavailable,
    /// Too many failed client authentications (RFC 8628 §3.5's code, the
    /// closest the OAuth registry has; sent with 429 and `Retry-After`).
    SlowDown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::SlowDown => "slow_down",
        }
    }
}

/// An error response of the token, revocation or introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: &'static str,
    /// Whether the client tried HTTP Basic authentication, in which case an
    /// `invalid_client` answer is a 401 with a `Basic` challenge (§5.2).
    pub basic_auth: bool,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: &'static str) -> OAuthError {
        OAuthError { code, description, basic_auth: false }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "token endpoint could not reach the store");
        OAuthError::new(ErrorCode::TemporarilyUnavailable, "The authorization server is temporarily unavailable")
    }
}

/// The parameters of a form-encoded request: each at most once (RFC 6749
/// §3.1), and a parameter sent without a value is treated as omitted.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(form: &[u8]) -> Result<Params, OAuthError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(form) {
            if map.contains_key(k.as_ref()) {
                return Err(OAuthError::new(ErrorCode::InvalidRequest, "A request parameter is repeated"));
            }
            map.insert(k.into_owned(), v.into_owned());
        }
        map.retain(|_, v| !v.is_empty());
        Ok(Params(map))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Credentials a client presented: from the `Authorization: Basic` header
/// or from `client_id`/`client_secret` in the body, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl BasicCredentials {
    /// The credentials of an `Authorization: Basic` value (RFC 6749
    /// §2.3.1: the id and secret are form-urlencoded, then joined with `:`
    /// and base64-encoded).
    pub fn parse(encoded: &str) -> Result<BasicCredentials, MalformedBasic> {
        let decoded = B64.decode(encoded).map_err(|_| MalformedBasic)?;
        let decoded = String::from_utf8(decoded).map_err(|_| MalformedBasic)?;
        let (id, secret) = decoded.split_once(':').ok_or(MalformedBasic)?;
        let unescape = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| MalformedBasic)
        };
        let (client_id, client_secret) = (unescape(id)?, unescape(secret)?);
        if client_id.is_empty() {
            return Err(MalformedBasic);
        }
        Ok(BasicCredentials { client_id, client_secret })
    }
}

/// An `Authorization: Basic` header that cannot be read as client
/// credentials: sent twice, not base64, not UTF-8, no `:`, a bad escape,
/// or an empty client id. The client is told only that authentication
/// failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed Basic credentials")]
pub struct MalformedBasic;

/// Who a request to a client-authenticated endpoint says it is, and where
/// it came from.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The `Authorization: Basic` credentials, if any (`Err`: malformed).
    pub basic: Option<Result<BasicCredentials, MalformedBasic>>,
    /// The client's address (behind trusted proxies, the one they vouch
    /// for): failed attempts are counted per client and address.
    pub from: IpAddr,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Whom the token speaks for: for the audit log, not the client.
    #[serde(skip)]
    pub subject: String,
}

/// Refresh tokens start with this; they are never accepted as access
/// tokens (the gateway only accepts `pca_` handles and JWTs).
const REFRESH_PREFIX: &str = "pcr_";

/// The token, revocation and introspection endpoints, and the issuing side
/// of the authorization endpoint.
pub struct AuthorizationServer {
    pub clients: Arc<ClientRegistry>,
    pub tokens: Arc<TokenService>,
    revocations: Arc<dyn RevocationSink>,
    config: AuthorizationServerConfig,
    /// The users of the config (`[[users]]`) by name: grants and sessions
    /// of anyone else are refused.
    users: std::collections::HashSet<String>,
}

fn invalid_client(basic_auth: bool) -> OAuthError {
    OAuthError { code: ErrorCode::InvalidClient, description: "Client authentication failed", basic_auth }
}

fn invalid_grant(description: &'static str) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidGrant, description)
}

impl AuthorizationServer {
    pub fn new(
        config: AuthorizationServerConfig,
        users: impl IntoIterator<Item = String>,
        clients: Arc<ClientRegistry>,
        tokens: Arc<TokenService>,
        revocations: Arc<dyn RevocationSink>,
    ) -> Self {
        AuthorizationServer { clients, tokens, revocations, config, users: users.into_iter().collect() }
    }

    /// Whether `subject` is a user of the config.
    pub fn is_user(&self, subject: &str) -> bool {
        self.users.contains(subject)
    }

    /// The users of the config.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(String::as_str)
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.tokens.store()
    }

    /// How often a signing key is rotated in unattended, if at all.
    pub fn key_rotation(&self) -> Option<std::time::Duration> {
        self.config.key_rotation
    }

    /// Now, in the store's terms (Unix seconds), on the tokens' clock.
    fn now(&self) -> i64 {
        self.tokens.clock().unix() as i64
    }

    /// Authenticates the client of a token-endpoint style request (RFC 6749
    /// §2.3.1): exactly one method, and a secret that verifies. A public
    /// client identifies itself with `client_id` alone when
    /// `allow_public` (the grants where PKCE or a refresh token binds it).
    pub async fn authenticate_client(
        &self,
        auth: ClientAuth,
        params: &Params,
        allow_public: bool,
    ) -> Result<Arc<ClientConfig>, OAuthError> {
        let (creds, basic_auth) = match auth.basic {
            Some(_) if params.get("client_secret").is_some() => {
                return Err(OAuthError::new(
                    ErrorCode::InvalidRequest,
                    "Use one client authentication method, not two",
                ));
            }
            // RFC 6749 §3.2.1: a client may name itself in the body too, but
            // it must be the client the credentials are for.
            Some(Ok(c)) if params.get("client_id").is_some_and(|id| id != c.client_id) => {
                return Err(OAuthError::new(
                    ErrorCode::InvalidRequest,
                    "The client_id parameter does not match the authenticated client",
                ));
            }
            Some(Ok(c)) => (c, true),
            Some(Err(MalformedBasic)) => return Err(invalid_client(true)),
            None => match (params.get("client_id"), params.get("client_secret")) {
                (Some(id), Some(secret)) => {
                    (BasicCredentials { client_id: id.to_string(), client_secret: secret.to_string() }, false)
                }
                (Some(id), None) => {
                    return match self.clients.get(id).await {
                        Some(c) if c.public && allow_public => Ok(c),
                        _ => {
                            tracing::info!(client_id = %id, "client authentication failed: no secret");
                            Err(invalid_client(false))
                        }
                    };
                }
                _ => return Err(invalid_client(false)),
            },
        };
        match self.clients.authenticate(&creds.client_id, &creds.client_secret, auth.from).await {
            Ok(client) => Ok(client),
            Err(AuthFailure::Throttled) => {
                tracing::warn!(client_id = %creds.client_id, "client authentication throttled after repeated failures");
                Err(OAuthError::new(ErrorCode::SlowDown, "Too many failed authentication attempts; retry later"))
            }
            Err(failure) => {
                tracing::info!(client_id = %creds.client_id, reason = ?failure, "client authentication failed");
                Err(invalid_client(basic_auth))
            }
        }
    }

    /// The token endpoint (RFC 6749 §3.2). Returns the grant type served
    /// along with the response, for metrics.
    pub async fn token(&self, auth: ClientAuth, params: &Params) -> Result<(GrantType, TokenResponse), OAuthError> {
        // Who the request claims to be, for the audit line of a refusal.
        let claimed = match &auth.basic {
            Some(Ok(c)) => Some(c.client_id.clone()),
            _ => params.get("client_id").map(str::to_owned),
        };
        let result = self.token_grant(auth, params).await;
        match &result {
            Ok((grant, response)) => audit::record(
                Event::TokenIssued,
                audit::Fields {
                    client_id: claimed.as_deref(),
                    subject: Some(&response.subject),
                    grant_type: Some(grant.as_str()),
                    scope: Some(&response.scope),
                    ..Default::default()
                },
            ),
            Err(e) => audit::record(
                Event::TokenRefused,
                audit::Fields {
                    client_id: claimed.as_deref(),
                    grant_type: params.get("grant_type"),
                    reason: Some(e.code.as_str()),
                    ..Default::default()
                },
            ),
        }
        result
    }

    async fn token_grant(&self, auth: ClientAuth, params: &Params) -> Result<(GrantType, TokenResponse), OAuthError> {
        let grant_type = params
            .get("grant_type")
            .ok_or(OAuthError::new(ErrorCode::InvalidRequest, "The grant_type parameter is missing"))?;
        let grant = GrantType::parse(grant_type)
            .ok_or(OAuthError::new(ErrorCode::UnsupportedGrantType, "This grant type is not supported"))?;
        let client = self.authenticate_client(auth, params, grant != GrantType::ClientCredentials).await?;
        if !client.grant_types.contains(&grant) {
            return Err(OAuthError::new(ErrorCode::UnauthorizedClient, "This client may not use this grant type"));
        }
        let response = match grant {
            GrantType::ClientCredentials => self.client_credentials(&client, params).await?,
            GrantType::AuthorizationCode => self.authorization_code(&client, params).await?,
            GrantType::RefreshToken => self.refresh_token(&client, params).await?,
        };
        Ok((grant, response))
    }

    async fn client_credentials(&self, client: &ClientConfig, params: &Params) -> Result<TokenResponse, OAuthError> {
        let scopes = requested_scopes(params, &client.scopes)?;
        // RFC 9068 §2.2: with no resource owner, the subject is the client.
        let issued = self.tokens.issue(&client.client_id, &client.client_id, scopes).await?;
        Ok(TokenResponse {
            access_token: issued.value,
            token_type: "Bearer",
            expires_in: issued.expires_in,
            scope: issued.scopes.to_string(),
            refresh_token: None,
            subject: client.client_id.clone(),
        })
    }

    /// RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6) and replay detection
    /// (OAuth 2.1 §4.1.3: a code used twice revokes what it gave).
    async fn authorization_code(&self, client: &ClientConfig, params: &Params) -> Result<TokenResponse, OAuthError> {
        let code =
            params.get("code").ok_or(OAuthError::new(ErrorCode::InvalidRequest, "The code parameter is missing"))?;
        let verifier = params.get("code_verifier");
        if verifier.is_some_and(|v| !authorize::is_pkce_value(v)) {
            return Err(OAuthError::new(ErrorCode::InvalidRequest, "The code_verifier is malformed"));
        }
        let now = self.now();
        let hash = token_hash(code);
        // Check the request against the code before using it up: a request
        // that does not match changes nothing (it neither burns the code
        // nor, for a stale code, revokes the user's grant).
        let Some((record, used)) = self.store().find_code(&hash).await? else {
            return Err(invalid_grant("The authorization code is invalid"));
        };
        if record.client_id != client.client_id {
            return Err(invalid_grant("The authorization code was issued to another client"));
        }
        if record.redirect_uri_sent && params.get("redirect_uri") != Some(record.redirect_uri.as_str()) {
            return Err(invalid_grant("The redirect_uri does not match the authorization request"));
        }
        match (&record.code_challenge, verifier) {
            (Some(challenge), Some(v)) if authorize::pkce_matches(v, challenge) => {}
            (Some(_), Some(_)) => return Err(invalid_grant("The code_verifier does not match the code_challenge")),
            (Some(_), None) => return Err(invalid_grant("The code_verifier is missing")),
            // RFC 9700 §4.8.2: a verifier for a code issued without a
            // challenge is a PKCE downgrade attempt.
            (None, Some(_)) => return Err(invalid_grant("No code_challenge was sent for this code")),
            (None, None) => {}
        }
        // Consent withdrawn (`portcullis consents revoke`) between the
        // approval and the redemption: the code goes with its grant. Asked
        // before the code is used up, and told after: a grant revoked
        // because a racing request replayed the code is a replay for this
        // one too. (Whoever uses the code up asked before any replay could
        // revoke it.)
        let withdrawn = !used && self.store().grant_is_revoked(&record.grant_id).await?;
        let replayed = match self.store().consume_code(&hash, now).await? {
            Consumed::Consumed(_) => false,
            Consumed::AlreadyUsed(_) => true,
            Consumed::Unknown => return Err(invalid_grant("The authorization code is invalid")),
        };
        if replayed {
            self.revoke_grant(&record.grant_id).await?;
            tracing::warn!(client_id = %client.client_id, "authorization code replayed; its grant is revoked");
            audit::record(
                Event::CodeReplayed,
                audit::Fields {
                    client_id: Some(&client.client_id),
                    subject: Some(&record.subject),
                    ..Default::default()
                },
            );
            return Err(invalid_grant("The authorization code was already used"));
        }
        if withdrawn {
            return Err(invalid_grant("The authorization was withdrawn"));
        }
        if record.expires_at <= now {
            return Err(invalid_grant("The authorization code expired"));
        }
        let scopes = ScopeSet::parse(&record.scope).unwrap_or_default();
        self.issue_for_grant(client, &record.grant_id, &record.subject, scopes.clone(), &scopes).await
    }

    /// RFC 6749 §6 with rotation (RFC 9700 §4.14.2): each refresh token is
    /// good once; presenting a used one revokes its whole family.
    async fn refresh_token(&self, client: &ClientConfig, params: &Params) -> Result<TokenResponse, OAuthError> {
        let token = params
            .get("refresh_token")
            .ok_or(OAuthError::new(ErrorCode::InvalidRequest, "The refresh_token parameter is missing"))?;
        let now = self.now();
        let hash = token_hash(token);
        // Check ownership before consuming, so another client cannot burn
        // (and so revoke) a token it does not own.
        let Some(found) = self.store().find_refresh_token(&hash).await? else {
            return Err(invalid_grant("The refresh token is invalid"));
        };
        if found.client_id != client.client_id {
            return Err(invalid_grant("The refresh token was issued to another client"));
        }
        // RFC 6749 §6: scopes may be narrowed, never widened. Checked before
        // the token is used, so a refused request leaves it usable.
        let granted = ScopeSet::parse(&found.scope).unwrap_or_default();
        let scopes = requested_scopes(params, &granted)?;
        // Before consuming: the first use of a token wins even if a reuse
        // revokes the family a moment later (its tokens then die with it).
        if self.store().grant_is_revoked(&found.grant_id).await? {
            return Err(invalid_grant("The grant behind this refresh token was revoked"));
        }
        // A user removed from the config: refused, not revoked, on a
        // replica whose config may be older or newer than another's (the
        // replica that reloads the removal revokes).
        if !self.is_user(&found.subject) {
            return Err(invalid_grant("The user of this grant is no longer known"));
        }
        let record = match self.store().consume_refresh_token(&hash, now).await? {
            Consumed::Unknown => return Err(invalid_grant("The refresh token is invalid")),
            Consumed::AlreadyUsed(r) => {
                self.revoke_grant(&r.grant_id).await?;
                tracing::warn!(client_id = %client.client_id, "refresh token reused; its family is revoked");
                audit::record(
                    Event::RefreshTokenReused,
                    audit::Fields {
                        client_id: Some(&client.client_id),
                        subject: Some(&r.subject),
                        ..Default::default()
                    },
                );
                return Err(invalid_grant("The refresh token was already used"));
            }
            Consumed::Consumed(r) => r,
        };
        if record.expires_at <= now {
            return Err(invalid_grant("The refresh token expired"));
        }
        // The new refresh token keeps the presented one's scope (RFC 6749 §6),
        // even when this access token was narrowed.
        self.issue_for_grant(client, &record.grant_id, &record.subject, scopes, &granted).await
    }

    /// Revokes a grant in the store and drops its access tokens from this
    /// instance's validation cache, so no later request sees them.
    async fn revoke_grant(&self, grant_id: &str) -> Result<(), StoreError> {
        let jtis = self.store().revoke_grant(grant_id, self.now()).await?;
        self.revocations.revoked(Revocation::Grant(jtis)).await;
        Ok(())
    }

    /// An access token (and, for clients allowed to refresh, a refresh
    /// token) under `grant_id`, recorded so the grant can be revoked whole.
    async fn issue_for_grant(
        &self,
        client: &ClientConfig,
        grant_id: &str,
        subject: &str,
        scopes: ScopeSet,
        refresh_scope: &ScopeSet,
    ) -> Result<TokenResponse, OAuthError> {
        let issued = self.tokens.issue(&client.client_id, subject, scopes).await?;
        let exp = self.now() + issued.expires_in as i64;
        self.store().record_grant_access_token(grant_id, &issued.jti, exp).await?;
        let refresh_token = if client.grant_types.contains(&GrantType::RefreshToken) {
            let value = format!("{REFRESH_PREFIX}{}", random_token());
            let now = self.now();
            self.store()
                .save_refresh_token(&RefreshRecord {
                    token_hash: token_hash(&value),
                    grant_id: grant_id.to_string(),
                    client_id: client.client_id.clone(),
                    subject: subject.to_string(),
                    scope: refresh_scope.to_string(),
                    issued_at: now,
                    expires_at: now + self.config.refresh_token_ttl.as_secs() as i64,
                    used: false,
                })
                .await?;
            Some(value)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token: issued.value,
            token_type: "Bearer",
            expires_in: issued.expires_in,
            scope: issued.scopes.to_string(),
            refresh_token,
            subject: subject.to_string(),
        })
    }

    /// Records a user's approval and mints the one-time code for it.
    pub async fn issue_code(&self, request: &AuthorizationRequest, subject: &str) -> Result<String, StoreError> {
        let now = self.now();
        let grant_id = random_token();
        self.store()
            .create_grant(&GrantRecord {
                grant_id: grant_id.clone(),
                client_id: request.client.client_id.clone(),
                subject: subject.to_string(),
                scope: request.scopes.to_string(),
                created_at: now,
                expires_at: now + self.config.refresh_token_ttl.as_secs() as i64,
            })
            .await?;
        let code = random_token();
        self.store()
            .save_code(&CodeRecord {
                code_hash: token_hash(&code),
                grant_id,
                client_id: request.client.client_id.clone(),
                subject: subject.to_string(),
                redirect_uri: request.redirect_uri.clone(),
                redirect_uri_sent: request.redirect_uri_sent,
                scope: request.scopes.to_string(),
                code_challenge: request.code_challenge.clone(),
                expires_at: now + self.config.authorization_code_ttl.as_secs() as i64,
            })
            .await?;
        Ok(code)
    }

    /// The revocation endpoint (RFC 7009 §2.1). Unknown tokens, and tokens
    /// issued to another client, are answered like success (§2.2) but left
    /// alone. Revoking a refresh token revokes its whole grant, access
    /// tokens included.
    pub async fn revoke(&self, auth: ClientAuth, params: &Params) -> Result<(), OAuthError> {
        let client = self.authenticate_client(auth, params, true).await?;
        let token =
            params.get("token").ok_or(OAuthError::new(ErrorCode::InvalidRequest, "The token parameter is missing"))?;
        if token.starts_with(REFRESH_PREFIX) {
            let Some(record) = self.store().find_refresh_token(&token_hash(token)).await? else { return Ok(()) };
            if record.client_id != client.client_id {
                tracing::info!(client_id = %client.client_id, "revocation of another client's token ignored");
                return Ok(());
            }
            self.revoke_grant(&record.grant_id).await?;
            audit::record(
                Event::TokenRevoked,
                audit::Fields {
                    client_id: Some(&client.client_id),
                    subject: Some(&record.subject),
                    token_type: Some("refresh_token"),
                    reason: Some("revoked with its grant"),
                    ..Default::default()
                },
            );
            return Ok(());
        }
        let Some(owner) = self.tokens.inspect(token).await? else {
            return Ok(());
        };
        if owner.client_id != client.client_id {
            tracing::info!(client_id = %client.client_id, "revocation of another client's token ignored");
            return Ok(());
        }
        self.store().revoke(&owner.jti, owner.expires_at as i64).await?;
        self.revocations.revoked(Revocation::Token(token_hash(token))).await;
        audit::record(
            Event::TokenRevoked,
            audit::Fields {
                client_id: Some(&client.client_id),
                token_type: Some("access_token"),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// The introspection endpoint (RFC 7662 §2). A client learns about its
    /// own tokens only; anything else, and anything unknown, expired or
    /// revoked, is `{"active": false}`.
    pub async fn introspect(&self, auth: ClientAuth, params: &Params) -> Result<serde_json::Value, OAuthError> {
        let client = self.authenticate_client(auth, params, false).await?;
        let token =
            params.get("token").ok_or(OAuthError::new(ErrorCode::InvalidRequest, "The token parameter is missing"))?;
        let inactive = serde_json::json!({ "active": false });
        let now = self.now();
        if token.starts_with(REFRESH_PREFIX) {
            let Some(r) = self.store().find_refresh_token(&token_hash(token)).await? else { return Ok(inactive) };
            if r.client_id != client.client_id
                || r.used
                || r.expires_at <= now
                || self.store().grant_is_revoked(&r.grant_id).await?
            {
                return Ok(inactive);
            }
            return Ok(serde_json::json!({
                "active": true,
                "token_type": "refresh_token",
                "client_id": r.client_id,
                "sub": r.subject,
                "username": r.subject,
                "scope": r.scope,
                "iat": r.issued_at,
                "exp": r.expires_at,
                "iss": self.config.issuer,
            }));
        }
        match self.tokens.verify(token).await? {
            Ok(id) if id.client_id == client.client_id => Ok(serde_json::json!({
                "active": true,
                "token_type": "Bearer",
                "client_id": id.client_id,
                "sub": id.subject,
                "username": id.subject,
                "scope": id.scopes.to_string(),
                "exp": id.expires_at,
                "jti": id.jti,
                "iss": self.config.issuer,
                "aud": self.config.audience,
            })),
            _ => Ok(inactive),
        }
    }

    /// Authorization server metadata (RFC 8414 §2).
    pub fn metadata(&self) -> serde_json::Value {
        let issuer = &self.config.issuer;
        let mut scopes: Vec<&str> = self.clients.configured().flat_map(|c| c.scopes.iter()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let auth_methods = ["client_secret_basic", "client_secret_post"];
        serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": Endpoint::Authorize.url(issuer),
            "token_endpoint": Endpoint::Token.url(issuer),
            "jwks_uri": Endpoint::Jwks.url(issuer),
            "revocation_endpoint": Endpoint::Revocation.url(issuer),
            "introspection_endpoint": Endpoint::Introspection.url(issuer),
            "scopes_supported": scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": auth_methods,
        })
    }
}

/// The `scope` parameter narrowed within `allowed`, or all of `allowed`
/// when omitted.
fn requested_scopes(params: &Params, allowed: &ScopeSet) -> Result<ScopeSet, OAuthError> {
    match params.get("scope") {
        None => Ok(allowed.clone()),
        Some(s) => {
            // RFC 6749 §3.3: `scope = scope-token *( SP scope-token )`, so a
            // value of spaces alone is malformed, not "no scope".
            let requested = ScopeSet::parse(s)
                .filter(|set| !set.is_empty())
                .ok_or(OAuthError::new(ErrorCode::InvalidScope, "The scope parameter is malformed"))?;
            if !requested.is_subset(allowed) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    "A requested scope is not allowed for this client",
                ));
            }
            Ok(requested)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let enc = B64.encode("my%20app:s%3Acret+1");
        let c = BasicCredentials::parse(&enc).unwrap();
        assert_eq!(c.client_id, "my app");
        assert_eq!(c.client_secret, "s:cret 1");
        assert!(BasicCredentials::parse("!!!").is_err());
        assert!(BasicCredentials::parse(&B64.encode("nocolon")).is_err());
        assert!(BasicCredentials::parse(&B64.encode(":secret")).is_err());
    }
}
