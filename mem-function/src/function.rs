//! The function: runs under `lambda_runtime`, keeps a process-global [`Store`], and on each
//! invocation dials back to the gateway, authenticates, reports its state and serves chunk
//! requests until it has been idle for the idle tail or its deadline approaches.
//!
//! Environment (set on the Lambda function's configuration on AWS, by the emulator locally):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `MEMFN_SECRET` | deployment secret for the HELLO MAC (>= 16 bytes) | required |
//! | `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` | memory size in MB (set by Lambda) | required |
//! | `MEMFN_OVERHEAD_MB` | MiB reserved for the runtime (~10 MB) and one in-flight frame (up to `MEMFN_MAX_CHUNK`); capacity = memory - overhead (the binary also refuses chunks that would take its resident set past memory - 16 MiB: see `store`) | 100 |
//! | `MEMFN_MAX_CHUNK` | largest frame body accepted, bytes | 67108864 |
//! | `MEMFN_FAULT_INJECTION` | `1` enables FAULT_CORRUPT and the `sleep` command (tests only) | off |
//! | `MEMFN_PARENT_PID` | exit when the parent (the emulator) dies (set by the emulator) | unset |
//! | `RUST_LOG` / `MEMFN_LOG_FORMAT=json` | logging | `info` / text |
//!
//! Connections last one invocation: a frozen function cannot answer, so a socket kept across the
//! freeze would only mislead the gateway. Within an invocation a connection that fails (reset,
//! i/o error) is re-dialed with backoff until the idle tail or the deadline runs out.

use crate::framed::{BodyAlloc, FrameReader, Incoming, ReadError};
use crate::invocation::{Invocation, InvocationResponse, Outcome, PAYLOAD_VERSION};
use crate::store::{DEFAULT_OVERHEAD_MB, RUNTIME_RESERVE, Store, StoreError};
use crate::wire::{
    self, Command, ErrorBody, ErrorCode, Frame, Hello, InstanceId, Limits, Opcode, Request,
    Response, ViewCheck,
};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout_at;
use tracing::{debug, info, warn};

/// Minimum length of the deployment secret.
pub const MIN_SECRET_LEN: usize = 16;
/// After its BYE notice the function keeps answering in-flight requests until the gateway
/// closes, but no longer than this.
pub const BYE_GRACE: Duration = Duration::from_secs(2);
/// First re-dial backoff; doubles up to [`REDIAL_BACKOFF_MAX`].
pub const REDIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Largest re-dial backoff.
pub const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Serving time assumed when the platform's deadline is unusable (Lambda's maximum timeout).
pub const FALLBACK_TIMEOUT: Duration = Duration::from_secs(900);
/// Responses queued for the socket writer before request handling waits (backpressure).
pub const RESPONSE_QUEUE: usize = 64;

/// Configuration read from the environment.
#[derive(Clone)]
pub struct FunctionEnv {
    /// Deployment secret (MEMFN_SECRET).
    pub secret: Vec<u8>,
    /// AWS_LAMBDA_FUNCTION_NAME.
    pub function_name: String,
    /// AWS_LAMBDA_FUNCTION_MEMORY_SIZE (MB).
    pub memory_mb: u64,
    /// MEMFN_OVERHEAD_MB.
    pub overhead_mb: u64,
    /// MEMFN_MAX_CHUNK.
    pub max_chunk: usize,
    /// MEMFN_FAULT_INJECTION.
    pub fault_injection: bool,
}

impl std::fmt::Debug for FunctionEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionEnv")
            .field("secret", &"<redacted>")
            .field("function_name", &self.function_name)
            .field("memory_mb", &self.memory_mb)
            .field("overhead_mb", &self.overhead_mb)
            .field("max_chunk", &self.max_chunk)
            .field("fault_injection", &self.fault_injection)
            .finish()
    }
}

