//! How the authorization server announces that access tokens stopped being
//! valid, without knowing who listens. Start-up wires the validation cache
//! in (`server`), so a revoked token is refused by the next request on this
//! instance; with several replicas the same events will travel to the
//! others. The protocol logic stays free of the cache and its types.

use std::future::Future;
use std::pin::Pin;

/// What was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// One access token, named by its SHA-256 hash: an announcement never
    /// carries a token.
    Token([u8; 32]),
    /// The access tokens with these `jti`s: a grant ended (a refresh token
    /// reused, a code replayed, a refresh token revoked).
    Grant(Vec<String>),
}

/// The future a sink returns: resolved once every later request on this
/// instance sees the revocation.
pub type Heard<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Whoever must stop honouring revoked tokens.
pub trait RevocationSink: Send + Sync {
    fn revoked(&self, what: Revocation) -> Heard<'_>;
}
