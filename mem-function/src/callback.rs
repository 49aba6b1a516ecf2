//! Gateway side of the dial-back protocol: the [`CallbackListener`] that functions dial, and the
//! [`FunctionConn`] handle that issues chunk requests over one authenticated connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mem_function::callback::CallbackListener;
//! use mem_function::wire::ChunkId;
//! let mut listener = CallbackListener::bind("127.0.0.1:0".parse()?, b"a-deployment-secret".to_vec()).await?;
//! // ... invoke a function with `listener.local_addr()` as its callback address ...
//! let conn = listener.accept().await.expect("a function dialed back");
//! let id = ChunkId::for_object(42, 0, 0);
//! conn.put_chunk(&id, bytes::Bytes::from_static(b"chunk bytes")).await?;
//! assert_eq!(&conn.get_chunk(&id).await?[..], b"chunk bytes");
//! conn.bye().await?;
//! # Ok(()) }
//! ```
//!
//! One connection multiplexes many requests: each call takes a permit of a semaphore (bounded
//! in flight), registers a one-shot slot under a fresh request id and queues its frame for the
//! writer task; the reader task routes each response to its slot by request id.

use crate::framed::{FrameBatch, FrameReader, ReadError};
use crate::wire::{
    self, Ack, ByteRange, ChunkId, ChunkInfo, ErrorBody, ErrorCode, Frame, Hello, InstanceId,
    Limits, Opcode, Request, Response,
};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a dialing peer has to complete the handshake.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-request timeout (a 64 MiB chunk at ~100 MB/s takes under a second; this also
/// covers a queue of them).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on requests in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;
/// Default bound on peers in the handshake at once (unauthenticated peers cost a task each).
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// Authenticated connections waiting for [`CallbackListener::accept`].
pub const ACCEPT_QUEUE: usize = 256;

/// Configuration of a [`CallbackListener`].
#[derive(Clone)]
pub struct ListenerConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// The deployment secret (the functions' `MEMFN_SECRET`).
    pub secret: Vec<u8>,
    /// Handshake deadline per peer.
    pub auth_timeout: Duration,
    /// If set, a HELLO must carry a token issued here for its node id; otherwise any token
    /// with a valid MAC is accepted.
    pub tokens: Option<InvocationTokens>,
    /// Largest chunk: larger puts are refused here, larger response bodies end the connection.
    /// Keep it equal to the functions' `MEMFN_MAX_CHUNK`.
    pub max_chunk: usize,
    /// Requests in flight per connection.
    pub max_in_flight: usize,
    /// Default per-request timeout of the connections.
    pub request_timeout: Duration,
    /// Peers in the handshake at once.
    pub max_handshakes: usize,
}

impl ListenerConfig {
    /// Defaults for everything but the address and the secret.
    pub fn new(bind: SocketAddr, secret: impl Into<Vec<u8>>) -> ListenerConfig {
        ListenerConfig {
            bind,
            secret: secret.into(),
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            tokens: None,
            max_chunk: wire::DEFAULT_MAX_BODY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        }
    }
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("bind", &self.bind)
            .field("secret", &"<redacted>")
            .field("auth_timeout", &self.auth_timeout)
            .field("tokens", &self.tokens.is_some())
            .field("max_chunk", &self.max_chunk)
            .field("max_in_flight", &self.max_in_flight)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Invocation tokens issued per node id. The gateway issues one per invocation, passes it in
/// the payload, and the listener accepts a HELLO only with a token issued for that node.
#[derive(Clone, Default, Debug)]
pub struct InvocationTokens {
    inner: Arc<Mutex<HashMap<String, HashSet<String>>>>,
}

impl InvocationTokens {
    /// Empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issue a fresh random token (32 hex chars) for `node_id`.
    pub fn issue(&self, node_id: &str) -> String {
        let token = hex::encode(rand::random::<[u8; 16]>());
        self.lock()
            .entry(node_id.to_owned())
            .or_default()
            .insert(token.clone());
        token
    }

    /// Forget a token (when its invocation has returned).
    pub fn revoke(&self, node_id: &str, token: &str) {
        let mut g = self.lock();
        if let Some(set) = g.get_mut(node_id) {
            set.remove(token);
            if set.is_empty() {
                g.remove(node_id);
            }
        }
    }

