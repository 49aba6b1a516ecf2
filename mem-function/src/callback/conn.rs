//! One authenticated function connection: the multiplexed request handle, its writer and
//! reader tasks, and the errors of a request.

use super::listener::ListenerConfig;
use crate::framed::{FrameBatch, FrameReader};
use crate::wire::{
    self, Ack, ByteRange, ChunkId, ChunkInfo, ErrorBody, ErrorCode, Frame, Hello, InstanceId,
    Opcode, Request, Response,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

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

    pub(super) fn from_error_body(e: ErrorBody) -> CallError {
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
    pub(super) fn start(
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
            batch.write_queued(&mut w, &frame, &mut rx).await?;
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