impl FunctionEnv {
    /// Read the configuration from the process environment.
    pub fn from_env() -> Result<FunctionEnv, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let secret = var("MEMFN_SECRET")
            .ok_or("MEMFN_SECRET is not set")?
            .into_bytes();
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "MEMFN_SECRET must be at least {MIN_SECRET_LEN} bytes"
            ));
        }
        let num = |k: &str, d: u64| -> Result<u64, String> {
            var(k)
                .map(|v| v.parse::<u64>().map_err(|e| format!("{k}={v}: {e}")))
                .unwrap_or(Ok(d))
        };
        Ok(FunctionEnv {
            secret,
            function_name: var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
            memory_mb: num("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 128)?,
            overhead_mb: num("MEMFN_OVERHEAD_MB", DEFAULT_OVERHEAD_MB)?,
            max_chunk: num("MEMFN_MAX_CHUNK", wire::DEFAULT_MAX_BODY as u64)?.min(u32::MAX as u64)
                as usize,
            fault_injection: var("MEMFN_FAULT_INJECTION").is_some_and(|v| v == "1" || v == "true"),
        })
    }
}

/// The Lambda context bits the handler needs.
#[derive(Debug, Clone)]
pub struct InvocationContext {
    /// Lambda request id.
    pub request_id: String,
    /// Lambda deadline.
    pub deadline: SystemTime,
}

/// One function process: configuration, the process-global store, identity and counters.
#[derive(Debug)]
pub struct MemFunction {
    env: FunctionEnv,
    store: Arc<Store>,
    instance_id: InstanceId,
    started_unix_ms: u64,
    invocations: AtomicU64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Convert a wall-clock deadline to a monotonic instant.
fn instant_at(t: SystemTime) -> Instant {
    let now_sys = SystemTime::now();
    let now = Instant::now();
    match t.duration_since(now_sys) {
        Ok(d) => now + d,
        Err(_) => now,
    }
}

enum ConnEnd {
    Idle,
    Deadline,
    Bye,
    Closed,
    /// The socket failed: re-dial if time allows.
    Lost(String),
    Protocol(String),
}

struct Session<'a> {
    f: &'a MemFunction,
    inv: &'a Invocation,
    ctx: &'a InvocationContext,
    /// Stop serving (send BYE) at this instant.
    serve_until: Instant,
    /// Hard stop for the BYE grace.
    hard_stop: Instant,
    requests: u64,
    last_activity: Instant,
}

impl MemFunction {
    /// A function with an empty store sized from `env`.
    pub fn new(env: FunctionEnv) -> Arc<MemFunction> {
        let capacity = Store::capacity_for(env.memory_mb, env.overhead_mb);
        let needed = env.max_chunk as u64 + RUNTIME_RESERVE;
        if env.overhead_mb * 1024 * 1024 < needed {
            warn!(
                overhead_mb = env.overhead_mb,
                max_chunk = env.max_chunk,
                "MEMFN_OVERHEAD_MB does not cover one in-flight frame of MEMFN_MAX_CHUNK bytes plus \
                 the runtime ({} MiB): a full function receiving a frame that large can exceed its \
                 memory size",
                needed.div_ceil(1024 * 1024)
            );
        }
        Arc::new(MemFunction {
            env,
            store: Arc::new(Store::new(capacity)),
            instance_id: InstanceId::random(),
            started_unix_ms: unix_ms(SystemTime::now()),
            invocations: AtomicU64::new(0),
        })
    }

