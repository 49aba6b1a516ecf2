//! The admin server (axum): `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::metrics::S3Metrics;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The backing store, probed by `/readyz`.
    pub client: aws_sdk_s3::Client,
    /// Bucket probed with HeadBucket; empty: ListBuckets.
    pub health_bucket: String,
    /// Every metric of the process.
    pub registry: Arc<Registry>,
    /// The S3 endpoint's metrics (for `gateway_backend_up`).
    pub metrics: S3Metrics,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Alive: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the backing store answers.
async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match crate::backend::probe(&s.client, &s.health_bucket).await {
        Ok(()) => {
            s.metrics.backend_up.set(1);
            (StatusCode::OK, "ready\n".to_owned())
        }
        Err(msg) => {
            s.metrics.backend_up.set(0);
            tracing::warn!(%msg, "not ready: backing store probe failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: backing store: {msg}\n"),
            )
        }
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&s.registry),
    )
}
