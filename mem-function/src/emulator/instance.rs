//! One function instance: an OS process running `mem-function` against our Runtime API, its
//! invocation queue, freezing and killing.

use super::{Emu, EmulatorError, InvokeOutput, error_doc};
use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Lifecycle phase of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstancePhase {
    /// Process started, has not asked for work yet.
    Starting,
    /// Waiting for an invocation (frozen if freezing is on).
    Idle,
    /// Running an invocation.
    Busy,
}

/// What `GET /admin/functions` reports per instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Function name.
    pub name: String,
    /// Emulator's instance number (a new one after every reclaim).
    pub instance: u64,
    /// OS process id.
    pub pid: u32,
    /// `starting`, `idle`, `frozen` or `busy`.
    pub state: String,
    /// Phase.
    pub phase: InstancePhase,
    /// Stopped with SIGSTOP right now.
    pub frozen: bool,
    /// Memory size (MB).
    pub memory_mb: u32,
    /// Function timeout (ms).
    pub timeout_ms: u64,
    /// Invocations started on this instance.
    pub invocations: u64,
    /// Invocations waiting for it.
    pub queued: usize,
    /// Process start (unix ms).
    pub started_unix_ms: u64,
    /// Time since the last invocation ended (ms), when idle.
    pub idle_ms: Option<u64>,
}

/// One invocation handed to the runtime through `/next`.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub request_id: String,
    pub payload: Bytes,
    pub deadline_unix_ms: u64,
    pub arn: String,
}

/// What the runtime reported for an invocation.
#[derive(Debug)]
pub(crate) enum Completion {
    Response(Bytes),
    Error { error_type: String, body: Bytes },
}

pub(crate) enum InvokeResult {
    /// The instance died before the invocation started: use a new one.
    Retry,
    Done(InvokeOutput),
}

#[derive(Debug)]
struct St {
    phase: InstancePhase,
    frozen: bool,
    last_active: Instant,
    invocations: u64,
    current: Option<String>,
}

pub(crate) struct Instance {
    pub id: u64,
    pub name: String,
    pub pid: u32,
    memory_mb: u32,
    timeout: Duration,
    started_unix_ms: u64,
    freeze: bool,
    arn: String,
    st: Mutex<St>,
    next_tx: mpsc::Sender<Delivery>,
    next_rx: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    results: Mutex<HashMap<String, oneshot::Sender<Completion>>>,
    serial: tokio::sync::Mutex<()>,
    queued: AtomicUsize,
    kill: CancellationToken,
    dead: CancellationToken,
    exit: Mutex<Option<String>>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct QueueGuard<'a>(&'a AtomicUsize, bool);

