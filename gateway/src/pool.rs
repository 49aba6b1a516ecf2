//! The function pool: `count` functions `{prefix}{i}` holding the tier's chunks.
//!
//! A function cannot be called; it is *invoked* through the Lambda Invoke API (AWS, or the
//! embedded emulator: one code path) with a payload naming the callback listener, and it dials
//! back. The pool keeps at most one invocation outstanding per function (a second concurrent
//! invoke would start a second, empty instance on AWS; deploy with reserved concurrency 1),
//! hands out its live connection to chunk requests, and invokes it again when the connection
//! ends (idle tail, deadline). Each invocation carries the pool's view of the node's memory
//! (term + hash, from the last acknowledgement); a function that reports its memory lost or
//! diverged was reclaimed by the provider, and the pool reports it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use bytes::Bytes;
use mem_function::callback::{
    CallError, CallbackListener, FunctionConn, InvocationTokens, ListenerConfig,
};
use mem_function::invocation::{Invocation, InvocationResponse};
use mem_function::wire::{ByteRange, ChunkId, Command, NodeState, ViewCheck};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::config::FunctionsConfig;
use crate::tier::chunks::{ChunkError, ChunkName, ChunkStore};
use crate::tier::index::FunctionId;

/// Labels of invocation counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// `serve` or `warmup`.
    pub command: String,
}

/// The pool's metrics.
#[derive(Clone, Default)]
pub struct PoolMetrics {
    /// Invocations by command.
    pub invocations: Family<CommandLabels, Counter>,
    /// Failed invocations (the Invoke API refused, or the function errored).
    pub invocation_failures: Counter,
    /// Functions found reclaimed (memory lost).
    pub reclaims: Counter,
    /// Warm-up invocations sent for the policy.
    pub warmups: Counter,
    /// Estimated billed GB-seconds (invocation time x memory, per ms).
    pub billed_gb_seconds:
        prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
    /// Functions with a live connection.
    pub connected: Gauge,
}

impl PoolMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("gateway_function");
        r.register(
            "invocations",
            "Function invocations by command",
            m.invocations.clone(),
        );
        r.register(
            "invocation_failures",
            "Invocations that failed",
            m.invocation_failures.clone(),
        );
        r.register(
            "reclaims",
            "Functions found reclaimed by the provider (memory lost)",
            m.reclaims.clone(),
        );
        r.register("warmups", "Warm-up invocations sent", m.warmups.clone());
        r.register(
            "billed_gb_seconds",
            "Estimated billed GB-seconds of invocations (1 ms granularity)",
            m.billed_gb_seconds.clone(),
        );
        r.register(
            "connected",
            "Functions with a live connection",
            m.connected.clone(),
        );
        m
    }
}

/// What the pool tells the tier.
#[derive(Debug, Clone)]
pub enum PoolEvent {
    /// The function's memory is gone (its instance was replaced).
    Lost(FunctionId),
}

#[derive(Default)]
struct Node {
    conn: Option<FunctionConn>,
    invoking: bool,
    view: NodeState,
    last_used: Option<Instant>,
    /// When the last invocation failed: the next one waits [`INVOKE_RETRY`] after it.
    failed_at: Option<Instant>,
}

/// Least time between a failed invocation of a function and the next one.
pub const INVOKE_RETRY: Duration = Duration::from_millis(500);

struct Slot {
    node: Mutex<Node>,
    ready: Notify,
}

/// The pool.
pub struct Pool {
    cfg: FunctionsConfig,
    lambda: aws_sdk_lambda::Client,
    tokens: InvocationTokens,
    callback: String,
    slots: Vec<Slot>,
    metrics: PoolMetrics,
    events: mpsc::UnboundedSender<PoolEvent>,
    _listener_task: tokio::task::JoinHandle<()>,
}