    /// This process's instance id.
    pub fn instance_id(&self) -> InstanceId {
        self.instance_id
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Run under the Lambda Runtime API until it becomes unreachable (then return the error,
    /// so the process exits: an emulator that died takes its instances with it).
    pub async fn run_lambda(self: Arc<Self>) -> Result<(), lambda_runtime::Error> {
        let handler =
            lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<Invocation>| {
                let f = self.clone();
                async move {
                    let ctx = InvocationContext {
                        request_id: event.context.request_id.clone(),
                        deadline: event.context.deadline(),
                    };
                    Ok::<_, lambda_runtime::Error>(f.handle(event.payload, ctx).await)
                }
            });
        lambda_runtime::run(handler).await
    }

    /// Handle one invocation.
    #[tracing::instrument(skip_all, fields(node = %inv.node_id, command = ?inv.command, request_id = %ctx.request_id))]
    pub async fn handle(&self, inv: Invocation, ctx: InvocationContext) -> InvocationResponse {
        let started = Instant::now();
        let invocations = self.invocations.fetch_add(1, Ordering::Relaxed) + 1;
        let before = self.store.ack();
        let mut view = ViewCheck::compare(&inv.view, &before.state);
        let mut resp = InvocationResponse {
            v: PAYLOAD_VERSION,
            node_id: inv.node_id.clone(),
            function_name: self.env.function_name.clone(),
            instance_id: self.instance_id,
            instance_started_unix_ms: self.started_unix_ms,
            invocations,
            invocation_id: ctx.request_id.clone(),
            command: inv.command,
            outcome: Outcome::BadRequest,
            view,
            previous_owner: None,
            state_before: before.state,
            state: before.state,
            stats: before.stats,
            counters: self.store.counters(),
            requests: 0,
            connections: 0,
            served_ms: 0,
            error: None,
        };
        if let Err(e) = validate(&inv, &self.env) {
            resp.error = Some(e);
            return resp;
        }
        if let Some(prev) = self.store.claim(&inv.node_id) {
            // The same memory now serves another node id: whatever the gateway believes about
            // either node, this memory is not it.
            if !before.state.is_empty() {
                view = ViewCheck::Diverged;
            }
            resp.previous_owner = Some(prev);
        }
        resp.view = view;
        info!(view = ?view, state = %before.state, invocations, "invoked");

        if inv.command == Command::Sleep {
            tokio::time::sleep(Duration::from_millis(inv.sleep_ms.unwrap_or(0))).await;
            resp.outcome = Outcome::Slept;
            resp.served_ms = started.elapsed().as_millis() as u64;
            return resp;
        }
        if inv.command == Command::Reset {
            self.store.reset();
            self.store.claim(&inv.node_id);
        }

        let deadline = if ctx.deadline > SystemTime::now() {
            instant_at(ctx.deadline)
        } else {
            // Some local runtimes (cargo lambda watch) send a deadline in the past.
            warn!(
                deadline_unix_ms = unix_ms(ctx.deadline),
                "deadline already passed; assuming Lambda's maximum"
            );
            Instant::now() + FALLBACK_TIMEOUT
        };
        let margin = inv.deadline_margin();
        let serve_until = deadline.checked_sub(margin).unwrap_or(started).max(started);
        let hard_stop = deadline
            .checked_sub(margin / 4)
            .unwrap_or(started)
            .max(serve_until);
        let mut s = Session {
            f: self,
            inv: &inv,
            ctx: &ctx,
            serve_until,
            hard_stop,
            requests: 0,
            last_activity: started,
        };
        let (outcome, error) = s.run(view, &mut resp.connections).await;
        resp.outcome = outcome;
        resp.error = error;
        resp.requests = s.requests;
        let after = self.store.ack();
        resp.state = after.state;
        resp.stats = after.stats;
        resp.counters = self.store.counters();
        resp.served_ms = started.elapsed().as_millis() as u64;
        info!(outcome = ?resp.outcome, requests = resp.requests, state = %after.state, "invocation done");
        resp
    }
}

fn validate(inv: &Invocation, env: &FunctionEnv) -> Result<(), String> {
    if inv.v != PAYLOAD_VERSION {
        return Err(format!("unsupported payload version {}", inv.v));
    }
    if inv.node_id.is_empty() || inv.node_id.len() > wire::MAX_NODE_ID {
        return Err("node_id must be 1..=128 bytes".into());
    }
    if inv.token.len() > u8::MAX as usize {
        return Err("token must be at most 255 bytes".into());
    }
    if inv.callback.is_empty() {
        return Err("callback address missing".into());
    }
    if inv.command == Command::Sleep && !env.fault_injection {
        return Err("the sleep command needs MEMFN_FAULT_INJECTION=1".into());
    }
    Ok(())
}

impl Session<'_> {
    fn idle_deadline(&self) -> Instant {
        (self.last_activity + self.inv.idle_tail()).min(self.serve_until)
    }

