//! The function pool: `count` functions `{prefix}{i}` holding the tier's chunks.
//!
//! A function cannot be called; it is *invoked* through the Lambda Invoke API (AWS, or the
//! embedded emulator: one code path) with a payload naming the callback listener, and it dials
//! back. The pool keeps at most one invocation outstanding per function (a second concurrent
//! invoke would start a second, empty instance on AWS; deploy with reserved concurrency 1),
//! hands out its live connection to chunk requests, and invokes it again when the connection
//! ends (idle tail, deadline). Each invocation carries the pool's view of the node's memory
//! (term + hash): the newest state the function itself reported — the HELLO of a connection,
//! each acknowledgement on it, and the state the invocation returned with, which also counts
//! mutations whose acknowledgements were lost with their connection. A function that reports
//! its memory lost (empty) was replaced by the provider, and the pool reports it; one that
//! reports it diverged (holding what the pool does not know) is reported too and emptied
//! (a Reset invocation) before anything is restored onto it.

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
use mem_function::wire::{ByteRange, ChunkId, Command, Hello, NodeState, StoreStats, ViewCheck};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::chunks::{ChunkError, ChunkName, ChunkStore};
use crate::config::FunctionsConfig;
use crate::error::TierError;
use crate::index::FunctionId;

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
    /// The node's memory as the function last reported it, once `conn` is gone (see
    /// [`Node::view`]).
    view: NodeState,
    /// The store statistics reported with `view` (for occupancy reports between invocations).
    stats: Option<StoreStats>,
    /// The memory holds chunks the pool does not know (it reported `Diverged`): the next
    /// invocation is a Reset, so that what is restored onto it is all it holds.
    reset: bool,
    last_used: Option<Instant>,
    /// When the last invocation failed: the next one waits [`INVOKE_RETRY`] after it.
    failed_at: Option<Instant>,
}

impl Node {
    /// The view passed to the next invocation: the newest state the function reported. While
    /// the pool holds a connection (live or ending) that is its last acknowledgement (its
    /// HELLO's state, then every Ack and the BYE notice); after it, the state recorded when it
    /// was retired or when its invocation returned.
    fn view(&self) -> NodeState {
        self.conn.as_ref().map_or(self.view, |c| c.last_ack().state)
    }

    /// The command of the next serving invocation.
    fn serve_command(&self) -> Command {
        if self.reset {
            Command::Reset
        } else {
            Command::Serve
        }
    }
}

/// Least time between a failed invocation of a function and the next one.
pub const INVOKE_RETRY: Duration = Duration::from_millis(500);

struct FunctionSlot {
    node: Mutex<Node>,
    ready: Notify,
}

/// The pool.
pub struct Pool {
    cfg: FunctionsConfig,
    lambda: aws_sdk_lambda::Client,
    tokens: InvocationTokens,
    callback: String,
    slots: Vec<FunctionSlot>,
    metrics: PoolMetrics,
    events: mpsc::UnboundedSender<PoolEvent>,
    _listener_task: tokio::task::JoinHandle<()>,
}

/// Drops a node's connection; the state its last acknowledgement reported becomes the view
/// passed to the next invocation (so a replaced instance is recognized). It is the newest
/// report there is: the connection was adopted with its HELLO's state as the view, and its
/// acknowledgements arrive in the order the function applied the mutations.
fn retire(n: &mut Node, metrics: &PoolMetrics) {
    if let Some(c) = n.conn.take() {
        let ack = c.last_ack();
        n.view = ack.state;
        n.stats = Some(ack.stats);
        c.close();
        metrics.connected.dec();
    }
}

/// The invocation that `resp` answers has returned. A function mutates its memory only while
/// an invocation serves, so the state it returned with is what the memory holds now, and it is
/// newer than any acknowledgement the pool saw: it also counts mutations whose acknowledgements
/// never arrived (a connection closed or reset with requests in flight, a response still in
/// the socket when the pool retired the connection). The invocation's connection, if the pool
/// still holds it, is over.
fn invocation_returned(n: &mut Node, resp: &InvocationResponse, metrics: &PoolMetrics) {
    if let Some(c) = &n.conn {
        if !same_invocation(c.hello(), resp) {
            // A connection of another invocation (the pool runs one at a time, so this is a
            // function that dialed back late): its own reports are newer.
            return;
        }
        retire(n, metrics);
    }
    n.view = resp.state;
    n.stats = Some(resp.stats);
}