    /// Was `token` issued for `node_id` (and not revoked)?
    pub fn is_valid(&self, node_id: &str, token: &[u8]) -> bool {
        let Ok(token) = std::str::from_utf8(token) else {
            return false;
        };
        self.lock().get(node_id).is_some_and(|s| s.contains(token))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of a listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections that completed the handshake.
    pub accepted: AtomicU64,
    /// Connections refused or dropped in the handshake.
    pub refused: AtomicU64,
}

/// Accepts dial-backs, authenticates them, and yields [`FunctionConn`]s.
#[derive(Debug)]
pub struct CallbackListener {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<FunctionConn>,
    cancel: CancellationToken,
    stats: Arc<ListenerStats>,
}

impl CallbackListener {
    /// Listen on `bind` with default settings.
    pub async fn bind(
        bind: SocketAddr,
        secret: impl Into<Vec<u8>>,
    ) -> io::Result<CallbackListener> {
        Self::bind_with(ListenerConfig::new(bind, secret)).await
    }

    /// Listen with the given configuration.
    pub async fn bind_with(config: ListenerConfig) -> io::Result<CallbackListener> {
        if config.secret.len() < crate::function::MIN_SECRET_LEN {
            // The function refuses to start with a shorter MEMFN_SECRET: fail here, not there.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the deployment secret must be at least {} bytes",
                    crate::function::MIN_SECRET_LEN
                ),
            ));
        }
        let listener = TcpListener::bind(config.bind).await?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let cancel = CancellationToken::new();
        let stats = Arc::new(ListenerStats::default());
        tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            tx,
            cancel.clone(),
            stats.clone(),
        ));
        info!(%local_addr, "callback listener up");
        Ok(CallbackListener {
            local_addr,
            rx,
            cancel,
            stats,
        })
    }

    /// The address functions should dial (put it in the invocation payload).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next authenticated connection; `None` once the listener is shut down.
    pub async fn accept(&mut self) -> Option<FunctionConn> {
        self.rx.recv().await
    }

    /// Counters.
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// Stop accepting (connections already handed out keep working).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for CallbackListener {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ListenerConfig>,
    tx: mpsc::Sender<FunctionConn>,
    cancel: CancellationToken,
    stats: Arc<ListenerStats>,
) {
    let handshakes = Arc::new(Semaphore::new(config.max_handshakes));
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            warn!(%peer, "too many handshakes in progress, dropping connection");
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (config, tx, stats, cancel) =
            (config.clone(), tx.clone(), stats.clone(), cancel.clone());
        tokio::spawn(async move {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(config.auth_timeout, handshake(stream, peer, &config)) => r,
            };
            drop(permit);
            match result {
                Ok(Ok(conn)) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    info!(%peer, node = %conn.node_id(), instance = %conn.instance_id(), view = ?conn.hello().view,
                          state = %conn.hello().state, command = ?conn.hello().command, "function authenticated");
                    if tx.send(conn).await.is_err() {
                        debug!("listener gone; dropping authenticated connection");
                    }
                }
                Ok(Err(e)) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, error = %e, "dial-back refused");
                }
                Err(_) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, "dial-back did not authenticate in time");
                }
            }
        });
    }
}

