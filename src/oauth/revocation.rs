//! How the authorization server announces that access tokens stopped being
//! valid, without knowing who listens. Start-up wires the validation cache
//! in (`server`), so a revoked token is refused by the next request on this
//! instance, and announces it to the other replicas through the store. The
//! protocol logic stays free of the cache and its types.

use std::future::Future;
use std::pin::Pin;

/// What was revoked: the store's type, since the same event travels to the
/// other replicas through it.
pub use crate::store::Revocation;

/// The future a sink returns: resolved once every later request on this
/// instance sees the revocation.
pub type Announcement<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Whoever must stop honouring revoked tokens.
pub trait RevocationSink: Send + Sync {
    fn revoked(&self, what: Revocation) -> Announcement<'_>;
}
