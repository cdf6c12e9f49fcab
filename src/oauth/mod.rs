//! The authorization server's protocol logic, free of HTTP types: request
//! parameters in, a token response or an RFC 6749 §5.2 error out. The HTTP
//! adapter (`crate::authz`) only moves bytes in and out of this module.

pub mod clients;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{AuthorizationServerConfig, GrantType};
use crate::scope::ScopeSet;
use crate::store::StoreError;
use crate::tokens::TokenService;
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
        OAuthError {
            code,
            description,
            basic_auth: false,
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "token endpoint could not reach the store");
        OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "The authorization server is temporarily unavailable",
        )
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
                return Err(OAuthError::new(
                    ErrorCode::InvalidRequest,
                    "A request parameter is repeated",
                ));
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

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
}

/// The token and revocation endpoints.
pub struct AuthorizationServer {
    pub clients: Arc<ClientRegistry>,
    pub tokens: Arc<TokenService>,
    config: AuthorizationServerConfig,
}

fn invalid_client(basic_auth: bool) -> OAuthError {
    OAuthError {
        code: ErrorCode::InvalidClient,
        description: "Client authentication failed",
        basic_auth,
    }
}

impl AuthorizationServer {
    pub fn new(
        config: AuthorizationServerConfig,
        clients: Arc<ClientRegistry>,
        tokens: Arc<TokenService>,
    ) -> Self {
        AuthorizationServer {
            clients,
            tokens,
            config,
        }
    }

    /// Authenticates the client of a token-endpoint style request (RFC 6749
    /// §2.3.1): exactly one method, and a secret that verifies.
    pub async fn authenticate_client(
        &self,
        basic: Option<Result<BasicCredentials, ()>>,
        params: &Params,
    ) -> Result<Arc<crate::config::ClientConfig>, OAuthError> {
        let (creds, basic_auth) = match basic {
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
            Some(Err(())) => return Err(invalid_client(true)),
            None => match (params.get("client_id"), params.get("client_secret")) {
                (Some(id), Some(secret)) => (
                    BasicCredentials {
                        client_id: id.to_string(),
                        client_secret: secret.to_string(),
                    },
                    false,
                ),
                _ => return Err(invalid_client(false)),
            },
        };
        match self
            .clients
            .authenticate(&creds.client_id, &creds.client_secret)
            .await
        {
            Ok(client) => Ok(client),
            Err(AuthFailure::Throttled) => {
                tracing::warn!(client_id = %creds.client_id, "client authentication throttled after repeated failures");
                Err(OAuthError::new(
                    ErrorCode::SlowDown,
                    "Too many failed authentication attempts; retry later",
                ))
            }
            Err(failure) => {
                tracing::info!(client_id = %creds.client_id, reason = ?failure, "client authentication failed");
                Err(invalid_client(basic_auth))
            }
        }
    }

    /// The token endpoint (RFC 6749 §3.2). Returns the grant type served
    /// along with the response, for metrics.
    pub async fn token(
        &self,
        basic: Option<Result<BasicCredentials, ()>>,
        params: &Params,
    ) -> Result<(GrantType, TokenResponse), OAuthError> {
        let grant_type = params.get("grant_type").ok_or(OAuthError::new(
            ErrorCode::InvalidRequest,
            "The grant_type parameter is missing",
        ))?;
        let client = self.authenticate_client(basic, params).await?;
        let grant = match GrantType::parse(grant_type) {
            Some(GrantType::ClientCredentials) => GrantType::ClientCredentials,
            _ => {
                return Err(OAuthError::new(
                    ErrorCode::UnsupportedGrantType,
                    "This grant type is not supported",
                ));
            }
        };
        if !client.grant_types.contains(&grant) {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "This client may not use this grant type",
            ));
        }
        let scopes = match params.get("scope") {
            None => client.scopes.clone(),
            Some(s) => {
                // RFC 6749 §3.3: `scope = scope-token *( SP scope-token )`,
                // so a value of spaces alone is malformed, not "no scope".
                let requested =
                    ScopeSet::parse(s)
                        .filter(|set| !set.is_empty())
                        .ok_or(OAuthError::new(
                            ErrorCode::InvalidScope,
                            "The scope parameter is malformed",
                        ))?;
                if !requested.is_subset(&client.scopes) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        "A requested scope is not allowed for this client",
                    ));
                }
                requested
            }
        };
        // RFC 9068 §2.2: with no resource owner, the subject is the client.
        let issued = self
            .tokens
            .issue(&client.client_id, &client.client_id, scopes)
            .await?;
        tracing::info!(client_id = %client.client_id, grant_type = grant.as_str(), scope = %issued.scopes, "access token issued");
        Ok((
            grant,
            TokenResponse {
                access_token: issued.value,
                token_type: "Bearer",
                expires_in: issued.expires_in,
                scope: issued.scopes.to_string(),
            },
        ))
    }

    /// The revocation endpoint (RFC 7009 §2.1). Returns the token to forget
    /// from the validation cache when one was revoked. Unknown tokens, and
    /// tokens issued to another client, are answered like success (§2.2) but
    /// left alone.
    pub async fn revoke(
        &self,
        basic: Option<Result<BasicCredentials, ()>>,
        params: &Params,
    ) -> Result<Option<String>, OAuthError> {
        let client = self.authenticate_client(basic, params).await?;
        let token = params.get("token").ok_or(OAuthError::new(
            ErrorCode::InvalidRequest,
            "The token parameter is missing",
        ))?;
        let Some(owner) = self.tokens.inspect(token).await? else {
            return Ok(None);
        };
        if owner.client_id != client.client_id {
            tracing::info!(client_id = %client.client_id, "revocation of another client's token ignored");
            return Ok(None);
        }
        self.tokens
            .store()
            .revoke(&owner.jti, owner.expires_at as i64)
            .await?;
        tracing::info!(client_id = %client.client_id, "access token revoked");
        Ok(Some(token.to_string()))
    }

    /// Authorization server metadata (RFC 8414 §2).
    pub fn metadata(&self) -> serde_json::Value {
        let issuer = &self.config.issuer;
        let mut scopes: Vec<&str> = self.clients.all().flat_map(|c| c.scopes.iter()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        serde_json::json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/oauth/token"),
            "jwks_uri": format!("{issuer}/oauth/jwks"),
            "revocation_endpoint": format!("{issuer}/oauth/revoke"),
            "scopes_supported": scopes,
            "response_types_supported": [],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })
    }
}
