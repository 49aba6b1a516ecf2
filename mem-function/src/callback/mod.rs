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
//!
//! [`listener`] owns the accept loop, the handshake and the invocation tokens; [`conn`] owns one
//! authenticated connection and the requests in flight on it.

mod conn;
mod listener;
#[cfg(test)]
mod tests;

pub use conn::{CallError, ChunkRead, ConnMetrics, Fault, FunctionConn, ListPage};
pub use listener::{CallbackListener, InvocationTokens, ListenerConfig, ListenerStats};

use std::time::Duration;

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
