//! # mem-function: the serverless-memory cache node
//!
//! The cache tier keeps erasure-coded chunks in the heap of FaaS function instances
//! (InfiniCache, FAST'20; InfiniStore, VLDB'23). This crate holds every piece of that tier
//! except the gateway's placement policy:
//!
//! - [`wire`]: the gateway <-> function protocol; its module doc is the byte-level spec.
//! - [`function`] + [`store`]: the function itself (binary `mem-function`), run by
//!   `lambda_runtime` on AWS Lambda or under an emulator; it dials back to the gateway,
//!   authenticates, reports its state and serves chunks from a process-global store.
//! - [`invocation`]: the JSON invocation payload and response.
//! - [`callback`]: the gateway side: [`callback::CallbackListener`] and the multiplexed
//!   [`callback::FunctionConn`] handle.
//! - [`emulator`]: a local Lambda (Invoke API + Runtime API) that runs the same binary, one
//!   pinned instance per function name, with freeze/thaw, timeouts and reclaiming (binary
//!   `lambda-emulator`).
//!
//! ```text
//!  gateway ──Invoke API (JSON payload)──▶ Lambda / emulator ──Runtime API──▶ mem-function
//!     ▲                                                                          │
//!     └────────── CallbackListener ◀── TCP dial-back, HELLO (HMAC), chunks ──────┘
//! ```

pub mod callback;
pub mod emulator;
pub mod framed;
pub mod function;
pub mod invocation;
pub mod store;
pub mod wire;

/// Install a `tracing` subscriber for the binaries: `RUST_LOG` (default `default_filter`),
/// JSON lines when `MEMFN_LOG_FORMAT=json`, written to stderr.
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("MEMFN_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
