//! The JSON the gateway sends when it invokes a function, and the JSON the function returns.
//! Both stay far below Lambda's payload limits (6 MB synchronous, 1 MB asynchronous): chunk
//! bytes never travel here, only over the dial-back connection.
//!
//! Payload (`Invocation`), fields with defaults may be omitted:
//! ```json
//! { "v": 1,
//!   "command": "serve",              // serve | warmup | reset | sleep (test only)
//!   "callback": "10.0.0.5:7070",     // host:port of the gateway's CallbackListener
//!   "node_id": "node-3",
//!   "token": "6f1c...",              // issued by the gateway for this invocation, <= 255 bytes
//!   "view": { "term": 12, "hash": "00112233445566778899aabbccddeeff" }, // default: empty
//!   "idle_tail_ms": 2000,            // stop after this long without a request
//!   "deadline_margin_ms": 1000,      // stop this long before the Lambda deadline
//!   "dial_timeout_ms": 2000,         // per dial / handshake step
//!   "sleep_ms": 0 }                  // only for "sleep"
//! ```
//!
//! Response (`InvocationResponse`):
//! ```json
//! { "v": 1, "node_id": "node-3", "function_name": "node-3",
//!   "instance_id": "9a0b...", "instance_started_unix_ms": 1760000000000,
//!   "invocations": 7,                // invocations this process has served (1 = cold start)
//!   "invocation_id": "uuid", "command": "serve",
//!   "outcome": "idle",               // idle | deadline | bye | closed | warmed | reset | slept |
//!                                    // unauthenticated | unreachable | protocol-error | bad-request
//!   "view": "match",                 // match | fresh | lost | diverged (see wire::ViewCheck)
//!   "previous_owner": null,          // node id this memory served before, if it changed
//!   "state_before": {..}, "state": {..},
//!   "stats": { "used_bytes": 0, "chunks": 0, "capacity_bytes": 0 },
//!   "counters": { "puts": 0, "gets": 0, "deletes": 0, "bytes_in": 0, "bytes_out": 0, "errors": 0 },
//!   "requests": 42, "connections": 1, "served_ms": 2051, "error": null }
//! ```

use crate::store::Counters;
use crate::wire::{Command, InstanceId, NodeState, StoreStats, ViewCheck};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Payload format version.
pub const PAYLOAD_VERSION: u32 = 1;
/// Default idle tail: how long a serving function waits for the next request before it says
/// bye and returns (Lambda bills per ms, so stay only while there is work).
pub const DEFAULT_IDLE_TAIL: Duration = Duration::from_secs(2);
/// Default margin kept before the Lambda deadline (bye, drain, post the response).
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_secs(1);
/// Default timeout of one dial or handshake step.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

fn one() -> u32 {
    PAYLOAD_VERSION
}

/// The invocation payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// Payload version (1).
    #[serde(default = "one")]
    pub v: u32,
    /// What to do.
    pub command: Command,
    /// `host:port` to dial back.
    pub callback: String,
    /// The cache node this function serves as.
    pub node_id: String,
    /// Token the gateway issued for this invocation; bound into the HELLO MAC.
    pub token: String,
    /// The gateway's view of the node's state.
    #[serde(default)]
    pub view: NodeState,
    /// Idle tail in ms (default [`DEFAULT_IDLE_TAIL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_tail_ms: Option<u64>,
    /// Deadline margin in ms (default [`DEFAULT_DEADLINE_MARGIN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_margin_ms: Option<u64>,
    /// Dial/handshake step timeout in ms (default [`DEFAULT_DIAL_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout_ms: Option<u64>,
    /// For `sleep` (fault injection only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_ms: Option<u64>,
}

