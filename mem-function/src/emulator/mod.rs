//! A local stand-in for AWS Lambda that runs the very same `mem-function` binary the way Lambda
//! does: it serves the **Invoke API** to the gateway (`POST /2015-03-31/functions/{name}/invocations`,
//! RequestResponse and Event; SigV4 signatures are accepted unchecked, it listens on loopback)
//! and the **Runtime API** to the function processes it starts (`/2018-06-01/runtime/...` under
//! a per-instance path prefix, which `lambda_runtime` keeps from `AWS_LAMBDA_RUNTIME_API`).
//!
//! Model (one pinned instance per function name, as the cache needs):
//! - the first invoke of a name starts one OS process for it, with the name's memory size
//!   (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`) and the configured environment;
//! - invocations of an instance run one at a time, in arrival order (an Event invoke is
//!   answered 202 at once and queued); at most `max_queued` wait, then 429;
//! - between invocations the idle process is frozen with SIGSTOP and thawed with SIGCONT;
//! - an invocation that outlives the function timeout kills the process (memory gone), and the
//!   invoke answers with a `Sandbox.Timedout` function error, as Lambda does;
//! - an instance idle for `reclaim_after_idle` is killed, as is one named in
//!   `POST /admin/functions/{name}/reclaim` (the provider reclaiming it); `GET /admin/functions`
//!   lists the instances with pid and state.
//!
//! Children die with the emulator: [`EmulatorHandle::shutdown`] and `Drop` kill them; each runs
//! in its own process group (so when the emulator dies, even by SIGKILL, a frozen child's group is
//! orphaned and the kernel sends it SIGHUP + SIGCONT, which ends it) and gets `MEMFN_PARENT_PID`,
//! which makes `mem-function` exit as soon as its parent is gone; a running child also exits when
//! its Runtime API becomes unreachable (the `lambda_runtime` loop fails and the binary exits).

mod http;
mod instance;

pub use instance::{InstanceInfo, InstancePhase};

use bytes::Bytes;
use instance::{Instance, InvokeResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Default memory size of a function (MB), InfiniStore's default.
pub const DEFAULT_MEMORY_MB: u32 = 1536;
/// Default function timeout, Lambda's maximum.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// Default idle time after which an instance is reclaimed. Lambda does not document its
/// figure; observed lifetimes of idle instances are minutes to tens of minutes.
pub const DEFAULT_RECLAIM_AFTER_IDLE: Duration = Duration::from_secs(600);
/// Default bound on invocations waiting for one instance.
pub const DEFAULT_MAX_QUEUED: usize = 256;
/// Largest synchronous invoke payload and response (Lambda: 6 MB).
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// Largest asynchronous (Event) invoke payload (Lambda: 1 MB).
pub const MAX_EVENT_PAYLOAD: usize = 1024 * 1024;
/// How often the idle reaper looks at the instances (at most; shorter idle limits tick faster).
pub const REAPER_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown and reclaim wait for a killed process to be reaped.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_memory_mb() -> u32 {
    DEFAULT_MEMORY_MB
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_true() -> bool {
    true
}
fn default_reclaim() -> Option<Duration> {
    Some(DEFAULT_RECLAIM_AFTER_IDLE)
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_account() -> String {
    "000000000000".into()
}
fn default_max_queued() -> usize {
    DEFAULT_MAX_QUEUED
}

/// Emulator configuration. Sizes in MB as Lambda counts them; durations as "15m", "900s".
/// `lambda-emulator --config FILE` reads it as JSON; `mem-function/lambda-emulator.example.json`
/// shows every field. Keep `MEMFN_SECRET` out of the file: the binary copies it from its own
/// environment into [`EmulatorConfig::env`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Address of the Invoke, Runtime and admin APIs. Default `127.0.0.1:0`.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// The `mem-function` binary. Default: [`locate_function_binary`].
    #[serde(default)]
    pub function_binary: Option<PathBuf>,
    /// Memory size of every function unless overridden. Default 1536.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Function timeout. Default 900 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Freeze idle instances with SIGSTOP. Default true.
    #[serde(default = "default_true")]
    pub freeze: bool,
    /// Kill instances idle this long (`null`: never). Default 10 min.
    #[serde(default = "default_reclaim", with = "humantime_serde")]
    pub reclaim_after_idle: Option<Duration>,
    /// Environment of every instance (e.g. `MEMFN_SECRET`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-function-name overrides.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionOverride>,
    /// Write each instance's stdout/stderr to `<log_dir>/<name>-<instance>.log`; default: forward
    /// them line by line to `tracing` (target `mem_function::emulator::function`).
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Region in ARNs and `AWS_REGION`. Default us-east-1.
    #[serde(default = "default_region")]
    pub region: String,
    /// Account id in ARNs. Default 000000000000.
    #[serde(default = "default_account")]
    pub account_id: String,
    /// Invocations waiting per instance before 429. Default 256.
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: default_bind(),
            function_binary: None,
            memory_mb: DEFAULT_MEMORY_MB,
            timeout: DEFAULT_TIMEOUT,
            freeze: true,
            reclaim_after_idle: default_reclaim(),
            env: BTreeMap::new(),
            functions: BTreeMap::new(),
            log_dir: None,
            region: default_region(),
            account_id: default_account(),
            max_queued: DEFAULT_MAX_QUEUED,
        }
    }
}

