//! What replicas that share a store tell each other, and what this one does
//! about it: its own revocations are evicted from its cache and announced
//! (`CacheEviction`); the others' notices evict, forget a client and its
//! tokens, or have the keys read again (`follow`); and the signing keys are kept: read
//! again now and then, rotated on schedule, deleted once expired
//! (`keep_keys`). With SQLite nobody else is told and nothing is heard;
//! the rereads carry changes the CLI makes.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::cache::TokenValidator;
use crate::auth::keys::{self, PUBLISH_LEAD, REREAD};
use crate::gateway::Gateway;
use crate::oauth::{Announcement, Revocation, RevocationSink};
use crate::store::{Heard, Notice, ReplicaFeed, Store};
use crate::telemetry::metrics::Metrics;

/// The validation cache hears the authorization server's revocations, so a
/// revoked token is refused by the next request on this instance; then the
/// store tells the other replicas (`follow` is their side).
pub(super) struct CacheEviction {
    pub(super) validator: Arc<TokenValidator>,
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
}

impl RevocationSink for CacheEviction {
    fn revoked(&self, what: Revocation) -> Announcement<'_> {
        Box::pin(async move {
            forget(&self.validator, what.clone()).await;
            // The revocation is in the store already: a replica that does
            // not hear of it refuses the token once its cached entry ends
            // (`cache.ttl`), or at once if it has none.
            announce(&*self.store, &Notice::Revoked(what), &self.metrics).await;
        })
    }
}

/// Tells the other replicas, counting whether it could.
pub(super) async fn announce(store: &dyn Store, what: &Notice, metrics: &Metrics) {
    let event = match store.announce(what).await {
        Ok(()) => "announced",
        Err(e) => {
            tracing::error!(error = %e, "could not tell the other replicas of a change");
            "announce_failed"
        }
    };
    metrics.replica_notices.with_label_values(&[event]).inc();
}

async fn forget(validator: &Arc<TokenValidator>, what: Revocation) {
    match what {
        Revocation::Token(hash) => validator.forget(hash).await,
        Revocation::Grant(jtis) => validator.forget_jtis(jtis).await,
    }
}

/// The other replicas' notices, acted on in the gateway in force as they
/// come; when the feed was cut, everything cached is forgotten and the keys
/// read again, since anything may have been missed meanwhile.
pub(super) async fn follow(mut feed: Box<dyn ReplicaFeed>, gateway: Arc<ArcSwap<Gateway>>, metrics: Arc<Metrics>) {
    loop {
        let heard = feed.next().await;
        let gateway = gateway.load_full();
        let server = gateway.authz.server();
        let event = match heard {
            Heard::Told(Notice::Revoked(what)) => {
                forget(&gateway.validator, what).await;
                "heard"
            }
            Heard::Told(Notice::Client(client_id)) => {
                // Removed or re-keyed: its tokens may be revoked with it.
                server.clients.forget(&client_id).await;
                gateway.validator.forget_client(&client_id);
                "heard"
            }
            Heard::Told(Notice::Keys) => {
                reread_keys(&gateway).await;
                "heard"
            }
            Heard::Resumed => {
                gateway.validator.forget_all().await;
                server.clients.forget_all();
                reread_keys(&gateway).await;
                "resumed"
            }
        };
        metrics.replica_notices.with_label_values(&[event]).inc();
    }
}

async fn reread_keys(gateway: &Gateway) {
    match gateway.authz.server().tokens.reread_keys().await {
        Ok(true) => tracing::info!("the signing keys changed; now holding the store's"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "could not read the signing keys again; keeping those held"),
    }
}

/// Every `REREAD`: rotates a new signing key in when the newest is older
/// than `authorization_server.key_rotation` (one replica does, the others
/// find it done), reads the keys again, and deletes those expired. Each
/// change is announced, so the others read the keys at once.
pub(super) async fn keep_keys(gateway: Arc<ArcSwap<Gateway>>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(REREAD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gateway = gateway.load_full();
        let server = gateway.authz.server();
        let (tokens, store) = (&server.tokens, server.tokens.store());
        let now = tokens.clock().unix();
        if let Some(period) = server.key_rotation() {
            let newest = tokens.keys().keys().iter().map(|k| k.created_at).max().unwrap_or(0);
            if newest.saturating_add(period.as_secs()) <= now {
                let since = now.saturating_sub(period.as_secs());
                match keys::rotate(&**store, now, PUBLISH_LEAD, Some(since)).await {
                    Ok(Some(key)) => {
                        tracing::info!(kid = %key.kid, activates_at = key.activates_at, "rotated in a new signing key (authorization_server.key_rotation)");
                        announce(&**store, &Notice::Keys, &metrics).await;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "could not rotate the signing key"),
                }
            }
        }
        reread_keys(&gateway).await;
        for kid in tokens.keys().expired(now) {
            match store.delete_signing_key(kid).await {
                Ok(true) => {
                    tracing::info!(kid, "deleted a signing key the tokens it signed have outlived");
                    announce(&**store, &Notice::Keys, &metrics).await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, kid, "could not delete an expired signing key"),
            }
        }
    }
}