/// Why a dial-back was refused.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("peer closed before HELLO")]
    Closed,
    #[error("{0}")]
    Auth(#[from] wire::AuthError),
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
) -> Result<FunctionConn, HandshakeError> {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let nonce: [u8; wire::NONCE_LEN] = rand::random();
    crate::framed::write_frame(&mut wr, &wire::challenge_frame(&nonce)).await?;
    let mut reader = FrameReader::new(rd, Limits::HANDSHAKE);
    let frame = match reader.read_frame().await {
        Ok(Some(f)) => f,
        Ok(None) => return Err(HandshakeError::Closed),
        Err(ReadError::Frame(e)) => {
            let _ = crate::framed::write_frame(
                &mut wr,
                &ErrorBody::from(&e).into_frame(Opcode::Hello, 0),
            )
            .await;
            let _ = wr.shutdown().await;
            return Err(ReadError::Frame(e).into());
        }
        Err(e) => return Err(e.into()),
    };
    let verified =
        Hello::verify(&frame, &config.secret, &nonce).and_then(|hello| match &config.tokens {
            Some(tokens) if !tokens.is_valid(&hello.node_id, &hello.token) => {
                Err(wire::AuthError::BadToken(hello.node_id.clone()))
            }
            _ => Ok(hello),
        });
    let hello = match verified {
        Ok(h) => h,
        Err(e) => {
            let refusal = ErrorBody::new(ErrorCode::Unauthenticated, e.to_string())
                .into_frame(Opcode::Hello, 0);
            let _ = crate::framed::write_frame(&mut wr, &refusal).await;
            let _ = wr.shutdown().await;
            return Err(e.into());
        }
    };
    crate::framed::write_frame(&mut wr, &wire::welcome_frame()).await?;
    reader.set_limits(Limits::with_max_body(config.max_chunk));
    Ok(FunctionConn::start(reader, wr, hello, peer, config))
}

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/// Whose fault a [`CallError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The function answered with an error about the chunk or its memory.
    Function,
    /// The connection failed (closed, reset, timed out).
    Connection,
    /// The peer broke the protocol.
    Protocol,
    /// The request itself was invalid.
    Caller,
}

/// Error of a request on a [`FunctionConn`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The function does not hold the chunk.
    #[error("chunk not found")]
    NotFound,
    /// The function cannot fit the chunk.
    #[error("function full: {needed} bytes needed, {free} free")]
    Full {
        /// Bytes the chunk would be charged.
        needed: u64,
        /// Bytes free on the function.
        free: u64,
    },
    /// The chunk failed its CRC32C check (in the function's memory, or in transit).
    #[error("chunk corrupt: {0}")]
    Corrupt(String),
    /// The function is stopping and takes no new requests.
    #[error("function is shutting down")]
    ShuttingDown,
    /// The function refused the request for another reason.
    #[error("function refused the request ({code:?}): {message}")]
    Rejected {
        /// The error code.
        code: ErrorCode,
        /// The function's message.
        message: String,
    },
    /// The connection is closed (or closing: the function said bye).
    #[error("connection closed: {0}")]
    Closed(String),
    /// No response within the request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The function sent something that is not the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The request cannot be sent as given.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl CallError {
    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self {
            CallError::NotFound
            | CallError::Full { .. }
            | CallError::Corrupt(_)
            | CallError::ShuttingDown
            | CallError::Rejected { .. } => Fault::Function,
            CallError::Closed(_) | CallError::Timeout(_) => Fault::Connection,
            CallError::Protocol(_) => Fault::Protocol,
            CallError::Invalid(_) => Fault::Caller,
        }
    }

    /// Might the same request succeed if retried (on this connection or on the function's
    /// next one)? `Full` is not retryable here: place the chunk on another function.
    /// `NotFound` and `Corrupt` are not either: reconstruct from the other chunks or S3.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Closed(_) | CallError::Timeout(_) | CallError::ShuttingDown => true,
            CallError::Rejected { code, .. } => matches!(code, ErrorCode::Internal),
            _ => false,
        }
    }

    fn from_error_body(e: ErrorBody) -> CallError {
        match e.code {
            ErrorCode::NotFound => CallError::NotFound,
            ErrorCode::Full => CallError::Full {
                needed: e.detail[0],
                free: e.detail[1],
            },
            ErrorCode::Corrupt => CallError::Corrupt(e.message),
            ErrorCode::ShuttingDown => CallError::ShuttingDown,
            code => CallError::Rejected {
                code,
                message: e.message,
            },
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Connection                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnMetrics {
    /// Requests awaiting a response now.
    pub in_flight: usize,
    /// Most requests ever in flight at once.
    pub max_in_flight: usize,
    /// Requests sent.
    pub requests: u64,
}

struct Shared {
    hello: Hello,
    peer: SocketAddr,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    next_id: AtomicU64,
    permits: Semaphore,
    /// Cancelled when the connection has ended (read side finished).
    closed: CancellationToken,
    /// Cancelled to make the writer close our write side.
    close_write: CancellationToken,
    /// Cancelled to reset the connection (RST, no FIN).
    abort: CancellationToken,
    going_away: AtomicBool,
    close_reason: Mutex<Option<String>>,
    last_ack: Mutex<Ack>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Frame>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn reason(&self) -> String {
        self.close_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "closed".to_owned())
    }
    fn set_reason(&self, r: impl Into<String>) {
        let mut g = self.close_reason.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(r.into());
        }
    }
    fn update_ack(&self, ack: Ack) {
        *self.last_ack.lock().unwrap_or_else(|p| p.into_inner()) = ack;
    }
    /// After the function's BYE notice, close our side once nothing is awaited any more.
    fn maybe_finish_going_away(&self) {
        if self.going_away.load(Ordering::Acquire) && self.pending().is_empty() {
            self.close_write.cancel();
        }
    }
}