/// Settings of one function name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionOverride {
    /// Memory size (MB).
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Timeout.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Extra environment (wins over [`EmulatorConfig::env`]).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Errors of the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// Could not bind or serve.
    #[error("emulator i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The function binary was not found.
    #[error("mem-function binary not found (set function_binary or MEMFN_BINARY)")]
    BinaryNotFound,
    /// Could not start the function process.
    #[error("starting {name}: {source}")]
    Spawn {
        /// Function name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid function name.
    #[error("invalid function name {0:?}")]
    InvalidName(String),
    /// Too many invocations queued for the instance.
    #[error("too many invocations queued for {0}")]
    TooManyRequests(String),
    /// The payload exceeds Lambda's limit.
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The emulator is shutting down.
    #[error("emulator is shutting down")]
    ShuttingDown,
}

/// How an invocation ended, as the Invoke API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeOutput {
    /// The function's response payload, or the error document on a function error.
    pub payload: Bytes,
    /// `X-Amz-Function-Error` (`Unhandled`) when the function failed, timed out or crashed.
    pub function_error: Option<String>,
}

/// Where to find `mem-function`: `$MEMFN_BINARY`, next to the current executable, or (for
/// test binaries in `target/<profile>/deps`) one directory up.
pub fn locate_function_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEMFN_BINARY") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent();
    for _ in 0..3 {
        let d = dir?;
        let candidate = d.join("mem-function");
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = d.parent();
    }
    None
}

struct Registry {
    by_name: HashMap<String, Arc<Instance>>,
    by_id: HashMap<u64, Arc<Instance>>,
}

pub(crate) struct Emu {
    config: EmulatorConfig,
    binary: PathBuf,
    /// Address children use to reach the Runtime API.
    runtime_addr: SocketAddr,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    cancel: CancellationToken,
}

