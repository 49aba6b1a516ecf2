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
pub mod pool;
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
    /// The function pool, when the tier is enabled.
    pub pool: Option<Arc<pool::Pool>>,
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
    let (tier, pool, emulator) = if cfg.tier.enabled {
        let (t, p, e) = start_tier(cfg, &backend, &mut registry).await?;
        (Some(t), Some(p), e)
    } else {
        (None, None, None)
    };
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
        pool,
        emulator,
    })
}

/// Starts the function pool (and the embedded emulator when no Lambda endpoint is set) and
/// opens the tier on it.
async fn start_tier(
    cfg: &Config,
    backend: &backend::BackendClients,
    registry: &mut Registry,
) -> Result<
    (
        Arc<tier::Tier>,
        Arc<pool::Pool>,
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
    let lambda = pool::lambda_client(f, &endpoint).await;
    let (pool, mut events) = pool::Pool::start(f, lambda, secret.into_bytes(), registry).await?;
    let (manager, mut actions) = tier::manager::MemoryManager::new(cfg, registry)?;
    let tier = tier::Tier::open(
        &cfg.tier,
        &cfg.data_dir,
        backend,
        Arc::new(pool::PoolStore(pool.clone())),
        manager.clone(),
        registry,
    )
    .await?;
    let occupancy_pool = Arc::downgrade(&pool);
    manager.run(Arc::new(move || {
        occupancy_pool
            .upgrade()
            .map(|p| p.occupancy())
            .unwrap_or_default()
    }));
    // The policy's decisions, carried out.
    let (weak_tier, weak_pool) = (Arc::downgrade(&tier), Arc::downgrade(&pool));
    tokio::spawn(async move {
        while let Some(a) = actions.recv().await {
            let (Some(t), Some(p)) = (weak_tier.upgrade(), weak_pool.upgrade()) else {
                return;
            };
            match a {
                tier::manager::Action::Evict { bucket, key } => t.evict(&bucket, &key),
                tier::manager::Action::Warmup(f) => p.warmup(f),
                tier::manager::Action::Recover(f) => t.recover(f),
                tier::manager::Action::Abandon(f) => t.abandon(f),
            }
        }
    });
    // Lost functions: the policy decides whether to recover.
    let weak_manager = Arc::downgrade(&manager);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let Some(m) = weak_manager.upgrade() else {
                return;
            };
            match ev {
                pool::PoolEvent::Lost(f) => m.function_lost(f),
            }
        }
    });
    Ok((tier, pool, emulator))
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
        drop(self.pool);
        if let Some(e) = self.emulator {
            e.shutdown().await;
        }
        if let Some(e) = self.embedded {
            e.shutdown(grace).await;
        }
    }
}