impl Invocation {
    /// A payload with default timings.
    pub fn new(
        command: Command,
        callback: impl Into<String>,
        node_id: impl Into<String>,
        token: impl Into<String>,
        view: NodeState,
    ) -> Invocation {
        Invocation {
            v: PAYLOAD_VERSION,
            command,
            callback: callback.into(),
            node_id: node_id.into(),
            token: token.into(),
            view,
            idle_tail_ms: None,
            deadline_margin_ms: None,
            dial_timeout_ms: None,
            sleep_ms: None,
        }
    }

    /// Set the idle tail.
    pub fn with_idle_tail(mut self, d: Duration) -> Self {
        self.idle_tail_ms = Some(d.as_millis() as u64);
        self
    }

    /// Effective idle tail.
    pub fn idle_tail(&self) -> Duration {
        self.idle_tail_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_IDLE_TAIL)
    }

    /// Effective deadline margin.
    pub fn deadline_margin(&self) -> Duration {
        self.deadline_margin_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_DEADLINE_MARGIN)
    }

    /// Effective dial timeout.
    pub fn dial_timeout(&self) -> Duration {
        self.dial_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_DIAL_TIMEOUT)
    }

    /// Serialize to the JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("payload serializes")
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Served, then idle for the idle tail.
    Idle,
    /// Served until the deadline margin.
    Deadline,
    /// The gateway sent BYE.
    Bye,
    /// The gateway closed the connection without BYE.
    Closed,
    /// Warm-up done.
    Warmed,
    /// Slept (fault injection).
    Slept,
    /// The gateway refused the HELLO.
    Unauthenticated,
    /// The gateway could not be reached (dial or handshake failed until the idle tail ran out).
    Unreachable,
    /// The gateway sent bytes that are not the protocol.
    ProtocolError,
    /// The payload was invalid.
    BadRequest,
}

/// What the function returns from an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationResponse {
    /// Response format version (1).
    pub v: u32,
    /// Node id from the payload.
    pub node_id: String,
    /// The Lambda function name (AWS_LAMBDA_FUNCTION_NAME).
    pub function_name: String,
    /// Random id of this function process.
    pub instance_id: InstanceId,
    /// When this process started (unix ms).
    pub instance_started_unix_ms: u64,
    /// Invocations this process has handled, this one included (1 = cold start).
    pub invocations: u64,
    /// The Lambda request id.
    pub invocation_id: String,
    /// The command that was run.
    pub command: Command,
    /// How it ended.
    pub outcome: Outcome,
    /// The function's verdict on the gateway's view.
    pub view: ViewCheck,
    /// The node id this memory served before, if it was another one.
    pub previous_owner: Option<String>,
    /// State at the start of the invocation.
    pub state_before: NodeState,
    /// State at the end.
    pub state: NodeState,
    /// Store statistics at the end.
    pub stats: StoreStats,
    /// Operation counters of the process.
    pub counters: Counters,
    /// Requests served in this invocation.
    pub requests: u64,
    /// Connections made in this invocation (more than 1 after a re-dial).
    pub connections: u32,
    /// Time spent in the handler.
    pub served_ms: u64,
    /// Details when the outcome is a failure.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_payload_parses_with_defaults() {
        let p: Invocation = serde_json::from_str(
            r#"{"command":"warmup","callback":"127.0.0.1:1","node_id":"node-0","token":"t"}"#,
        )
        .unwrap();
        assert_eq!(p.v, 1);
        assert_eq!(p.command, Command::Warmup);
        assert!(p.view.is_empty());
        assert_eq!(p.idle_tail(), DEFAULT_IDLE_TAIL);
        let back: Invocation = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn view_is_hex() {
        let p: Invocation = serde_json::from_str(
            r#"{"command":"serve","callback":"h:1","node_id":"n","token":"t",
                "view":{"term":3,"hash":"000102030405060708090a0b0c0d0e0f"},"idle_tail_ms":250}"#,
        )
        .unwrap();
        assert_eq!(p.view.term, 3);
        assert_eq!(p.view.hash[15], 15);
        assert_eq!(p.idle_tail(), Duration::from_millis(250));
    }
}
