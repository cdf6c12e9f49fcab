//! The admin listener: `/metrics` (Prometheus text), `/healthz` (liveness)
//! and `/readyz` (the store answers and the process is not draining). It is
//! never served on the public listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use arc_swap::ArcSwap;

use crate::gateway::Gateway;
use crate::http::{Body, error_json, full};
use crate::server::Reloader;
use crate::store::Store;
use crate::telemetry::metrics::Metrics;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub reloader: Arc<Reloader>,
    pub draining: Arc<AtomicBool>,
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl Admin {
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        if req.uri().path() == "/reload" {
            if req.method() != Method::POST {
                let mut res = error_json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Use POST");
                res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
                return res;
            }
            return match self.reloader.reload().await {
                Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "reloaded\n"),
                Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, "text/plain; charset=utf-8", format!("{e}\n")),
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = error_json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Use GET");
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match req.uri().path() {
            "/metrics" => {
                let entries = self.gateway.load().validator.entry_count();
                self.metrics.cache_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
                text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render())
            }
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::SeqCst) {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "draining\n");
                }
                match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
                    Ok(Ok(())) => text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "readiness: store unavailable");
                        text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "store unavailable\n")
                    }
                    Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "store timed out\n"),
                }
            }
            _ => error_json(
                StatusCode::NOT_FOUND,
                "not_found",
                "Admin endpoints: /metrics, /healthz, /readyz, POST /reload",
            ),
        }
    }
}
