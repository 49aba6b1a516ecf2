//! S3-compatible gateway with a serverless-memory cache tier.
//!
//! The gateway is an S3 endpoint (s3s on hyper) in front of a backing S3 store (aws-sdk-s3),
//! with an admin server (axum). [`start`] brings up everything a configuration describes,
//! including the embedded backing store when no backend URL is configured.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod embedded;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod s3;
pub mod server;
pub mod tier;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use crate::config::Config;
pub use crate::error::GatewayError;

/// A running gateway.
pub struct Gateway {
    /// Address of the S3 endpoint.
    pub s3_addr: SocketAddr,
    /// Address of the admin server.
    pub admin_addr: SocketAddr,
    /// URL of the backing store (the embedded one's loopback URL in embedded mode).
    pub backend_url: String,
    embedded: Option<embedded::EmbeddedHandle>,
    s3: server::ShutdownHandle,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, GatewayError> {
    l.local_addr().map_err(|source| GatewayError::Io {
        context: "listener address".into(),
        source,
    })
}

/// Starts the gateway described by `cfg` (already validated).
pub async fn start(cfg: &Config) -> Result<Gateway, GatewayError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| GatewayError::Io {
        context: format!("cannot create data directory {}", cfg.data_dir.display()),
        source,
    })?;

    let embedded = if cfg.embedded_backend() {
        let h = embedded::start(
            cfg.embedded.listen,
            &cfg.embedded_dir(),
            &cfg.backend.access_key,
            &cfg.backend.secret_key,
        )
        .await?;
        info!(addr = %h.addr, dir = %h.dir.display(), "embedded backing store started");
        Some(h)
    } else {
        None
    };
    let backend_url = match &embedded {
        Some(h) => h.url(),
        None => cfg.backend.url.trim().to_owned(),
    };
    let client = backend::build_client(&cfg.backend, &backend_url);

    let mut registry = Registry::default();
    let metrics = metrics::S3Metrics::register(&mut registry);
    let registry = Arc::new(registry);

    let mut builder =
        S3ServiceBuilder::new(s3::Gateway::new(client.clone(), cfg.server.region.clone()));
    builder.set_auth(auth::client_keys(&cfg.auth));
    builder.set_access(auth::GatewayAccess {
        allow_anonymous: cfg.auth.allow_anonymous,
    });
    if !cfg.server.domains.is_empty() {
        builder.set_host(auth::VirtualHosts::new(&cfg.server.domains));
    }
    let s3_service = builder.build();
    let stack = tower::ServiceBuilder::new()
        .layer(middleware::RequestContextLayer::new(
            metrics.clone(),
            cfg.server.request_timeout,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            cfg.server.max_concurrent_requests,
        ))
        .service(s3_service);

    let s3_listener = bind(cfg.server.listen).await?;
    let s3_addr = local_addr(&s3_listener)?;
    let admin_listener = bind(cfg.server.admin_listen).await?;
    let admin_addr = local_addr(&admin_listener)?;

    let s3 = server::serve(
        s3_listener,
        stack,
        server::ServeOptions {
            header_read_timeout: cfg.server.header_read_timeout,
        },
    );

    let admin_stop = CancellationToken::new();
    let router = admin::router(admin::AdminState {
        client,
        health_bucket: cfg.backend.health_bucket.clone(),
        registry,
        metrics,
    });
    let stop = admin_stop.clone();
    let admin_task = tokio::spawn(async move {
        let serve =
            axum::serve(admin_listener, router).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    info!(%s3_addr, %admin_addr, backend = %backend_url, "gateway started");
    Ok(Gateway {
        s3_addr,
        admin_addr,
        backend_url,
        embedded,
        s3,
        admin_stop,
        admin_task,
    })
}

impl Gateway {
    /// Stops accepting, drains in-flight requests (at most `grace`), then stops the admin server
    /// and the embedded store.
    pub async fn shutdown(self, grace: Duration) {
        self.s3.shutdown(grace).await;
        self.admin_stop.cancel();
        let _ = tokio::time::timeout(grace, self.admin_task).await;
        if let Some(e) = self.embedded {
            e.shutdown(grace).await;
        }
    }
}