    async fn run(&mut self, view: ViewCheck, connections: &mut u32) -> (Outcome, Option<String>) {
        let mut backoff = REDIAL_BACKOFF;
        let mut last_error: Option<String> = None;
        loop {
            let give_up = self.idle_deadline();
            if Instant::now() >= give_up && *connections > 0 {
                return (Outcome::Unreachable, last_error);
            }
            *connections += 1;
            match self.dial_and_authenticate(view).await {
                Ok(Ok(conn)) => {
                    backoff = REDIAL_BACKOFF;
                    if self.inv.command == Command::Warmup {
                        return (self.warmup(conn).await, None);
                    }
                    match self.serve(conn).await {
                        ConnEnd::Idle => return (Outcome::Idle, None),
                        ConnEnd::Deadline => return (Outcome::Deadline, None),
                        ConnEnd::Bye => return (Outcome::Bye, None),
                        ConnEnd::Closed => return (Outcome::Closed, None),
                        ConnEnd::Protocol(e) => return (Outcome::ProtocolError, Some(e)),
                        ConnEnd::Lost(e) => {
                            warn!(error = %e, "connection lost, re-dialing");
                            last_error = Some(e);
                        }
                    }
                }
                Ok(Err(refusal)) => return (Outcome::Unauthenticated, Some(refusal)),
                Err(e) => {
                    debug!(error = %e, "dial failed");
                    last_error = Some(e);
                }
            }
            let give_up = self.idle_deadline();
            let now = Instant::now();
            if now + backoff >= give_up {
                return (Outcome::Unreachable, last_error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(REDIAL_BACKOFF_MAX);
        }
    }

    /// Dial, read CHALLENGE, send HELLO, read WELCOME. `Ok(Err(_))`: the gateway refused us.
    async fn dial_and_authenticate(
        &mut self,
        view: ViewCheck,
    ) -> Result<Result<FrameConn, String>, String> {
        let step = self.inv.dial_timeout();
        let stream = tokio::time::timeout(step, TcpStream::connect(self.inv.callback.as_str()))
            .await
            .map_err(|_| format!("dial {} timed out", self.inv.callback))?
            .map_err(|e| format!("dial {}: {e}", self.inv.callback))?;
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut reader = FrameReader::new(rd, Limits::HANDSHAKE);
        let challenge = tokio::time::timeout(step, reader.read_frame())
            .await
            .map_err(|_| "no CHALLENGE from the gateway".to_owned())?
            .map_err(|e| format!("reading CHALLENGE: {e}"))?
            .ok_or("gateway closed before CHALLENGE")?;
        let nonce = wire::decode_challenge(&challenge).map_err(|e| e.to_string())?;
        let ack = self.f.store.ack();
        let hello = Hello {
            node_id: self.inv.node_id.clone(),
            instance_id: self.f.instance_id,
            token: Bytes::from(self.inv.token.clone().into_bytes()),
            command: self.inv.command,
            view,
            state: ack.state,
            stats: ack.stats,
            invocation_id: self
                .ctx
                .request_id
                .chars()
                .take(wire::MAX_INVOCATION_ID)
                .collect(),
            deadline_unix_ms: unix_ms(
                SystemTime::now() + self.serve_until.saturating_duration_since(Instant::now()),
            ),
        };
        let frame = hello
            .into_frame(&self.f.env.secret, &nonce)
            .map_err(|e| e.to_string())?;
        crate::framed::write_frame(&mut wr, &frame)
            .await
            .map_err(|e| format!("sending HELLO: {e}"))?;
        let answer = tokio::time::timeout(step, reader.read_frame())
            .await
            .map_err(|_| "no answer to HELLO".to_owned())?;
        match answer {
            Ok(Some(f)) if f.opcode == Opcode::Welcome && f.flags == 0 => {}
            Ok(Some(f)) if f.is_error() => {
                let msg = ErrorBody::decode(f.meta)
                    .map(|e| e.message)
                    .unwrap_or_else(|e| e.to_string());
                return Ok(Err(format!("gateway refused HELLO: {msg}")));
            }
            Ok(Some(f)) => return Err(format!("unexpected {:?} instead of WELCOME", f.opcode)),
            Ok(None) => return Err("gateway closed the connection before WELCOME".into()),
            Err(e) => return Err(format!("reading WELCOME: {e}")),
        }
        reader.set_limits(Limits::with_max_body(self.f.env.max_chunk));
        // Chunks are stored in the buffers they arrive in: large ones get mappings of their own.
        reader.set_body_alloc(BodyAlloc::Mapped);
        Ok(Ok(FrameConn { reader, writer: wr }))
    }

    async fn warmup(&mut self, conn: FrameConn) -> Outcome {
        let FrameConn {
            mut reader,
            mut writer,
        } = conn;
        let notice = Response::bye_notice(self.f.store.ack());
        if crate::framed::write_frame(&mut writer, &notice)
            .await
            .is_ok()
        {
            // Give the gateway a moment to close; a warm-up answers nothing.
            let until = tokio::time::Instant::from_std(
                Instant::now() + self.inv.dial_timeout().min(BYE_GRACE),
            );
            while let Ok(Ok(Some(_))) = timeout_at(until, reader.read_frame()).await {}
        }
        let _ = writer.shutdown().await;
        Outcome::Warmed
    }

    async fn serve(&mut self, conn: FrameConn) -> ConnEnd {
        let FrameConn { mut reader, writer } = conn;
        let (tx, rx) = mpsc::channel::<Frame>(RESPONSE_QUEUE);
        let writer_task = tokio::spawn(write_loop(writer, rx));
        let store = self.f.store.clone();
        let mut bye: Option<(Instant, ConnEnd)> = None;
        self.last_activity = Instant::now();
        let end = loop {
            let wake = match &bye {
                Some((until, _)) => *until,
                None => self.idle_deadline(),
            };
            let admit = |h: &wire::Header| refusal(h, &store).is_none();
            let next = timeout_at(
                tokio::time::Instant::from_std(wake),
                reader.read_frame_admit(admit),
            )
            .await;
            match next {
                Err(_elapsed) => match bye.take() {
                    Some((_, end)) => break end,
                    None => {
                        let end = if Instant::now() >= self.serve_until {
                            ConnEnd::Deadline
                        } else {
                            ConnEnd::Idle
                        };
                        debug!("sending BYE notice");
                        if tx.send(Response::bye_notice(store.ack())).await.is_err() {
                            break ConnEnd::Lost("writer closed".into());
                        }
                        let until = (Instant::now() + BYE_GRACE)
                            .min(self.hard_stop)
                            .max(Instant::now() + Duration::from_millis(50));
                        bye = Some((until, end));
                    }
                },
                Ok(Ok(None)) => {
                    break match bye.take() {
                        Some((_, end)) => end,
                        None => ConnEnd::Closed,
                    };
                }
                Ok(Ok(Some(Incoming::Skipped(h)))) => {
                    self.last_activity = Instant::now();
                    self.requests += 1;
                    store.note_refusal();
                    let e = refusal(&h, &store).unwrap_or_else(|| {
                        ErrorBody::new(ErrorCode::BadRequest, "frame refused from its header")
                    });
                    if tx.send(e.into_frame(h.opcode, h.request_id)).await.is_err() {
                        break ConnEnd::Lost("writer closed".into());
                    }
                }
                Ok(Ok(Some(Incoming::Frame(frame)))) => {
                    self.last_activity = Instant::now();
                    self.requests += 1;
                    let (op, rid) = (frame.opcode, frame.request_id);
                    let (resp, is_bye) = match Request::from_frame(frame) {
                        Ok(req) => {
                            let is_bye = req == Request::Bye;
                            (self.execute(req), is_bye)
                        }
                        Err(e) => {
                            store.note_refusal();
                            (Response::Error(ErrorBody::from(&e)), false)
                        }
                    };
                    if tx.send(resp.into_frame(op, rid)).await.is_err() {
                        break ConnEnd::Lost("writer closed".into());
                    }
                    if is_bye {
                        break ConnEnd::Bye;
                    }
                }
                Ok(Err(ReadError::Frame(e))) => {
                    // Header-level error: the stream cannot be resynchronized. Say why, then end.
                    warn!(error = %e, "protocol error from gateway");
                    let _ = tx
                        .send(ErrorBody::from(&e).into_frame(Opcode::Bye, 0))
                        .await;
                    break ConnEnd::Protocol(e.to_string());
                }
                Ok(Err(e)) => {
                    break match bye.take() {
                        Some((_, end)) => end,
                        None => ConnEnd::Lost(e.to_string()),
                    };
                }
            }
        };
        drop(tx);
        drop(reader);
        let until = tokio::time::Instant::from_std(
            self.hard_stop
                .max(Instant::now() + Duration::from_millis(100)),
        );
        match timeout_at(until, writer_task).await {
            Ok(Ok(Ok(()))) => end,
            Ok(Ok(Err(e))) => match end {
                ConnEnd::Lost(_) | ConnEnd::Protocol(_) => end,
                _ => {
                    debug!(error = %e, "writer failed after the session ended");
                    end
                }
            },
            _ => end,
        }
    }

    fn execute(&self, req: Request) -> Response {
        let store = &self.f.store;
        let err = |e: StoreError| {
            let (code, detail) = match &e {
                StoreError::NotFound => (ErrorCode::NotFound, [0, 0]),
                StoreError::Full { needed, free } => (ErrorCode::Full, [*needed, *free]),
                StoreError::Corrupt { expected, actual } => {
                    (ErrorCode::Corrupt, [*expected as u64, *actual as u64])
                }
                StoreError::BadRange { offset, len } => (ErrorCode::BadRequest, [*offset, *len]),
            };
            Response::Error(ErrorBody {
                code,
                detail,
                message: e.to_string(),
            })
        };
        match req {
            Request::Put { id, crc32c, data } => {
                if data.len() > self.f.env.max_chunk {
                    return Response::Error(ErrorBody::new(
                        ErrorCode::FrameTooLarge,
                        "chunk too large",
                    ));
                }
                store
                    .put(id, crc32c, data)
                    .map(Response::Put)
                    .unwrap_or_else(err)
            }
            Request::Get { id, range } => match store.get(&id, range) {
                Ok(r) => Response::Get {
                    chunk_len: r.chunk_len,
                    offset: r.offset,
                    crc32c: r.crc32c,
                    data: r.data,
                },
                Err(e) => err(e),
            },
            Request::Delete { id } => {
                let (existed, ack) = store.delete(&id);
                Response::Delete { existed, ack }
            }
            Request::Stat { id } => match store.stat(&id) {
                Ok((len, crc32c)) => Response::Stat { len, crc32c },
                Err(e) => err(e),
            },
            Request::List { after, limit } => {
                let (entries, more) = store.list(after.as_ref(), limit);
                Response::List { entries, more }
            }
            Request::Stats => Response::Stats(store.ack()),
            Request::Ping { payload } => Response::Pong { payload },
            Request::Bye => Response::Bye(store.ack()),
            Request::FaultCorrupt { id } => {
                if !self.f.env.fault_injection {
                    return Response::Error(ErrorBody::new(
                        ErrorCode::Unsupported,
                        "fault injection is disabled",
                    ));
                }
                match store.corrupt(&id) {
                    Ok(()) => Response::FaultCorrupt,
                    Err(e) => err(e),
                }
            }
        }
    }
}

/// Should the request whose header is `h` be refused before its body is received? A put that
/// cannot fit (FULL), a PING body over [`wire::MAX_PING_BODY`] and a body on an operation that
/// takes none (BAD_REQUEST) are answered without buffering the body, so a peer cannot make the
/// function allocate memory it will not keep.
fn refusal(h: &wire::Header, store: &Store) -> Option<ErrorBody> {
    let len = h.body_len as u64;
    if len == 0 {
        return None;
    }
    match h.opcode {
        Opcode::PutChunk if !h.is_response() => (!store.fits(len)).then(|| {
            let mut e = ErrorBody::new(
                ErrorCode::Full,
                "chunk does not fit in this function's memory",
            );
            e.detail = [len, store.free()];
            e
        }),
        Opcode::Ping if !h.is_response() => (len > wire::MAX_PING_BODY as u64).then(|| {
            let mut e = ErrorBody::new(ErrorCode::BadRequest, "PING body too large");
            e.detail = [len, wire::MAX_PING_BODY as u64];
            e
        }),
        _ => Some(ErrorBody::new(
            ErrorCode::BadRequest,
            "this frame takes no body",
        )),
    }
}

struct FrameConn {
    reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

async fn write_loop(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
) -> std::io::Result<()> {
    let mut batch = crate::framed::FrameBatch::new();
    while let Some(frame) = rx.recv().await {
        batch.write_queued(&mut w, &frame, &mut rx).await?;
    }
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::{FrameReader, write_frame};
    use crate::wire::{ByteRange, ChunkId, NodeState};

    const SECRET: &[u8] = b"unit-test-secret-0123456789";

    /// Runs `handle` in-process against a gateway played by hand, so the test can send frames
    /// the real client never would.
    #[tokio::test]
    async fn bodies_it_would_not_keep_are_refused_from_the_header() {
        let f = MemFunction::new(FunctionEnv {
            secret: SECRET.to_vec(),
            function_name: "node-0".into(),
            memory_mb: 8,
            overhead_mb: 4,
            max_chunk: wire::DEFAULT_MAX_BODY,
            fault_injection: false,
        });
        let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inv = Invocation::new(
            Command::Serve,
            gateway.local_addr().unwrap().to_string(),
            "node-0",
            "tok",
            NodeState::EMPTY,
        )
        .with_idle_tail(Duration::from_secs(20));
        let ctx = InvocationContext {
            request_id: "req-1".into(),
            deadline: SystemTime::now() + Duration::from_secs(60),
        };
        let f2 = f.clone();
        let task = tokio::spawn(async move { f2.handle(inv, ctx).await });

        let (stream, _) = gateway.accept().await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut r = FrameReader::new(rd, Limits::DEFAULT);
        let nonce = [9u8; wire::NONCE_LEN];
        write_frame(&mut wr, &wire::challenge_frame(&nonce))
            .await
            .unwrap();
        let hello = Hello::verify(&r.read_frame().await.unwrap().unwrap(), SECRET, &nonce).unwrap();
        assert_eq!(hello.stats.capacity_bytes, 4 << 20);
        write_frame(&mut wr, &wire::welcome_frame()).await.unwrap();

        let id = ChunkId::for_object(1, 0, 0);
        let big = Bytes::from(vec![1u8; 5 << 20]);
        let put_big = Request::Put {
            id: id.clone(),
            crc32c: crc32c::crc32c(&big),
            data: big,
        }
        .into_frame(1);
        let ping_big = Request::Ping {
            payload: Bytes::from(vec![2u8; wire::MAX_PING_BODY + 1]),
        }
        .into_frame(2);
        let mut get_with_body = Request::Get {
            id: id.clone(),
            range: ByteRange::ALL,
        }
        .into_frame(3);
        get_with_body.body = Bytes::from_static(b"unexpected");
        let small = Bytes::from_static(b"fits");
        let put_small = Request::Put {
            id: id.clone(),
            crc32c: crc32c::crc32c(&small),
            data: small,
        }
        .into_frame(4);
        for frame in [&put_big, &ping_big, &get_with_body, &put_small] {
            write_frame(&mut wr, frame).await.unwrap();
        }
        let mut answers = Vec::new();
        for _ in 0..4 {
            let f = r.read_frame().await.unwrap().unwrap();
            answers.push((f.request_id, Response::from_frame(f).unwrap()));
        }
        let code = |i: usize| match &answers[i].1 {
            Response::Error(e) => Some(e.code),
            _ => None,
        };
        assert_eq!(answers[0].0, 1);
        assert_eq!(code(0), Some(ErrorCode::Full));
        assert_eq!(code(1), Some(ErrorCode::BadRequest));
        assert_eq!(code(2), Some(ErrorCode::BadRequest));
        assert!(matches!(answers[3], (4, Response::Put(ack)) if ack.stats.chunks == 1));

        write_frame(&mut wr, &Request::Bye.into_frame(5))
            .await
            .unwrap();
        let bye = Response::from_frame(r.read_frame().await.unwrap().unwrap()).unwrap();
        assert!(matches!(bye, Response::Bye(ack) if ack.state.term == 1));
        let resp = task.await.unwrap();
        assert_eq!(resp.outcome, Outcome::Bye);
        assert_eq!(resp.requests, 5);
        assert_eq!(resp.counters.errors, 3);
        assert_eq!(resp.view, ViewCheck::Fresh);
        // Nothing refused was ever buffered whole: the store holds only the small chunk.
        assert_eq!(f.store().ack().stats.chunks, 1);
    }
}
