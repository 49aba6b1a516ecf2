//! The listener functions dial: accept loop, HELLO handshake, invocation tokens.

use super::conn::FunctionConn;
use super::{
    ACCEPT_QUEUE, DEFAULT_AUTH_TIMEOUT, DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REQUEST_TIMEOUT,
};
use crate::framed::{FrameReader, ReadError};
use crate::wire::{self, ErrorBody, ErrorCode, Hello, Limits, Opcode};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