/// Drops a node's connection; the state its last acknowledgement reported becomes the view
/// passed to the next invocation (so a replaced instance is recognized).
fn retire(n: &mut Node, metrics: &PoolMetrics) {
    if let Some(c) = n.conn.take() {
        let ack = c.last_ack();
        if ack.state.term >= n.view.term {
            n.view = ack.state;
        }
        c.close();
        metrics.connected.dec();
    }
}

fn lock(n: &Mutex<Node>) -> std::sync::MutexGuard<'_, Node> {
    n.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Builds the Lambda client for `endpoint`.
pub async fn lambda_client(cfg: &FunctionsConfig, endpoint: &str) -> aws_sdk_lambda::Client {
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

impl Pool {
    /// Binds the callback listener and starts accepting dial-backs.
    pub async fn start(
        cfg: &FunctionsConfig,
        lambda: aws_sdk_lambda::Client,
        secret: Vec<u8>,
        registry: &mut Registry,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<PoolEvent>), crate::GatewayError> {
        let tokens = InvocationTokens::new();
        let mut lc = ListenerConfig::new(cfg.callback_listen, secret);
        lc.tokens = Some(tokens.clone());
        let mut listener =
            CallbackListener::bind_with(lc)
                .await
                .map_err(|source| crate::GatewayError::Bind {
                    addr: cfg.callback_listen,
                    source,
                })?;
        let local: SocketAddr = listener.local_addr();
        let callback = if cfg.callback_advertise.trim().is_empty() {
            local.to_string()
        } else {
            cfg.callback_advertise.trim().to_owned()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = PoolMetrics::register(registry);
        let pool = Arc::new_cyclic(|weak: &std::sync::Weak<Pool>| {
            let weak = weak.clone();
            let task = tokio::spawn(async move {
                while let Some(conn) = listener.accept().await {
                    let Some(pool) = weak.upgrade() else { return };
                    pool.adopt(conn);
                }
            });
            Pool {
                cfg: cfg.clone(),
                lambda,
                tokens,
                callback,
                slots: (0..cfg.count)
                    .map(|_| Slot {
                        node: Mutex::new(Node::default()),
                        ready: Notify::new(),
                    })
                    .collect(),
                metrics,
                events: tx,
                _listener_task: task,
            }
        });
        info!(callback = %pool.callback, listen = %local, functions = cfg.count, "function pool ready");
        Ok((pool, rx))
    }

    /// Function name of id `f`.
    pub fn name(&self, f: FunctionId) -> String {
        format!("{}{f}", self.cfg.name_prefix)
    }

    fn id_of(&self, name: &str) -> Option<FunctionId> {
        name.strip_prefix(&self.cfg.name_prefix)?
            .parse::<FunctionId>()
            .ok()
            .filter(|f| (*f as usize) < self.slots.len())
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the pool has no functions.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A dial-back arrived: it becomes the function's connection.
    fn adopt(&self, conn: FunctionConn) {
        let Some(f) = self.id_of(conn.node_id()) else {
            warn!(
                node = conn.node_id(),
                "dial-back from an unknown node; closing it"
            );
            conn.close();
            return;
        };
        let hello = conn.hello().clone();
        if matches!(hello.view, ViewCheck::Lost | ViewCheck::Diverged) {
            self.metrics.reclaims.inc();
            warn!(function = %self.name(f), view = ?hello.view, "function memory lost: the instance was replaced");
            let _ = self.events.send(PoolEvent::Lost(f));
        }
        let slot = &self.slots[f as usize];
        {
            let mut n = lock(&slot.node);
            retire(&mut n, &self.metrics);
            n.view = hello.state;
            n.conn = Some(conn);
        }
        self.metrics.connected.inc();
        slot.ready.notify_waiters();
        debug!(function = %self.name(f), "connected");
    }

    /// The live connection of function `f`, invoking it if needed.
    pub async fn conn(self: &Arc<Self>, f: FunctionId) -> Result<FunctionConn, ChunkError> {
        let slot = self
            .slots
            .get(f as usize)
            .ok_or_else(|| ChunkError::Unavailable(f, "no such function".into()))?;
        let deadline = tokio::time::Instant::now() + self.cfg.connect_timeout;
        loop {
            let notified = slot.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Decide under the lock, act after it.
            let backoff = {
                let mut n = lock(&slot.node);
                if let Some(c) = n.conn.clone() {
                    if !c.is_closed() && !c.is_going_away() {
                        n.last_used = Some(Instant::now());
                        return Ok(c);
                    }
                    retire(&mut n, &self.metrics);
                }
                if n.invoking {
                    None
                } else {
                    // After a failed invocation, wait a little before the next one.
                    let wait = n
                        .failed_at
                        .map(|t| INVOKE_RETRY.saturating_sub(t.elapsed()));
                    match wait.filter(|w| !w.is_zero()) {
                        Some(w) => Some(w),
                        None => {
                            n.invoking = true;
                            let view = n.view;
                            drop(n);
                            self.clone().invoke(f, Command::Serve, view);
                            None
                        }
                    }
                }
            };
            if let Some(w) = backoff {
                tokio::time::sleep_until((tokio::time::Instant::now() + w).min(deadline)).await;
                if tokio::time::Instant::now() >= deadline {
                    return Err(ChunkError::Unavailable(
                        f,
                        "invocations keep failing".into(),
                    ));
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ChunkError::Unavailable(
                    f,
                    format!("no connection within {:?}", self.cfg.connect_timeout),
                ));
            }
        }
    }

    /// Invokes function `f` in the background; the slot's `invoking` is cleared when the
    /// invocation returns.
    fn invoke(self: Arc<Self>, f: FunctionId, command: Command, view: NodeState) {
        tokio::spawn(async move {
            let name = self.name(f);
            let token = self.tokens.issue(&name);
            let payload = Invocation::new(
                command,
                self.callback.clone(),
                name.clone(),
                token.clone(),
                view,
            )
            .with_idle_tail(self.cfg.idle_tail)
            .to_json();
            let label = CommandLabels {
                command: format!("{command:?}").to_ascii_lowercase(),
            };
            self.metrics.invocations.get_or_create(&label).inc();
            let started = Instant::now();
            let r = self
                .lambda
                .invoke()
                .function_name(&name)
                .invocation_type(InvocationType::RequestResponse)
                .payload(Blob::new(payload))
                .send()
                .await;
            let elapsed = started.elapsed();
            let ms = elapsed.as_millis() as f64;
            self.metrics
                .billed_gb_seconds
                .inc_by(ms.ceil() / 1000.0 * f64::from(self.cfg.memory_mb) / 1024.0);
            self.tokens.revoke(&name, &token);
            let failed = !matches!(&r, Ok(out) if out.function_error().is_none());
            match r {
                Ok(out) if out.function_error().is_none() => {
                    let resp: Option<InvocationResponse> = out
                        .payload()
                        .and_then(|p| serde_json::from_slice(p.as_ref()).ok());
                    if let Some(resp) = resp {
                        debug!(function = %name, outcome = ?resp.outcome, ms = elapsed.as_millis() as u64, "invocation returned");
                        let mut n = lock(&self.slots[f as usize].node);
                        if n.conn.is_none() {
                            n.view = resp.state;
                        }
                    }
                }
                Ok(out) => {
                    self.metrics.invocation_failures.inc();
                    warn!(function = %name, error = ?out.function_error(), "function invocation failed");
                }
                Err(e) => {
                    self.metrics.invocation_failures.inc();
                    warn!(function = %name, error = %aws_sdk_lambda::error::DisplayErrorContext(&e), "invoke failed");
                }
            }
            let slot = &self.slots[f as usize];
            {
                let mut n = lock(&slot.node);
                n.invoking = false;
                n.failed_at = failed.then(Instant::now);
            }
            if failed {
                // The instance may have died (reclaimed, crashed): look at its successor soon,
                // so a loss is found without waiting for the next request or warm-up.
                let pool = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(INVOKE_RETRY).await;
                    pool.warmup(f);
                });
            }
            slot.ready.notify_waiters();
        });
    }

    /// A warm-up the policy asked for: a cheap invocation unless the function is serving now
    /// (then it is warm) or already being invoked.
    pub fn warmup(self: &Arc<Self>, f: FunctionId) {
        let Some(slot) = self.slots.get(f as usize) else {
            return;
        };
        let mut n = lock(&slot.node);
        let live = n
            .conn
            .as_ref()
            .is_some_and(|c| !c.is_closed() && !c.is_going_away());
        if live || n.invoking {
            return;
        }
        n.invoking = true;
        let view = n.view;
        drop(n);
        self.metrics.warmups.inc();
        self.clone().invoke(f, Command::Warmup, view);
    }

    /// Bytes each function reported holding in its last acknowledgement (functions never
    /// contacted are left out).
    pub fn occupancy(&self) -> Vec<(FunctionId, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let n = lock(&slot.node);
                let used = n.conn.as_ref().map(|c| c.last_ack().stats.used_bytes)?;
                Some((FunctionId::try_from(i).ok()?, used))
            })
            .collect()
    }

    /// Per-function connection states, for the admin API and tests.
    pub fn snapshot(&self) -> HashMap<String, bool> {
        (0..self.slots.len())
            .map(|i| {
                let n = lock(&self.slots[i].node);
                (
                    self.name(FunctionId::try_from(i).unwrap_or(FunctionId::MAX)),
                    n.conn.as_ref().is_some_and(|c| !c.is_closed()),
                )
            })
            .collect()
    }
}