impl QueueGuard<'_> {
    fn leave(&mut self) {
        if self.1 {
            self.0.fetch_sub(1, Ordering::Relaxed);
            self.1 = false;
        }
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Instance {
    pub(crate) fn spawn(
        emu: &Arc<Emu>,
        id: u64,
        name: &str,
        memory_mb: u32,
        timeout: Duration,
        env: &BTreeMap<String, String>,
    ) -> Result<Arc<Instance>, EmulatorError> {
        let cfg = &emu.config;
        let mut cmd = Command::new(&emu.binary);
        cmd.env_clear();
        for k in ["PATH", "RUST_LOG", "RUST_BACKTRACE", "MEMFN_LOG_FORMAT"] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://{}/rt/{id}", emu.runtime_addr),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string())
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("emulator/{id}"))
        .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        .env("AWS_REGION", &cfg.region)
        .env("AWS_DEFAULT_REGION", &cfg.region)
        .env("MEMFN_PARENT_PID", std::process::id().to_string())
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        // Own process group: a terminal's Ctrl-C does not reach it directly, and when this
        // process dies the group is orphaned, so a stopped child gets SIGHUP + SIGCONT.
        .process_group(0);
        let log_file = match &cfg.log_dir {
            Some(dir) => {
                let path = dir.join(format!("{name}-{id}.log"));
                let f = std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| EmulatorError::Spawn {
                        name: name.to_owned(),
                        source,
                    })?;
                let f2 = f.try_clone().map_err(|source| EmulatorError::Spawn {
                    name: name.to_owned(),
                    source,
                })?;
                cmd.stdout(f).stderr(f2);
                true
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                false
            }
        };
        let mut child = cmd.spawn().map_err(|source| EmulatorError::Spawn {
            name: name.to_owned(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        if !log_file {
            if let Some(out) = child.stdout.take() {
                tokio::spawn(forward_lines(name.to_owned(), id, out));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(forward_lines(name.to_owned(), id, err));
            }
        }
        let (next_tx, next_rx) = mpsc::channel(1);
        let inst = Arc::new(Instance {
            id,
            name: name.to_owned(),
            pid,
            memory_mb,
            timeout,
            started_unix_ms: unix_ms(SystemTime::now()),
            freeze: cfg.freeze,
            arn: emu.arn(name),
            st: Mutex::new(St {
                phase: InstancePhase::Starting,
                frozen: false,
                last_active: Instant::now(),
                invocations: 0,
                current: None,
            }),
            next_tx,
            next_rx: tokio::sync::Mutex::new(next_rx),
            results: Mutex::new(HashMap::new()),
            serial: tokio::sync::Mutex::new(()),
            queued: AtomicUsize::new(0),
            kill: CancellationToken::new(),
            dead: CancellationToken::new(),
            exit: Mutex::new(None),
        });
        info!(
            function = name,
            instance = id,
            pid,
            memory_mb,
            "started function instance"
        );
        tokio::spawn(monitor(emu.clone(), inst.clone(), child));
        Ok(inst)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn results(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Completion>>> {
        self.results.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, sig: Signal) {
        if self.pid == 0 || self.dead.is_cancelled() {
            return;
        }
        let Ok(raw) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(e) = kill(Pid::from_raw(raw), sig) {
            debug!(function = %self.name, pid = self.pid, ?sig, error = %e, "signal failed");
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.is_cancelled()
    }

    /// Dead, or its kill was requested (reclaim, timeout): it takes no new invocations.
    pub(crate) fn is_dying(&self) -> bool {
        self.kill.is_cancelled() || self.dead.is_cancelled()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Ask the monitor to kill the process.
    pub(crate) fn kill(&self) {
        self.kill.cancel();
    }

    /// Kill right now from any context (Drop): SIGKILL plus the monitor's kill.
    pub(crate) fn kill_now(&self) {
        self.signal(Signal::SIGKILL);
        self.kill.cancel();
    }

    pub(crate) async fn kill_and_wait(&self, wait: Duration) {
        self.kill.cancel();
        if tokio::time::timeout(wait, self.dead.cancelled())
            .await
            .is_err()
        {
            warn!(function = %self.name, pid = self.pid, "instance did not exit after SIGKILL");
        }
    }

    /// Kill the instance if it has been idle for `limit` with nothing waiting for it. Decided
    /// under the state lock that `invoke` takes to mark the instance busy, and `invoke` checks
    /// the kill under that lock too, so an invocation is never delivered to an instance being
    /// reclaimed: it goes to a new one.
    pub(crate) fn reclaim_if_idle(&self, limit: Duration) -> bool {
        let st = self.st();
        let idle = st.phase == InstancePhase::Idle
            && self.queued() == 0
            && !self.is_dead()
            && !self.kill.is_cancelled()
            && st.last_active.elapsed() >= limit;
        if idle {
            self.kill.cancel();
        }
        idle
    }

    pub(crate) fn info(&self) -> InstanceInfo {
        let st = self.st();
        let state = match (st.phase, st.frozen) {
            (InstancePhase::Busy, _) => "busy",
            (_, true) => "frozen",
            (InstancePhase::Idle, false) => "idle",
            (InstancePhase::Starting, false) => "starting",
        };
        InstanceInfo {
            name: self.name.clone(),
            instance: self.id,
            pid: self.pid,
            state: state.into(),
            phase: st.phase,
            frozen: st.frozen,
            memory_mb: self.memory_mb,
            timeout_ms: self.timeout.as_millis() as u64,
            invocations: st.invocations,
            queued: self.queued(),
            started_unix_ms: self.started_unix_ms,
            idle_ms: (st.phase == InstancePhase::Idle)
                .then(|| st.last_active.elapsed().as_millis() as u64),
        }
    }

    /// Run one invocation on this instance, after those queued before it.
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        emu: &Arc<Emu>,
        payload: Bytes,
    ) -> Result<InvokeResult, EmulatorError> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let mut queue = QueueGuard(&self.queued, true);
        let _turn = tokio::select! {
            g = self.serial.lock() => g,
            _ = self.dead.cancelled() => return Ok(InvokeResult::Retry),
            _ = emu.cancel.cancelled() => return Err(EmulatorError::ShuttingDown),
        };
        queue.leave();
        let request_id = uuid::Uuid::new_v4().to_string();
        let deadline_unix_ms = unix_ms(SystemTime::now() + self.timeout);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.st();
            if self.is_dead() || self.kill.is_cancelled() {
                // Reclaimed (or dying) while we waited for our turn: use a new instance.
                return Ok(InvokeResult::Retry);
            }
            self.results().insert(request_id.clone(), tx);
            st.phase = InstancePhase::Busy;
            st.current = Some(request_id.clone());
            st.invocations += 1;
            if st.frozen {
                self.signal(Signal::SIGCONT);
                st.frozen = false;
                debug!(function = %self.name, pid = self.pid, "thawed");
            }
            let delivery = Delivery {
                request_id: request_id.clone(),
                payload,
                deadline_unix_ms,
                arn: self.arn.clone(),
            };
            if self.next_tx.try_send(delivery).is_err() {
                // Only possible if an earlier delivery was never taken: the runtime is broken.
                drop(st);
                self.kill();
                return Ok(InvokeResult::Retry);
            }
        }
        debug!(function = %self.name, %request_id, "invocation delivered");
        enum End {
            Done(Option<Completion>),
            TimedOut,
        }
        let end = tokio::select! {
            r = rx => End::Done(r.ok()),
            _ = self.dead.cancelled() => End::Done(None),
            _ = tokio::time::sleep(self.timeout) => End::TimedOut,
        };
        self.results().remove(&request_id);
        {
            let mut st = self.st();
            if st.current.as_deref() == Some(&request_id) {
                st.phase = InstancePhase::Idle;
                st.current = None;
                st.last_active = Instant::now();
            }
        }
        let unhandled = |payload: Bytes| InvokeOutput {
            payload,
            function_error: Some("Unhandled".into()),
        };
        Ok(InvokeResult::Done(match end {
            End::Done(Some(Completion::Response(body))) => InvokeOutput {
                payload: body,
                function_error: None,
            },
            End::Done(Some(Completion::Error { error_type, body })) => {
                if body.is_empty() {
                    unhandled(error_doc(&error_type, "the function reported an error"))
                } else {
                    unhandled(body)
                }
            }
            End::Done(None) => {
                let exit = self
                    .exit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_default();
                unhandled(error_doc(
                    "Runtime.ExitError",
                    &format!("RequestId: {request_id} Error: Runtime exited with error: {exit}"),
                ))
            }
            End::TimedOut => {
                warn!(function = %self.name, pid = self.pid, timeout = ?self.timeout, "invocation timed out; killing the instance");
                self.kill_and_wait(super::KILL_WAIT).await;
                unhandled(error_doc(
                    "Sandbox.Timedout",
                    &format!(
                        "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
                        self.timeout.as_secs_f64()
                    ),
                ))
            }
        }))
    }

    /// The runtime's `GET /next`: wait for an invocation. An instance that has nothing to do is
    /// frozen here (it is parked in this very request) and thawed by the next `invoke`.
    pub(crate) async fn next(&self) -> Option<Delivery> {
        let mut rx = tokio::select! {
            g = self.next_rx.lock() => g,
            _ = self.dead.cancelled() => return None,
        };
        {
            let mut st = self.st();
            if st.phase == InstancePhase::Starting {
                st.phase = InstancePhase::Idle;
                st.last_active = Instant::now();
            }
            match rx.try_recv() {
                Ok(d) => return Some(d),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.freeze && !st.frozen && st.phase == InstancePhase::Idle {
                        self.signal(Signal::SIGSTOP);
                        st.frozen = true;
                        debug!(function = %self.name, pid = self.pid, "frozen");
                    }
                }
            }
        }
        tokio::select! {
            d = rx.recv() => d,
            _ = self.dead.cancelled() => None,
        }
    }

    /// The runtime's `/response` or `/error`. False if the request id is not in flight.
    pub(crate) fn complete(&self, request_id: &str, c: Completion) -> bool {
        {
            let mut st = self.st();
            if st.current.as_deref() == Some(request_id) {
                st.phase = InstancePhase::Idle;
                st.current = None;
                st.last_active = Instant::now();
            }
        }
        match self.results().remove(request_id) {
            Some(tx) => tx.send(c).is_ok(),
            None => false,
        }
    }

    /// The runtime's `/init/error`: fail the current invocation and kill the instance.
    pub(crate) fn init_failed(&self, error_type: String, body: Bytes) {
        warn!(function = %self.name, pid = self.pid, %error_type, "function init failed");
        let current = self.st().current.clone();
        if let Some(id) = current {
            self.complete(&id, Completion::Error { error_type, body });
        }
        self.kill();
    }
}

async fn monitor(emu: Arc<Emu>, inst: Arc<Instance>, mut child: Child) {
    let status = tokio::select! {
        s = child.wait() => s,
        _ = inst.kill.cancelled() => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    let desc = match status {
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(9)) => "signal: killed".to_owned(),
            (None, Some(sig)) => format!("signal: {sig}"),
            _ => s.to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    };
    info!(function = %inst.name, instance = inst.id, pid = inst.pid, status = %desc, "function instance exited");
    *inst.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(desc);
    inst.dead.cancel();
    inst.results().clear();
    emu.forget(&inst);
}

async fn forward_lines(name: String, id: u64, r: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(target: "mem_function::emulator::function", function = %name, instance = id, "{line}");
    }
}
