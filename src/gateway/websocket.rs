//! WebSockets through a route (RFC 6455; over HTTP/2, RFC 8441's extended
//! `CONNECT`, relayed to the upstream as HTTP/1.1): the handshake is authorised as
//! any request is (a browser cannot set headers on one, so the
//! `access_token` query parameter is what its page sends, where the route
//! allows it), sent upstream, and on the upstream's `101` answered with a
//! `101` of the gateway's own. The relay then runs (`proxy::tunnel`) until
//! either side hangs up, or the gateway ends it: the token it was opened
//! with expired (at its `exp`) or was revoked (at once: every invalidation
//! of the validation cache makes each tunnel ask about its token again),
//! the route's `idle_timeout` passed with nothing moving, or the gateway
//! is shutting down.
//!
//! Only a `101` that proves the upstream read the handshake (its
//! `Sec-WebSocket-Accept` answers the key; `proxy` checks it) opens a
//! tunnel: an upstream that answers anything else is relayed as an
//! answer, and its connection carries nothing more.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Response, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::auth::cache::{TokenValidator, Verdict, WorkerCache};
use crate::auth::tokens::Rejection;
use crate::config::RouteConfig;
use crate::gateway::Refusal;
use crate::http::Body;
use crate::http::websocket::{asks_for_websocket, handshake_problem};
use crate::proxy::tunnel::{self, Ending, Relay, Summary};
use crate::telemetry::metrics::Metrics;

/// A WebSocket handshake the route accepts: the client's side of the
/// switch to come.
pub(super) struct Handshake {
    client: OnUpgrade,
    /// It came as HTTP/2's extended `CONNECT` (RFC 8441), answered `200`
    /// rather than `101`.
    over_h2: bool,
}

/// The handshake `parts` asks for, if any. hyper marks every HTTP/1.1
/// request with an `Upgrade` field (and only those) with an `OnUpgrade`,
/// so a plain request costs one look at its empty extensions. An upgrade
/// to anything but `websocket` is not one: its `Upgrade` is removed like
/// any hop-by-hop field, and the request goes as a plain one.
///
/// Over HTTP/2 a WebSocket is a `CONNECT` with `:protocol` `websocket`
/// (RFC 8441), which the upstream is sent as HTTP/1.1's handshake: the
/// request becomes a `GET` (the route's scopes for `GET` apply, as to any
/// handshake), with a `Sec-WebSocket-Key` of the gateway's, which the
/// upstream's `101` must answer.
pub(super) fn handshake(head: Head<'_>, body: &Incoming, route: &RouteConfig) -> Result<Option<Handshake>, Refusal> {
    if head.extensions.get::<OnUpgrade>().is_none() {
        return Ok(None);
    }
    if head.version == http::Version::HTTP_2 {
        return extended_connect(head, route);
    }
    if !asks_for_websocket(head.headers) {
        return Ok(None);
    }
    if !route.websockets {
        return Err(Refusal::UpgradeForbidden);
    }
    if let Some(problem) = handshake_problem(head.method, head.headers, http_body::Body::is_end_stream(body)) {
        return Err(Refusal::BadRequest(problem));
    }
    Ok(head.extensions.remove::<OnUpgrade>().map(|client| Handshake { client, over_h2: false }))
}

/// The parts of a request's head a handshake reads, and may change (the
/// rest, its URI, stays borrowed by the caller).
pub(super) struct Head<'a> {
    pub(super) version: http::Version,
    pub(super) method: &'a mut http::Method,
    pub(super) headers: &'a mut http::HeaderMap,
    pub(super) extensions: &'a mut http::Extensions,
}

/// An HTTP/2 `CONNECT` (hyper marks each with an `OnUpgrade`) that opens a
/// WebSocket (RFC 8441 §4), made the `GET` the upstream is sent. Any other
/// `CONNECT` is left as it is, to be refused as a method.
fn extended_connect(head: Head<'_>, route: &RouteConfig) -> Result<Option<Handshake>, Refusal> {
    let websocket = head.extensions.get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str() == "websocket");
    if *head.method != http::Method::CONNECT || !websocket {
        return Ok(None);
    }
    *head.method = http::Method::GET;
    if !route.websockets {
        return Err(Refusal::UpgradeForbidden);
    }
    if head.headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(Refusal::BadRequest("A WebSocket handshake needs Sec-WebSocket-Version: 13"));
    }
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 16]>());
    let key = HeaderValue::from_str(&key).map_err(|_| Refusal::BadRequest("The WebSocket key could not be made"))?;
    head.headers.insert(header::SEC_WEBSOCKET_KEY, key);
    Ok(head.extensions.remove::<OnUpgrade>().map(|client| Handshake { client, over_h2: true }))
}

/// A token a tunnel was opened with, watched while it lasts.
pub(super) struct Watched {
    pub(super) validator: Arc<TokenValidator>,
    pub(super) token: String,
    /// Its `exp`, in Unix seconds.
    pub(super) expires_at: u64,
}

/// A WebSocket ready to relay once the client's connection is handed
/// over, which happens after its `101` is sent: the response carries it
/// there (`Tunnel::take`), and the server runs it.
pub struct Tunnel {
    client: OnUpgrade,
    upstream: tunnel::Upstream,
    relay: Relay,
    watched: Option<Watched>,
    route: String,
    metrics: Arc<Metrics>,
}

/// How a tunnel rides in a response's extensions, which must be `Clone`.
#[derive(Clone)]
struct Slot(Arc<Mutex<Option<Tunnel>>>);