/// Did the connection that said `hello` belong to the invocation answered by `resp`?
fn same_invocation(hello: &Hello, resp: &InvocationResponse) -> bool {
    hello.instance_id == resp.instance_id
        && resp
            .invocation_id
            .chars()
            .take(mem_function::wire::MAX_INVOCATION_ID)
            .eq(hello.invocation_id.chars())
}

fn lock(n: &Mutex<Node>) -> std::sync::MutexGuard<'_, Node> {
    n.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// Binds the callback listener and starts accepting dial-backs.
    pub async fn start(
        cfg: &FunctionsConfig,
        lambda: aws_sdk_lambda::Client,
        secret: Vec<u8>,
        registry: &mut Registry,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<PoolEvent>), TierError> {
        let tokens = InvocationTokens::new();
        let mut lc = ListenerConfig::new(cfg.callback_listen, secret);
        lc.tokens = Some(tokens.clone());
        let mut listener =
            CallbackListener::bind_with(lc)
                .await
                .map_err(|source| TierError::Listen {
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
                    .map(|_| FunctionSlot {
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
        // A Reset empties the memory whatever it held: the pool asked for it.
        let reset = hello.command == Command::Reset;
        let lost = !reset && matches!(hello.view, ViewCheck::Lost | ViewCheck::Diverged);
        if lost {
            self.metrics.reclaims.inc();
            match hello.view {
                ViewCheck::Lost => {
                    warn!(function = %self.name(f), instance = %hello.instance_id, "function memory lost: the instance was replaced")
                }
                _ => {
                    warn!(function = %self.name(f), instance = %hello.instance_id, state = %hello.state, "function memory diverged from the pool's view: treated as lost, and reset before recovery")
                }
            }
            let _ = self.events.send(PoolEvent::Lost(f));
        }
        let slot = &self.slots[f as usize];
        {
            let mut n = lock(&slot.node);
            retire(&mut n, &self.metrics);
            n.view = hello.state;
            n.stats = Some(hello.stats);
            if reset {
                n.reset = false;
            }
            if lost && hello.view == ViewCheck::Diverged {
                // Its chunks are unknown to the pool: nothing may be restored onto them (they
                // would take space no one frees). This connection ends; the next is a Reset.
                n.reset = true;
                conn.close();
                drop(n);
                slot.ready.notify_waiters();
                return;
            }
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
                    if c.accepts_requests() {
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
                            let (command, view) = (n.serve_command(), n.view());
                            drop(n);
                            self.clone().invoke(f, command, view);
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
                    match resp {
                        Some(resp) => {
                            debug!(function = %name, outcome = ?resp.outcome, state = %resp.state, ms = elapsed.as_millis() as u64, "invocation returned");
                            let mut n = lock(&self.slots[f as usize].node);
                            invocation_returned(&mut n, &resp, &self.metrics);
                        }
                        None => {
                            warn!(function = %name, "invocation returned an unreadable response")
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
        let live = n.conn.as_ref().is_some_and(FunctionConn::accepts_requests);
        if live || n.invoking {
            return;
        }
        // The connection of the last invocation is over: its last acknowledgement is the
        // newest state the function reported (not the state of its HELLO).
        retire(&mut n, &self.metrics);
        n.invoking = true;
        let view = n.view();
        let command = if n.reset {
            Command::Reset
        } else {
            Command::Warmup
        };
        drop(n);
        self.metrics.warmups.inc();
        self.clone().invoke(f, command, view);
    }

    /// A function went back to the pool (no bucket holds it): its session is ended with BYE,
    /// so its invocation returns now rather than after its idle tail (it is billed while it
    /// serves); the policy warms it no more.
    pub fn release(&self, f: FunctionId) {
        let Some(slot) = self.slots.get(f as usize) else {
            return;
        };
        let conn = lock(&slot.node).conn.clone();
        if let Some(c) = conn.filter(FunctionConn::accepts_requests) {
            debug!(function = %self.name(f), "released to the pool: ending its invocation");
            tokio::spawn(async move {
                let _ = c.bye().await;
            });
        }
    }

    /// Bytes each function reported holding in its last report (functions never contacted
    /// are left out).
    pub fn occupancy(&self) -> Vec<(FunctionId, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let n = lock(&slot.node);
                let used = match &n.conn {
                    Some(c) => c.last_ack().stats.used_bytes,
                    None => n.stats?.used_bytes,
                };
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use mem_function::function::{FunctionEnv, InvocationContext, MemFunction};
    use std::time::SystemTime;

    const SECRET: &str = "pool-unit-test-secret-0123456789";

    /// Lambda in this process: the Invoke API on a loopback port, each function a
    /// [`MemFunction`] running the real handler, its store kept between invocations (a warm
    /// instance) until [`FakeLambda::replace`] swaps in a fresh one (the provider reclaimed it).
    #[derive(Clone, Default)]
    struct FakeLambda {
        functions: Arc<Mutex<HashMap<String, Arc<MemFunction>>>>,
        /// Every invocation's payload and response, in the order they returned.
        returned: Arc<Mutex<Vec<(Invocation, InvocationResponse)>>>,
    }

    impl FakeLambda {
        async fn start() -> (FakeLambda, String) {
            let fake = FakeLambda::default();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let served = fake.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let fake = served.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let fake = fake.clone();
                            async move { Ok::<_, std::convert::Infallible>(fake.invoke(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            (fake, endpoint)
        }

        fn function(&self, name: &str) -> Arc<MemFunction> {
            lock_map(&self.functions)
                .entry(name.to_owned())
                .or_insert_with(|| {
                    MemFunction::new(FunctionEnv {
                        secret: SECRET.as_bytes().to_vec(),
                        function_name: name.to_owned(),
                        memory_mb: 64,
                        overhead_mb: 32,
                        max_chunk: mem_function::wire::DEFAULT_MAX_BODY,
                        fault_injection: false,
                    })
                })
                .clone()
        }

        fn replace(&self, name: &str) {
            lock_map(&self.functions).remove(name);
        }

        fn returned(&self) -> Vec<(Invocation, InvocationResponse)> {
            self.returned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }

        async fn invoke(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
            let name = req
                .uri()
                .path()
                .trim_start_matches("/2015-03-31/functions/")
                .trim_end_matches("/invocations")
                .to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let inv: Invocation = serde_json::from_slice(&body).unwrap();
            let ctx = InvocationContext {
                request_id: uuid::Uuid::new_v4().to_string(),
                deadline: SystemTime::now() + Duration::from_secs(60),
            };
            let resp = self.function(&name).handle(inv.clone(), ctx).await;
            let json = serde_json::to_vec(&resp).unwrap();
            self.returned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((inv, resp));
            hyper::Response::new(Full::new(Bytes::from(json)))
        }

        /// Waits until `n` invocations have returned.
        async fn wait_returned(&self, n: usize) -> Vec<(Invocation, InvocationResponse)> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = self.returned();
                if r.len() >= n {
                    return r;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} of {n} invocations returned",
                    r.len()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Warm-up once the pool has taken in the last invocation's return (a warm-up asked for
    /// while an invocation is under way is skipped, as it should be).
    async fn warmup_when_idle(pool: &Arc<Pool>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&pool.slots[0].node).invoking {
            assert!(Instant::now() < deadline, "the invocation never returned");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pool.warmup(0);
    }

    fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn pool(endpoint: &str) -> (Arc<Pool>, mpsc::UnboundedReceiver<PoolEvent>) {
        let cfg = FunctionsConfig {
            count: 1,
            memory_mb: 64,
            lambda_endpoint: endpoint.to_owned(),
            idle_tail: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            secret: SECRET.to_owned(),
            ..FunctionsConfig::default()
        };
        let conf = aws_sdk_lambda::Config::builder()
            .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
            .region(aws_sdk_lambda::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_lambda::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .build();
        let lambda = aws_sdk_lambda::Client::from_conf(conf);
        Pool::start(
            &cfg,
            lambda,
            SECRET.as_bytes().to_vec(),
            &mut Registry::default(),
        )
        .await
        .unwrap()
    }

    fn name(object: u128, index: u16) -> ChunkName {
        ChunkName {
            object,
            piece: 0,
            index,
        }
    }

    /// The drill's mechanism: after a serving invocation that stored chunks, the warm-up used
    /// to carry the state of that invocation's HELLO, so a function that had lost nothing
    /// answered `Diverged` at every warm-up, and was "recovered" again and again.
    #[tokio::test]
    async fn a_warm_up_after_serving_carries_the_last_acknowledged_state() {
        let (fake, endpoint) = FakeLambda::start().await;
        let (pool, mut events) = pool(&endpoint).await;
        let store = PoolStore(pool.clone());
        for i in 0..3 {
            store
                .put(0, name(1, i), Bytes::from(vec![i as u8; 1000]))
                .await
                .unwrap();
        }
        store.delete(0, name(1, 0)).await.unwrap();
        // The function leaves after its idle tail; then three warm-ups.
        fake.wait_returned(1).await;
        for n in 2..=4 {
            warmup_when_idle(&pool).await;
            let r = fake.wait_returned(n).await;
            let (inv, resp) = &r[n - 1];
            assert_eq!(inv.command, Command::Warmup);
            assert_eq!(inv.view, fake.function("memfn-0").store().ack().state);
            assert_eq!(resp.view, ViewCheck::Match, "warm-up {n}");
        }
        assert!(events.try_recv().is_err(), "no function reported lost");
        assert_eq!(pool.metrics.reclaims.get(), 0);
    }

    /// Mutations whose acknowledgements arrive after the pool retired their connection still
    /// end up in its view: the invocation returns with the memory's state. (A guard: the pool
    /// handled this before too.)
    #[tokio::test]
    async fn acknowledgements_after_the_connection_was_retired_do_not_diverge_the_view() {
        let (fake, endpoint) = FakeLambda::start().await;
        let (pool, mut events) = pool(&endpoint).await;
        let c = pool.conn(0).await.unwrap();
        // Puts sent, then the connection closed and retired before their answers are read.
        let puts: Vec<_> = (0..8u16)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = c
                        .put_chunk(&chunk_id(name(2, i)), Bytes::from(vec![7u8; 50_000]))
                        .await;
                })
            })
            .collect();
        tokio::task::yield_now().await;
        c.close();
        let next = pool.conn(0).await.unwrap();
        for p in puts {
            p.await.unwrap();
        }
        assert_eq!(next.hello().view, ViewCheck::Match);
        let r = fake.wait_returned(1).await;
        assert_eq!(r[0].1.state, next.hello().state);
        assert!(events.try_recv().is_err());
    }

    /// A replaced instance is still found lost, and a memory holding chunks the pool does not
    /// know is emptied before anything is restored onto it.
    #[tokio::test]
    async fn a_replaced_instance_is_lost_and_a_diverged_one_is_reset() {
        let (fake, endpoint) = FakeLambda::start().await;
        let (pool, mut events) = pool(&endpoint).await;
        let store = PoolStore(pool.clone());
        store
            .put(0, name(3, 0), Bytes::from_static(b"kept"))
            .await
            .unwrap();
        fake.wait_returned(1).await;
        fake.replace("memfn-0");
        warmup_when_idle(&pool).await;
        let r = fake.wait_returned(2).await;
        assert_eq!(r[1].1.view, ViewCheck::Lost);
        assert!(matches!(events.recv().await, Some(PoolEvent::Lost(0))));
        tokio::time::sleep(Duration::from_millis(50)).await;

        // Chunks the pool never wrote (another gateway's, say) appear in the memory.
        let f = fake.function("memfn-0");
        let data = Bytes::from_static(b"unknown");
        f.store()
            .put(chunk_id(name(9, 0)), crc32c::crc32c(&data), data)
            .unwrap();
        store
            .put(0, name(3, 1), Bytes::from_static(b"restored"))
            .await
            .unwrap();
        assert!(matches!(events.recv().await, Some(PoolEvent::Lost(0))));
        let r = fake.wait_returned(3).await;
        assert_eq!(r[2].1.view, ViewCheck::Diverged);
        let ack = f.store().ack();
        assert_eq!(ack.stats.chunks, 1, "only what was written after the reset");
        assert_eq!(pool.metrics.reclaims.get(), 2);
        fake.wait_returned(4).await;
        warmup_when_idle(&pool).await;
        let r = fake.wait_returned(5).await;
        assert_eq!(r[3].0.command, Command::Reset);
        assert_eq!(r[4].1.view, ViewCheck::Match);
    }
}
