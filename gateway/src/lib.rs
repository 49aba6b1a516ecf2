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
pub mod credentials;
pub mod embedded;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod s3;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// The tier, when enabled.
    pub tier: Option<Arc<tier::Tier>>,
    /// The tier with its function pool, when enabled.
    running: Option<tier::Running>,
    /// The embedded Lambda emulator, when used.
    pub emulator: Option<mem_function::emulator::EmulatorHandle>,
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
            embedded::throttle::S3Profile {
                first_byte: cfg.embedded.first_byte_latency,
                bandwidth: cfg.embedded.bandwidth_per_connection.as_u64(),
            },
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
    let backend = backend::build_clients(&cfg.backend, &backend_url).await;
    let client = backend.client.clone();

    let mut registry = Registry::default();
    let metrics = metrics::S3Metrics::register(&mut registry);
    let (running, emulator) = if cfg.tier.enabled {
        let (r, e) = start_tier(cfg, &backend, &mut registry).await?;
        (Some(r), e)
    } else {
        (None, None)
    };
    let tier = running.as_ref().map(|r| r.tier.clone());
    let registry = Arc::new(registry);

    let keys = match &embedded {
        Some(h) => backend::KeyRules::Embedded(h.store.clone()),
        None => backend::KeyRules::Portable,
    };
    let gateway = s3::S3Handler::new(&backend, cfg.server.region.clone(), tier.clone(), keys);
    let mut builder = S3ServiceBuilder::new(gateway);
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
            middleware::BodyRate {
                min_rate: cfg.server.body_min_rate.as_u64(),
                window: cfg.server.body_rate_window,
            },
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
        tier: tier.clone(),
        token: cfg.server.admin_token.clone(),
    });
    let stop = admin_stop.clone();
    let admin_task = tokio::spawn(async move {
        let serve = axum::serve(
            admin_listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned());
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
        tier,
        running,
        emulator,
    })
}

/// Starts the embedded emulator when no Lambda endpoint is set, then the tier on the function
/// pool.
async fn start_tier(
    cfg: &Config,
    backend: &backend::BackendClients,
    registry: &mut Registry,
) -> Result<
    (
        tier::Running,
        Option<mem_function::emulator::EmulatorHandle>,
    ),
    GatewayError,
> {
    let f = &cfg.functions;
    let secret = if f.secret.is_empty() {
        let bytes: [u8; 32] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    } else {
        f.secret.clone()
    };
    let (endpoint, emulator) = if f.embedded() {
        let mut ec = mem_function::emulator::EmulatorConfig {
            memory_mb: f.memory_mb,
            freeze: f.emulator_freeze,
            reclaim_after_idle: Some(f.emulator_reclaim_after_idle),
            function_binary: f.function_binary.clone(),
            region: f.lambda_region.clone(),
            ..Default::default()
        };
        ec.env.insert("MEMFN_SECRET".into(), secret.clone());
        let h = mem_function::emulator::Emulator::start(ec)
            .await
            .map_err(|e| GatewayError::Embedded(format!("Lambda emulator: {e}")))?;
        info!(endpoint = %h.endpoint_url(), binary = %h.function_binary().display(), "embedded Lambda emulator started");
        (h.endpoint_url(), Some(h))
    } else {
        (f.lambda_endpoint.trim().to_owned(), None)
    };
    let lambda = lambda_client(f, &endpoint).await;
    let running = tier::start(
        &cfg.tier,
        f,
        &cfg.policy,
        &cfg.data_dir,
        backend,
        lambda,
        secret.into_bytes(),
        registry,
    )
    .await?;
    Ok((running, emulator))
}

/// Builds the Lambda client for `endpoint`.
async fn lambda_client(cfg: &config::FunctionsConfig, endpoint: &str) -> aws_sdk_lambda::Client {
    let creds = crate::credentials::provider(
        &cfg.lambda_access_key,
        &cfg.lambda_secret_key,
        &cfg.lambda_region,
    )
    .await;
    let mut conf = aws_sdk_lambda::Config::builder();
    if crate::backend::is_loopback(endpoint) {
        conf = conf.http_client(crate::backend::direct_http_client());
    }
    let conf = conf
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .region(aws_sdk_lambda::config::Region::new(
            cfg.lambda_region.clone(),
        ))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .build();
    aws_sdk_lambda::Client::from_conf(conf)
}

impl Gateway {
    /// Stops accepting, drains in-flight requests (at most `grace`), persists acknowledged
    /// writes (at most `grace` more), then stops the admin server and the embedded store.
    pub async fn shutdown(self, grace: Duration) {
        self.s3.shutdown(grace).await;
        // Acknowledged writes still waiting for the bucket get the same grace; what is left
        // stays in the journal for the next start.
        if let Some(t) = &self.tier {
            let left = t.drain_writes(grace).await;
            if left == 0 {
                info!("every acknowledged write is in the bucket");
            } else {
                warn!(
                    keys = left,
                    "writes not yet in the bucket stay in the journal; the next start persists them"
                );
            }
        }
        self.admin_stop.cancel();
        let _ = tokio::time::timeout(grace, self.admin_task).await;
        drop(self.tier);
        drop(self.running);
        if let Some(e) = self.emulator {
            e.shutdown().await;
        }
        if let Some(e) = self.embedded {
            e.shutdown(grace).await;
        }
    }
}