impl Tunnel {
    /// The `101` that answers the handshake, from the upstream's (whose
    /// hop-by-hop fields are gone), carrying the tunnel.
    pub(super) fn respond(
        handshake: Handshake,
        switched: crate::proxy::Switched,
        route: &super::Route,
        watched: Option<Watched>,
        metrics: Arc<Metrics>,
    ) -> Response<Body> {
        let crate::proxy::Switched { head, upstream, .. } = switched;
        let relay = Relay {
            idle: route.config.idle_timeout,
            extensions: head.headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS),
            to_upstream: route.metrics.request_bytes.clone(),
            from_upstream: route.metrics.response_bytes.clone(),
        };
        let tunnel =
            Tunnel { client: handshake.client, upstream, relay, watched, route: route.config.name.clone(), metrics };
        let mut res = Response::from_parts(head, crate::http::empty());
        if handshake.over_h2 {
            // RFC 8441 §5: a 2xx, and no key to answer.
            *res.status_mut() = http::StatusCode::OK;
            res.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
        } else {
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            res.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        res.extensions_mut().insert(Slot(Arc::new(Mutex::new(Some(tunnel)))));
        res
    }

    /// The tunnel `res` carries, if it answers a WebSocket handshake.
    pub fn take(res: &mut Response<Body>) -> Option<Tunnel> {
        let slot = res.extensions_mut().remove::<Slot>()?;
        slot.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Relays until the tunnel ends (`shutdown` resolving ends it too),
    /// counting it in the metrics.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Summary {
        let Tunnel { client, upstream, relay, watched, route, metrics } = self;
        let client = match client.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, route, "the client's connection was not handed over");
                return Summary { ended: tunnel::Ended::Error, bytes_from_client: 0, bytes_to_client: 0 };
            }
        };
        let open = metrics.websockets_open.with_label_values(&[&route]);
        open.inc();
        metrics.websockets.with_label_values(&[&route]).inc();
        let ending = async {
            tokio::select! {
                ending = watch(watched) => ending,
                () = shutdown => Ending::Shutdown,
            }
        };
        let summary = tunnel::relay(TokioIo::new(client), upstream, relay, ending).await;
        open.dec();
        metrics.websockets_closed.with_label_values(&[&route, summary.ended.as_str()]).inc();
        summary
    }
}

/// How long a tunnel sleeps at most before it looks at the wall clock
/// again: a clock stepped forward past `exp` ends it within this.
const EXP_RECHECK: Duration = Duration::from_secs(60);

/// Resolves at `exp` (unix seconds) by the wall clock `now` reads, looked
/// at again at least every [`EXP_RECHECK`]: the moment worked out when the
/// tunnel opened is on the monotonic clock, which a step of the wall clock
/// does not move.
async fn until_exp(now: impl Fn() -> SystemTime, expires_at: u64) {
    let Some(exp) = UNIX_EPOCH.checked_add(Duration::from_secs(expires_at)) else {
        return std::future::pending().await;
    };
    loop {
        let left = exp.duration_since(now()).unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(EXP_RECHECK)).await;
    }
}

/// Resolves when the token expires or stops being valid; never for a
/// public route's tunnel.
async fn watch(watched: Option<Watched>) -> Ending {
    let Some(Watched { validator, token, expires_at }) = watched else {
        return std::future::pending().await;
    };
    let expiry = until_exp(|| validator.now(), expires_at);
    tokio::pin!(expiry);
    let mut told = validator.watch();
    // A worker cache of its own: the tunnel's task is not the worker's
    // request, and the shared cache is what revocations reach.
    let cache = WorkerCache::default();
    loop {
        // Asked of the validator in force, whose caches the revocation
        // reached; a store that cannot answer is asked again in a second.
        // Asked first before any change is told, too: a revocation that
        // landed between the handshake's check and the subscription above
        // would otherwise go unseen until `exp`.
        loop {
            match validator.in_force().validate(&token, &cache, Instant::now()).await {
                Ok(Verdict::Valid(_)) => break,
                Ok(Verdict::Invalid(Rejection::Expired)) => return Ending::Expired,
                Ok(Verdict::Invalid(_)) => return Ending::Revoked,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a WebSocket's token; trying again in a second");
                    tokio::select! {
                        () = &mut expiry => return Ending::Expired,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tokio::select! {
            () = &mut expiry => return Ending::Expired,
            changed = told.changed() => {
                if changed.is_err() {
                    // The sender went with its validators: nothing more
                    // will be told, and expiry still applies.
                    (&mut expiry).await;
                    return Ending::Expired;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A tunnel whose token has an hour left ends within a minute of the
    /// wall clock stepping two hours forward, not an hour later.
    #[tokio::test(start_paused = true)]
    async fn a_tunnel_ends_within_a_minute_of_the_clock_stepping_past_exp() {
        let start = SystemTime::now();
        let step = Arc::new(AtomicU64::new(0));
        let now = {
            let step = step.clone();
            move || start + Duration::from_secs(step.load(Ordering::SeqCst))
        };
        let exp = start.duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600;
        let mut ending = tokio::spawn(until_exp(now, exp));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!ending.is_finished(), "not before exp");
        step.store(2 * 3600, Ordering::SeqCst);
        tokio::time::timeout(EXP_RECHECK + Duration::from_secs(1), &mut ending)
            .await
            .expect("ended within a minute of the step")
            .expect("no panic");
    }
}