/// A cheap-to-clone handle on one authenticated function connection. Dropping every clone
/// closes the connection.
#[derive(Clone)]
pub struct FunctionConn {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Frame>,
    timeout: Duration,
    max_chunk: usize,
}

impl std::fmt::Debug for FunctionConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionConn")
            .field("node_id", &self.shared.hello.node_id)
            .field("instance_id", &self.shared.hello.instance_id)
            .field("peer", &self.shared.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Removes a pending slot if the caller gives up (timeout or cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.id);
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.shared.maybe_finish_going_away();
    }
}

/// Result of a ranged GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRead {
    /// Length of the whole chunk.
    pub chunk_len: u64,
    /// Offset of `data` in the chunk.
    pub offset: u64,
    /// The bytes (CRC-checked).
    pub data: Bytes,
}

/// A LIST page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Entries in ascending id order.
    pub entries: Vec<ChunkInfo>,
    /// More follow the last entry.
    pub more: bool,
}

impl FunctionConn {
    fn start(
        reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
        writer: tokio::net::tcp::OwnedWriteHalf,
        hello: Hello,
        peer: SocketAddr,
        config: &ListenerConfig,
    ) -> FunctionConn {
        let max_in_flight = config.max_in_flight.max(1);
        let shared = Arc::new(Shared {
            last_ack: Mutex::new(Ack {
                state: hello.state,
                stats: hello.stats,
            }),
            hello,
            peer,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            permits: Semaphore::new(max_in_flight),
            closed: CancellationToken::new(),
            close_write: CancellationToken::new(),
            abort: CancellationToken::new(),
            going_away: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(max_in_flight);
        tokio::spawn(write_loop(writer, rx, shared.clone()));
        tokio::spawn(read_loop(reader, shared.clone()));
        FunctionConn {
            shared,
            tx,
            timeout: config.request_timeout,
            max_chunk: config.max_chunk,
        }
    }

    /// The function's HELLO: node id, instance id, command, view verdict, state and stats.
    pub fn hello(&self) -> &Hello {
        &self.shared.hello
    }

    /// Node id the function serves as.
    pub fn node_id(&self) -> &str {
        &self.shared.hello.node_id
    }

    /// The function process's instance id.
    pub fn instance_id(&self) -> InstanceId {
        self.shared.hello.instance_id
    }

    /// The function's address as seen by the listener.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The latest state and stats the function reported (updated by every Ack).
    pub fn last_ack(&self) -> Ack {
        *self
            .shared
            .last_ack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Has the connection ended?
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Has the function announced it is stopping (no new requests are sent)?
    pub fn is_going_away(&self) -> bool {
        self.shared.going_away.load(Ordering::Acquire)
    }

    /// Can a new request be sent? Not once the connection has ended, the function announced
    /// it is leaving, or the gateway closed (or reset) its side: such a connection may still
    /// be receiving the responses of requests already sent, but takes no new ones.
    pub fn accepts_requests(&self) -> bool {
        !self.is_closed() && !self.is_going_away() && !self.shared.close_write.is_cancelled()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Stop sending and close our side; in-flight requests fail with `Closed`.
    pub fn close(&self) {
        self.shared.set_reason("closed by the gateway");
        self.shared.close_write.cancel();
    }

    /// Reset the connection (TCP RST, no FIN), as a network failure would: the function sees
    /// a dead socket and re-dials while its invocation lasts. In-flight requests fail.
    pub fn abort(&self) {
        self.shared.set_reason("aborted by the gateway");
        self.shared.abort.cancel();
        self.shared.close_write.cancel();
    }

    /// Counters.
    pub fn metrics(&self) -> ConnMetrics {
        ConnMetrics {
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.shared.max_in_flight.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
        }
    }

    /// A handle on the same connection with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> FunctionConn {
        FunctionConn {
            timeout,
            ..self.clone()
        }
    }

    /// Send one request and wait for its response frame.
    async fn call(&self, req: Request) -> Result<Response, CallError> {
        let s = &*self.shared;
        if s.closed.is_cancelled() || s.close_write.is_cancelled() {
            return Err(CallError::Closed(s.reason()));
        }
        if s.going_away.load(Ordering::Acquire) {
            return Err(CallError::Closed("function said bye".into()));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let _permit = tokio::select! {
            p = s.permits.acquire() => p.map_err(|_| CallError::Closed(s.reason()))?,
            _ = tokio::time::sleep_until(deadline) => return Err(CallError::Timeout(self.timeout)),
            _ = s.closed.cancelled() => return Err(CallError::Closed(s.reason())),
        };
        let op = req.opcode();
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        s.pending().insert(id, otx);
        let now_in_flight = s.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        s.max_in_flight.fetch_max(now_in_flight, Ordering::Relaxed);
        s.requests.fetch_add(1, Ordering::Relaxed);
        let _guard = PendingGuard { shared: s, id };
        match tokio::time::timeout_at(deadline, self.tx.send(req.into_frame(id))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(CallError::Closed(s.reason())),
            Err(_) => return Err(CallError::Timeout(self.timeout)),
        }
        let frame = match tokio::time::timeout_at(deadline, orx).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) => return Err(CallError::Closed(s.reason())),
            Err(_) => return Err(CallError::Timeout(self.timeout)),
        };
        if frame.opcode != op {
            return Err(CallError::Protocol(format!(
                "{:?} answered with {:?}",
                op, frame.opcode
            )));
        }
        match Response::from_frame(frame) {
            Ok(Response::Error(e)) => Err(CallError::from_error_body(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(CallError::Protocol(e.to_string())),
        }
    }

    fn unexpected(r: Response) -> CallError {
        CallError::Protocol(format!("unexpected response {r:?}"))
    }

    /// Store a chunk (its CRC32C is computed here and checked by the function).
    #[tracing::instrument(level = "debug", skip(self, data), fields(node = %self.node_id(), chunk = %id, len = data.len()))]
    pub async fn put_chunk(&self, id: &ChunkId, data: Bytes) -> Result<Ack, CallError> {
        if data.len() > self.max_chunk {
            // The function would refuse the frame and drop the connection: refuse it here.
            return Err(CallError::Invalid(format!(
                "chunk of {} bytes over max_chunk {}",
                data.len(),
                self.max_chunk
            )));
        }
        let crc32c = crc32c::crc32c(&data);
        match self
            .call(Request::Put {
                id: id.clone(),
                crc32c,
                data,
            })
            .await?
        {
            Response::Put(ack) => Ok(ack),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Read a whole chunk.
    pub async fn get_chunk(&self, id: &ChunkId) -> Result<Bytes, CallError> {
        Ok(self.get_chunk_range(id, ByteRange::ALL).await?.data)
    }

    /// Read a byte range of a chunk (cut short at the end of the chunk).
    #[tracing::instrument(level = "debug", skip(self), fields(node = %self.node_id(), chunk = %id))]
    pub async fn get_chunk_range(
        &self,
        id: &ChunkId,
        range: ByteRange,
    ) -> Result<ChunkRead, CallError> {
        match self
            .call(Request::Get {
                id: id.clone(),
                range,
            })
            .await?
        {
            Response::Get {
                chunk_len,
                offset,
                crc32c,
                data,
            } => {
                let actual = crc32c::crc32c(&data);
                if actual != crc32c {
                    return Err(CallError::Corrupt(format!(
                        "crc32c {actual:08x} of received bytes, function sent {crc32c:08x}"
                    )));
                }
                if offset != range.offset {
                    return Err(CallError::Protocol(format!(
                        "asked offset {}, got {offset}",
                        range.offset
                    )));
                }
                Ok(ChunkRead {
                    chunk_len,
                    offset,
                    data,
                })
            }
            r => Err(Self::unexpected(r)),
        }
    }

    /// Delete a chunk; returns whether it was there.
    #[tracing::instrument(level = "debug", skip(self), fields(node = %self.node_id(), chunk = %id))]
    pub async fn delete_chunk(&self, id: &ChunkId) -> Result<bool, CallError> {
        match self.call(Request::Delete { id: id.clone() }).await? {
            Response::Delete { existed, .. } => Ok(existed),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Length and CRC32C of a chunk.
    #[tracing::instrument(level = "debug", skip(self), fields(node = %self.node_id(), chunk = %id))]
    pub async fn stat(&self, id: &ChunkId) -> Result<ChunkInfo, CallError> {
        match self.call(Request::Stat { id: id.clone() }).await? {
            Response::Stat { len, crc32c } => Ok(ChunkInfo {
                id: id.clone(),
                len,
                crc32c,
            }),
            r => Err(Self::unexpected(r)),
        }
    }

    /// One page of chunk ids after `after`, ascending (for recovery and reconciliation).
    #[tracing::instrument(level = "debug", skip(self), fields(node = %self.node_id()))]
    pub async fn list(&self, after: Option<&ChunkId>, limit: u32) -> Result<ListPage, CallError> {
        match self
            .call(Request::List {
                after: after.cloned(),
                limit,
            })
            .await?
        {
            Response::List { entries, more } => Ok(ListPage { entries, more }),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Every chunk the function holds, paging through LIST.
    pub async fn list_all(&self) -> Result<Vec<ChunkInfo>, CallError> {
        let mut out: Vec<ChunkInfo> = Vec::new();
        loop {
            let page = self
                .list(out.last().map(|e| &e.id), wire::MAX_LIST_LIMIT)
                .await?;
            let more = page.more && !page.entries.is_empty();
            out.extend(page.entries);
            if !more {
                return Ok(out);
            }
        }
    }

    /// The function's state and store statistics.
    pub async fn stats(&self) -> Result<Ack, CallError> {
        match self.call(Request::Stats).await? {
            Response::Stats(ack) => Ok(ack),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Round trip time of an empty PING.
    pub async fn ping(&self) -> Result<Duration, CallError> {
        let t = Instant::now();
        match self
            .call(Request::Ping {
                payload: Bytes::new(),
            })
            .await?
        {
            Response::Pong { .. } => Ok(t.elapsed()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// End the session: the function answers with its final state and returns from its
    /// invocation. If the function already announced it is leaving, returns the state of its
    /// BYE notice.
    #[tracing::instrument(level = "debug", skip(self), fields(node = %self.node_id()))]
    pub async fn bye(&self) -> Result<Ack, CallError> {
        if self.is_going_away() {
            // The function is already leaving (its BYE notice carried its final state).
            self.shared.close_write.cancel();
            return Ok(self.last_ack());
        }
        let r = self.call(Request::Bye).await;
        self.shared.close_write.cancel();
        match r? {
            Response::Bye(ack) => Ok(ack),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Fault injection (the function needs `MEMFN_FAULT_INJECTION=1`): corrupt a stored chunk.
    #[doc(hidden)]
    pub async fn fault_corrupt(&self, id: &ChunkId) -> Result<(), CallError> {
        match self.call(Request::FaultCorrupt { id: id.clone() }).await? {
            Response::FaultCorrupt => Ok(()),
            r => Err(Self::unexpected(r)),
        }
    }
}

async fn write_loop(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
) {
    let mut batch = FrameBatch::new();
    let result: io::Result<()> = async {
        loop {
            let frame = tokio::select! {
                biased;
                _ = shared.close_write.cancelled() => break,
                _ = shared.closed.cancelled() => break,
                f = rx.recv() => match f {
                    Some(f) => f,
                    None => break, // every handle dropped
                },
            };
            batch.push(&mut w, &frame).await?;
            while let Ok(more) = rx.try_recv() {
                batch.push(&mut w, &more).await?;
            }
            batch.flush(&mut w).await?;
        }
        if shared.abort.is_cancelled() {
            // No FIN: drop our half silently; the reader drops the other with SO_LINGER 0.
            let _ = w.as_ref().set_zero_linger();
            w.forget();
            return Ok(());
        }
        w.shutdown().await
    }
    .await;
    if let Err(e) = result {
        shared.set_reason(format!("write failed: {e}"));
        debug!(node = %shared.hello.node_id, error = %e, "writer failed");
    }
    // Whatever happened, nothing more is sent: wake callers that wait to send.
    shared.close_write.cancel();
}

async fn read_loop(mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>, shared: Arc<Shared>) {
    let reason = loop {
        let frame = tokio::select! {
            r = reader.read_frame() => r,
            _ = shared.abort.cancelled() => {
                let _ = reader.get_ref().as_ref().set_zero_linger();
                break "aborted by the gateway".to_owned();
            }
            // After we closed our side, give the function a moment to finish, then stop.
            _ = async {
                shared.close_write.cancelled().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            } => break "function did not close after we did".to_owned(),
        };
        match frame {
            Ok(Some(frame)) => {
                if let Ok(Some(ack)) = Response::decode_bye_notice(&frame) {
                    debug!(node = %shared.hello.node_id, state = %ack.state, "function says bye");
                    shared.update_ack(ack);
                    shared.set_reason("function said bye");
                    shared.going_away.store(true, Ordering::Release);
                    shared.maybe_finish_going_away();
                    continue;
                }
                if !frame.is_response() {
                    break format!("function sent a request ({:?})", frame.opcode);
                }
                if frame.request_id == 0 {
                    // A connection-level error from the function (e.g. our frame was too large);
                    // the function closes after it.
                    let msg = ErrorBody::decode(frame.meta.clone())
                        .map(|e| e.message)
                        .unwrap_or_default();
                    break format!("function ended the connection: {msg}");
                }
                if !frame.is_error()
                    && matches!(
                        frame.opcode,
                        Opcode::PutChunk | Opcode::DeleteChunk | Opcode::Stats | Opcode::Bye
                    )
                    && let Ok(r) = Response::from_frame(frame.clone())
                {
                    match r {
                        Response::Put(ack) | Response::Stats(ack) | Response::Bye(ack) => {
                            shared.update_ack(ack)
                        }
                        Response::Delete { ack, .. } => shared.update_ack(ack),
                        _ => {}
                    }
                }
                let slot = shared.pending().remove(&frame.request_id);
                match slot {
                    Some(tx) => {
                        let _ = tx.send(frame);
                    }
                    None => debug!(id = frame.request_id, "response for an abandoned request"),
                }
            }
            Ok(None) => break "function closed the connection".to_owned(),
            Err(e) => break format!("read failed: {e}"),
        }
    };
    debug!(node = %shared.hello.node_id, %reason, "connection ended");
    shared.set_reason(reason);
    shared.closed.cancel();
    shared.close_write.cancel();
    shared.pending().clear(); // dropping the senders fails every waiting call with Closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, NodeState, StoreStats, ViewCheck};

    fn hello(node: &str, token: &str) -> Hello {
        Hello {
            node_id: node.into(),
            instance_id: InstanceId([1; 16]),
            token: Bytes::from(token.to_owned()),
            command: Command::Serve,
            view: ViewCheck::Fresh,
            state: NodeState::EMPTY,
            stats: StoreStats::default(),
            invocation_id: "inv".into(),
            deadline_unix_ms: 0,
        }
    }

    const SECRET: &[u8] = b"unit-test-secret-0123456789";

    /// Dial like a function would; returns the answer to HELLO.
    async fn dial(
        addr: SocketAddr,
        secret: &[u8],
        h: Hello,
    ) -> (
        Frame,
        FrameReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let s = TcpStream::connect(addr).await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut r = FrameReader::new(rd, Limits::DEFAULT);
        let ch = r.read_frame().await.unwrap().unwrap();
        let nonce = wire::decode_challenge(&ch).unwrap();
        crate::framed::write_frame(&mut wr, &h.into_frame(secret, &nonce).unwrap())
            .await
            .unwrap();
        let answer = r.read_frame().await.unwrap().unwrap();
        (answer, r, wr)
    }

    #[tokio::test]
    async fn refuses_wrong_secret_and_unknown_token() {
        let tokens = InvocationTokens::new();
        let good = tokens.issue("node-1");
        let mut cfg = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), SECRET);
        cfg.tokens = Some(tokens.clone());
        let mut l = CallbackListener::bind_with(cfg).await.unwrap();
        let addr = l.local_addr();

        let (a, ..) = dial(addr, b"wrong-secret-0123456789", hello("node-1", &good)).await;
        assert!(a.is_error());
        assert_eq!(
            ErrorBody::decode(a.meta).unwrap().code,
            ErrorCode::Unauthenticated
        );

        let (a, ..) = dial(addr, SECRET, hello("node-1", "not-issued")).await;
        assert_eq!(
            ErrorBody::decode(a.meta).unwrap().code,
            ErrorCode::Unauthenticated
        );
        let (a, ..) = dial(addr, SECRET, hello("node-2", &good)).await;
        assert_eq!(
            ErrorBody::decode(a.meta).unwrap().code,
            ErrorCode::Unauthenticated,
            "token of another node"
        );

        let (a, ..) = dial(addr, SECRET, hello("node-1", &good)).await;
        assert_eq!(a.opcode, Opcode::Welcome);
        let conn = l.accept().await.unwrap();
        assert_eq!(conn.node_id(), "node-1");
        assert_eq!(l.stats().refused.load(Ordering::Relaxed), 3);
        tokens.revoke("node-1", &good);
        let (a, ..) = dial(addr, SECRET, hello("node-1", &good)).await;
        assert!(a.is_error(), "revoked token");
    }

    #[tokio::test]
    async fn serves_nothing_before_authentication() {
        let l = CallbackListener::bind("127.0.0.1:0".parse().unwrap(), SECRET)
            .await
            .unwrap();
        let s = TcpStream::connect(l.local_addr()).await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut r = FrameReader::new(rd, Limits::DEFAULT);
        let _challenge = r.read_frame().await.unwrap().unwrap();
        // A request instead of HELLO.
        let put = Request::Put {
            id: ChunkId::for_object(1, 0, 0),
            crc32c: 0,
            data: Bytes::new(),
        }
        .into_frame(1);
        crate::framed::write_frame(&mut wr, &put).await.unwrap();
        let a = r.read_frame().await.unwrap().unwrap();
        assert_eq!(
            ErrorBody::decode(a.meta).unwrap().code,
            ErrorCode::Unauthenticated
        );
        assert!(
            r.read_frame().await.unwrap().is_none(),
            "closed after refusing"
        );
    }

    #[tokio::test]
    async fn oversized_frame_before_auth_is_refused_from_its_header() {
        let l = CallbackListener::bind("127.0.0.1:0".parse().unwrap(), SECRET)
            .await
            .unwrap();
        let s = TcpStream::connect(l.local_addr()).await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut r = FrameReader::new(rd, Limits::DEFAULT);
        let _challenge = r.read_frame().await.unwrap().unwrap();
        let mut head = bytes::BytesMut::new();
        wire::Header {
            opcode: Opcode::Hello,
            flags: 0,
            meta_len: 100,
            request_id: 0,
            body_len: 1 << 30,
        }
        .encode(&mut head);
        wr.write_all(&head).await.unwrap();
        let a = r.read_frame().await.unwrap().unwrap();
        let e = ErrorBody::decode(a.meta).unwrap();
        assert_eq!(e.code, ErrorCode::FrameTooLarge);
        assert_eq!(e.detail, [1 << 30, 0]);
    }

    #[tokio::test]
    async fn handshake_times_out() {
        let mut cfg = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), SECRET);
        cfg.auth_timeout = Duration::from_millis(100);
        let l = CallbackListener::bind_with(cfg).await.unwrap();
        let s = TcpStream::connect(l.local_addr()).await.unwrap();
        let mut r = FrameReader::new(s, Limits::DEFAULT);
        let _challenge = r.read_frame().await.unwrap().unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
            .await
            .unwrap();
        assert!(matches!(end, Ok(None) | Err(_)));
        assert_eq!(l.stats().refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn error_classification() {
        assert!(CallError::Timeout(Duration::from_secs(1)).is_retryable());
        assert_eq!(
            CallError::Timeout(Duration::from_secs(1)).fault(),
            Fault::Connection
        );
        assert!(!CallError::Full { needed: 1, free: 0 }.is_retryable());
        assert_eq!(CallError::NotFound.fault(), Fault::Function);
        assert_eq!(CallError::Protocol("x".into()).fault(), Fault::Protocol);
        assert!(matches!(
            CallError::from_error_body(ErrorBody {
                code: ErrorCode::Full,
                detail: [5, 2],
                message: String::new()
            }),
            CallError::Full { needed: 5, free: 2 }
        ));
    }
}