impl Emu {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.config.region, self.config.account_id
        )
    }

    fn instance_by_id(&self, id: u64) -> Option<Arc<Instance>> {
        self.registry().by_id.get(&id).cloned()
    }

    fn instance_for(self: &Arc<Self>, name: &str) -> Result<Arc<Instance>, EmulatorError> {
        if self.cancel.is_cancelled() {
            return Err(EmulatorError::ShuttingDown);
        }
        let mut reg = self.registry();
        if let Some(i) = reg.by_name.get(name)
            && !i.is_dying()
        {
            return Ok(i.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ov = self.config.functions.get(name).cloned().unwrap_or_default();
        let memory_mb = ov.memory_mb.unwrap_or(self.config.memory_mb);
        let timeout = ov.timeout.unwrap_or(self.config.timeout);
        let mut env = self.config.env.clone();
        env.extend(ov.env);
        let inst = Instance::spawn(self, id, name, memory_mb, timeout, &env)?;
        reg.by_name.insert(name.to_owned(), inst.clone());
        reg.by_id.insert(id, inst.clone());
        Ok(inst)
    }

    /// Called by an instance's monitor once its process has exited.
    fn forget(&self, inst: &Instance) {
        let mut reg = self.registry();
        reg.by_id.remove(&inst.id);
        if reg.by_name.get(&inst.name).is_some_and(|i| i.id == inst.id) {
            reg.by_name.remove(&inst.name);
        }
    }

    fn all(&self) -> Vec<Arc<Instance>> {
        self.registry().by_id.values().cloned().collect()
    }

    pub(crate) async fn invoke(
        self: &Arc<Self>,
        name: &str,
        payload: Bytes,
    ) -> Result<InvokeOutput, EmulatorError> {
        // An instance that dies while we wait in its queue is replaced, like Lambda would.
        for _ in 0..3 {
            let inst = self.instance_for(name)?;
            match inst.invoke(self, payload.clone()).await? {
                InvokeResult::Retry => continue,
                InvokeResult::Done(out) => return Ok(out),
            }
        }
        Ok(InvokeOutput {
            payload: error_doc(
                "Runtime.ExitError",
                "the function instance kept exiting before the invocation started",
            ),
            function_error: Some("Unhandled".into()),
        })
    }

    pub(crate) fn check_queue(self: &Arc<Self>, name: &str) -> Result<(), EmulatorError> {
        let inst = self.instance_for(name)?;
        if inst.queued() >= self.config.max_queued {
            return Err(EmulatorError::TooManyRequests(name.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn reclaim(&self, name: &str) -> bool {
        let inst = self.registry().by_name.get(name).cloned();
        match inst {
            Some(i) => {
                info!(function = name, pid = i.pid, "reclaiming instance");
                i.kill_and_wait(KILL_WAIT).await;
                true
            }
            None => false,
        }
    }

    pub(crate) fn list(&self) -> Vec<InstanceInfo> {
        let mut v: Vec<InstanceInfo> = self
            .all()
            .iter()
            .filter(|i| !i.is_dying())
            .map(|i| i.info())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    async fn reaper(self: Arc<Self>) {
        let Some(limit) = self.config.reclaim_after_idle else {
            return;
        };
        let tick = (limit / 4).clamp(Duration::from_millis(20), REAPER_INTERVAL);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            for inst in self.all() {
                if inst.reclaim_if_idle(limit) {
                    info!(function = %inst.name, pid = inst.pid, "reclaiming idle instance");
                }
            }
        }
    }

    /// Kill every child now, without waiting (safe to call from Drop).
    fn kill_all_now(&self) {
        for inst in self.all() {
            inst.kill_now();
        }
    }
}

pub(crate) fn error_doc(error_type: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({"errorType": error_type, "errorMessage": message}).to_string())
}

/// The running emulator. Dropping it kills every function process.
pub struct EmulatorHandle {
    emu: Arc<Emu>,
    addr: SocketAddr,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Entry point.
pub struct Emulator;

impl Emulator {
    /// Bind, start serving, and return the handle. Function processes start on first invoke.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        let binary = match &config.function_binary {
            Some(p) => p.clone(),
            None => locate_function_binary().ok_or(EmulatorError::BinaryNotFound)?,
        };
        if !binary.is_file() {
            return Err(EmulatorError::BinaryNotFound);
        }
        if let Some(dir) = &config.log_dir {
            std::fs::create_dir_all(dir)?;
        }
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let runtime_addr = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        if !addr.ip().is_loopback() {
            warn!(%addr, "the emulator does not check SigV4 signatures; it should listen on loopback only");
        }
        let emu = Arc::new(Emu {
            config,
            binary,
            runtime_addr,
            registry: Mutex::new(Registry {
                by_name: HashMap::new(),
                by_id: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(http::serve(emu.clone(), listener));
        tokio::spawn(emu.clone().reaper());
        info!(%addr, binary = %emu.binary.display(), "lambda emulator up");
        Ok(EmulatorHandle { emu, addr })
    }
}

impl EmulatorHandle {
    /// Address of the APIs.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, for `endpoint_url` of an `aws_sdk_lambda` client.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.emu.runtime_addr)
    }

    /// The function binary in use.
    pub fn function_binary(&self) -> &std::path::Path {
        &self.emu.binary
    }

    /// Live instances.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.emu.list()
    }

    /// Kill the instance of `name` (the provider reclaiming it); false if none was running.
    pub async fn reclaim(&self, name: &str) -> bool {
        self.emu.reclaim(name).await
    }

    /// Invoke synchronously without going through HTTP.
    pub async fn invoke(&self, name: &str, payload: Bytes) -> Result<InvokeOutput, EmulatorError> {
        http::validate_name(name)?;
        self.emu.invoke(name, payload).await
    }

    /// Stop serving and kill every instance, waiting for them to exit.
    pub async fn shutdown(self) {
        self.emu.cancel.cancel();
        let all = self.emu.all();
        futures::future::join_all(all.iter().map(|i| i.kill_and_wait(KILL_WAIT))).await;
        info!("lambda emulator stopped");
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.emu.cancel.cancel();
        self.emu.kill_all_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_human_durations() {
        let c: EmulatorConfig = serde_json::from_str(
            r#"{"timeout":"30s","reclaim_after_idle":"2m","functions":{"node-1":{"memory_mb":256,"timeout":"5s"}}}"#,
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.reclaim_after_idle, Some(Duration::from_secs(120)));
        assert_eq!(c.memory_mb, DEFAULT_MEMORY_MB);
        assert!(c.freeze);
        assert_eq!(c.functions["node-1"].timeout, Some(Duration::from_secs(5)));
        let c: EmulatorConfig = serde_json::from_str(r#"{"reclaim_after_idle":null}"#).unwrap();
        assert_eq!(c.reclaim_after_idle, None);
    }

    #[test]
    fn the_example_config_parses() {
        let c: EmulatorConfig =
            serde_json::from_str(include_str!("../../lambda-emulator.example.json")).unwrap();
        assert_eq!(c.bind, SocketAddr::from(([127, 0, 0, 1], 9001)));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.reclaim_after_idle, Some(DEFAULT_RECLAIM_AFTER_IDLE));
        assert_eq!(c.functions["node-0"].memory_mb, Some(3008));
        assert_eq!(c.functions["node-1"].env["RUST_LOG"], "debug");
        assert!(
            !c.env.contains_key("MEMFN_SECRET"),
            "secrets come from the environment"
        );
    }
}
