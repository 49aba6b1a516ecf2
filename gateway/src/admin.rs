//! The admin server (axum): `/healthz`, `/readyz`, `/metrics`, and the tier's dead letters:
//!
//! - `GET /admin/dead-letters`: acknowledged writes the bucket refused, as JSON
//!   (`bucket`, `key`, `seq`, `kind`, `size`, `error`, `since_unix`).
//! - `POST /admin/dead-letters/retry?bucket=B&key=K`: persist it again now (without `key`:
//!   every dead letter of `B`; without both: all of them).
//! - `POST /admin/dead-letters/discard?bucket=B&key=K`: give the write up (the key then reads
//!   as the bucket has it); `bucket` and `key` are required.
//!
//! The `POST` routes change what the gateway holds: they need `Authorization: Bearer <token>`
//! with `server.admin_token` (GATEWAY_ADMIN_TOKEN), or, when no token is configured, a client
//! on the loopback interface.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;

use crate::metrics::S3Metrics;
use tier::Tier;

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
    /// The tier, when enabled (dead letters).
    pub tier: Option<Arc<Tier>>,
    /// Token the `POST` routes need; empty: loopback clients only.
    pub token: String,
}

/// The admin routes. Serve them with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/dead-letters/retry", post(retry))
        .route("/admin/dead-letters/discard", post(discard))
        .with_state(state)
}

/// Which dead letters a `POST` is about.
#[derive(Debug, serde::Deserialize)]
struct Selection {
    bucket: Option<String>,
    key: Option<String>,
}

/// A refused admin request: a status and a line of text.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

/// Whether a `POST` may change what the gateway holds (see the module docs).
fn authorized(s: &AdminState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Refused> {
    if s.token.is_empty() {
        if peer.ip().is_loopback() {
            return Ok(());
        }
        return Err(Refused(
            StatusCode::FORBIDDEN,
            "set server.admin_token to use this from another host".into(),
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        use sha2::Digest;
        // Compare digests: the time taken does not tell how much of the token matched.
        sha2::Sha256::digest(g.as_bytes()) == sha2::Sha256::digest(s.token.as_bytes())
    });
    if ok {
        Ok(())
    } else {
        Err(Refused(
            StatusCode::UNAUTHORIZED,
            "a valid admin bearer token is required".into(),
        ))
    }
}

fn tier_of(s: &AdminState) -> Result<&Arc<Tier>, Refused> {
    s.tier
        .as_ref()
        .ok_or_else(|| Refused(StatusCode::NOT_FOUND, "the tier is disabled".into()))
}

fn journal_failure(e: &tier::TierError) -> Refused {
    Refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn dead_letters(State(s): State<AdminState>) -> Result<Response, Refused> {
    Ok(axum::Json(tier_of(&s)?.dead_letters()).into_response())
}

async fn retry(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(sel): Query<Selection>,
) -> Result<Response, Refused> {
    authorized(&s, peer, &headers)?;
    let t = tier_of(&s)?;
    let mut retried = 0u64;
    for d in t.dead_letters() {
        if sel.bucket.as_ref().is_some_and(|b| *b != d.bucket)
            || sel.key.as_ref().is_some_and(|k| *k != d.key)
        {
            continue;
        }
        if t.retry_dead_letter(&d.bucket, &d.key)
            .await
            .map_err(|e| journal_failure(&e))?
        {
            retried += 1;
        }
    }
    Ok(axum::Json(serde_json::json!({ "retried": retried })).into_response())
}

async fn discard(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(sel): Query<Selection>,
) -> Result<Response, Refused> {
    authorized(&s, peer, &headers)?;
    let t = tier_of(&s)?;
    let (Some(bucket), Some(key)) = (sel.bucket, sel.key) else {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "discarding needs bucket and key: it gives an acknowledged write up".into(),
        ));
    };
    let found = t
        .discard_dead_letter(&bucket, &key)
        .await
        .map_err(|e| journal_failure(&e))?;
    Ok(axum::Json(serde_json::json!({ "discarded": found })).into_response())
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