fn chunk_id(name: ChunkName) -> ChunkId {
    ChunkId::for_object(name.object, name.piece, name.index)
}

fn chunk_error(f: FunctionId, e: CallError) -> ChunkError {
    match e {
        CallError::NotFound => ChunkError::NotFound(f),
        CallError::Full { .. } => ChunkError::Full(f),
        CallError::Corrupt(_) => ChunkError::Corrupt(f),
        other => ChunkError::Unavailable(f, other.to_string()),
    }
}

/// Retries a request once on a fresh connection when the first one was closing.
macro_rules! with_conn {
    ($pool:expr, $f:expr, |$c:ident| $call:expr) => {{
        let mut attempt = 0;
        loop {
            let $c = $pool.conn($f).await?;
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) if e.is_retryable() && attempt == 0 => {
                    attempt += 1;
                    debug!(function = $f, error = %e, "retrying on a new connection");
                    $c.close();
                }
                Err(e) => break Err(chunk_error($f, e)),
            }
        }
    }};
}

/// The pool as the tier's chunk store.
pub struct PoolStore(pub Arc<Pool>);

#[async_trait::async_trait]
impl ChunkStore for PoolStore {
    async fn put(&self, f: FunctionId, name: ChunkName, data: Bytes) -> Result<(), ChunkError> {
        let id = chunk_id(name);
        with_conn!(self.0, f, |c| c.put_chunk(&id, data.clone())).map(|_| ())
    }

    async fn get(
        &self,
        f: FunctionId,
        name: ChunkName,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Bytes, ChunkError> {
        let id = chunk_id(name);
        if offset == 0 && len.is_none() {
            return with_conn!(self.0, f, |c| c.get_chunk(&id));
        }
        let range = ByteRange {
            offset,
            length: len,
        };
        with_conn!(self.0, f, |c| c.get_chunk_range(&id, range)).map(|r| r.data)
    }

    async fn delete(&self, f: FunctionId, name: ChunkName) -> Result<(), ChunkError> {
        let id = chunk_id(name);
        with_conn!(self.0, f, |c| c.delete_chunk(&id)).map(|_| ())
    }
}

/// How long the pool waits for a function's answer before trying it again.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
