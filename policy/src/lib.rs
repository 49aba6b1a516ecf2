//! Memory-management policies for the serverless-memory cache tier, and their simulator.
//!
//! The policy core is pure and synchronous: events in, decisions out, no async, no I/O, an
//! injected clock (every call takes `now` in milliseconds) and a seeded RNG. Three policies sit
//! behind one trait, [`Policy`], one file each, each with its own `Config: Default` validated
//! in `new`, chosen at run time through [`PolicyConfig`]:
//!
//! - [`window::SlidingWindow`] (`sliding-window`): InfiniStore's time buckets, active and
//!   degraded windows, promotion on GET, elastic buckets drawn from a pool of deployed functions,
//!   bucket inheritance (functions that still take writes move into the next bucket).
//! - [`infinicache::InfiniCache`] (`infinicache`): a fixed pool warmed every minute, LRU of
//!   whole objects.
//! - [`provisioned::Provisioned`] (`provisioned`): an ElastiCache-like cluster billed per
//!   node-hour, LRU.
//!
//! # How the gateway drives this
//!
//! Depend on it without the simulator's I/O: `policy = { workspace = true, default-features =
//! false }`. Build one policy from config and keep it behind a mutex (calls are short):
//!
//! ```
//! use policy::{Policy, PolicyConfig, Placement, Lookup, LossAction};
//! let mut p = PolicyConfig::default().build().unwrap(); // sliding window, InfiniStore defaults
//! let now = 1_000;
//! // PUT: cut the object into pieces, ask where each chunk goes.
//! let size = 64 << 20;
//! let pieces = policy::pieces_for(size, 10, policy::DEFAULT_MAX_CHUNK_BYTES);
//! let put = p.put(now, "bucket/key", size, pieces);
//! if let Placement::Functions(layout) = &put.placement {
//!     // write chunk i to layout.functions[i] (Lambda `{prefix}{id}`), all distinct per piece
//!     assert_eq!(layout.functions.len(), 12);
//! }
//! // GET: read where told; afterwards carry out `relocation` (promotion / repair).
//! let get = p.get(now + 5, "bucket/key");
//! assert!(matches!(get.lookup, Lookup::Functions { .. }));
//! // Timer: call tick at next_wakeup() (or every second) and send the warm-ups it returns.
//! let fx = p.tick(p.next_wakeup().unwrap());
//! # let _ = fx;
//! // A function reported a lost instance (empty or mismatching state on invocation):
//! let loss = p.function_lost(now + 10, policy::FunctionId(0));
//! assert!(matches!(loss.action, LossAction::Recover { .. }));
//! ```
//!
//! - **PUT** `put(now, key, size, pieces)` → [`PutDecision`]: [`Placement::Functions`] gives
//!   the function of every chunk (`functions[piece * (d+p) + i]`), [`Placement::Bypass`] means
//!   S3 only. `stale` lists functions holding the previous version of the key.
//! - **GET** `get(now, key)` → [`GetDecision`]: [`Lookup::Functions`] (ask all, decode with the
//!   first `d`), or [`Lookup::Miss`]: read S3 and re-fill with `put`. Then write every
//!   [`ChunkMove`] in `relocation` from the decoded object and delete it at `from`.
//! - **DELETE** `delete(now, key)` → the functions to delete chunks from.
//! - **Timer** `tick(now)` → [`Effects`]; `next_wakeup()` says when the next one is due.
//! - **Lost function** `function_lost(now, id)` → [`LossAction::Recover`] (restore the listed
//!   chunks from S3 now), [`LossAction::Delegate`] (degraded: don't), [`LossAction::RepairOnRead`]
//!   (fixed pool) or [`LossAction::Nothing`] (expired / pool).
//! - **Occupancy** `occupancy(now, id, bytes_used)` → [`Effects`] (may stop writes, grow the bucket).
//! - **Metrics** `stats()` (cheap) and `snapshot()` (functions per bucket, occupancy per
//!   function, bucket counts).
//!
//! Every decision carries [`Effects`]; apply its fields in order: `expired` buckets stop being
//! invoked, `returned` functions go back to the pool (forget their state), `evicted` objects are
//! dropped from memory (they remain in S3), `degraded` buckets become read-only, `inherited`
//! functions move with their chunks into the new current bucket (keep them as they are: they
//! hold data and now take its writes), `opened` and `scaled_out` functions are drawn from the
//! pool into a bucket (treat as empty), `stopped_writes`, and `warmups` to send now. The policy assumes every acknowledged object is durable in S3 or in the gateway's
//! journal, so eviction never loses an acknowledged write.
//!
//! # The simulator and the `sim-io` feature
//!
//! [`sim`] replays a [`trace::Trace`] against every policy and prices the result with
//! [`cost`]; [`trace::synth`] generates calibrated synthetic traces. These modules do no I/O
//! either (progress is a callback). Reading the trace file (CSV or `.tar.gz`), PNG plots and the
//! `policy-sim` CLI live in [`io`], behind the cargo feature `sim-io` (on by default, off for
//! the gateway), so the pure core never links csv, flate2, tar, plotters or indicatif.

#![warn(missing_docs)]

pub mod cost;
pub mod error;
pub mod infinicache;
pub mod provisioned;
mod schedule;
pub mod sim;
mod store;
pub mod trace;
mod types;
pub mod window;

#[cfg(feature = "sim-io")]
pub mod io;

pub use error::ConfigError;
pub use infinicache::{InfiniCache, InfiniCacheConfig};
pub use provisioned::{NodeType, Provisioned, ProvisionedConfig};
pub use types::*;
pub use window::{SlidingWindow, WindowConfig};

use serde::{Deserialize, Serialize};

/// Largest chunk the simulator (and, by default, the gateway) cuts: objects larger than
/// `d x 10 MiB` are split into pieces (InfiniStore cuts very large objects into ~10 MB chunks).
pub const DEFAULT_MAX_CHUNK_BYTES: u64 = 10 * MIB;

/// Pieces for an object of `size` bytes so that no chunk exceeds `max_chunk_bytes` (>= 1).
pub fn pieces_for(size: u64, data_chunks: u32, max_chunk_bytes: u64) -> u32 {
    let per_piece = u64::from(data_chunks.max(1)) * max_chunk_bytes.max(1);
    size.div_ceil(per_piece)
        .max(1)
        .try_into()
        .unwrap_or(u32::MAX)
}

/// Which policy, by its stable name.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "sim-io", derive(clap::ValueEnum))]
pub enum PolicyKind {
    /// InfiniStore's sliding window (the default).
    #[default]
    SlidingWindow,
    /// InfiniCache-style fixed pool (`fixed-pool` reads as this too).
    #[serde(alias = "fixed-pool")]
    Infinicache,
    /// ElastiCache-like provisioned cluster.
    Provisioned,
}

impl PolicyKind {
    /// All kinds, in report order.
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::SlidingWindow,
        PolicyKind::Infinicache,
        PolicyKind::Provisioned,
    ];

    /// Whether the policy keeps objects in function memory (the provisioned cluster does not).
    pub fn uses_functions(self) -> bool {
        self != PolicyKind::Provisioned
    }

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::SlidingWindow => window::NAME,
            PolicyKind::Infinicache => infinicache::NAME,
            PolicyKind::Provisioned => provisioned::NAME,
        }
    }
}

/// A policy and its configuration, chosen at run time (e.g. from the gateway's TOML:
/// `kind = "sliding-window"` plus the fields of [`WindowConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PolicyConfig {
    /// [`SlidingWindow`].
    SlidingWindow(WindowConfig),
    /// [`InfiniCache`].
    Infinicache(InfiniCacheConfig),
    /// [`Provisioned`].
    Provisioned(ProvisionedConfig),
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig::SlidingWindow(WindowConfig::default())
    }
}

impl PolicyConfig {
    /// The default configuration of `kind`.
    pub fn default_for(kind: PolicyKind) -> Self {
        match kind {
            PolicyKind::SlidingWindow => PolicyConfig::SlidingWindow(WindowConfig::default()),
            PolicyKind::Infinicache => PolicyConfig::Infinicache(InfiniCacheConfig::default()),
            PolicyKind::Provisioned => PolicyConfig::Provisioned(ProvisionedConfig::default()),
        }
    }

    /// Which policy this configures.
    pub fn kind(&self) -> PolicyKind {
        match self {
            PolicyConfig::SlidingWindow(_) => PolicyKind::SlidingWindow,
            PolicyConfig::Infinicache(_) => PolicyKind::Infinicache,
            PolicyConfig::Provisioned(_) => PolicyKind::Provisioned,
        }
    }

    /// Validates the configuration and builds the policy.
    pub fn build(&self) -> Result<Box<dyn Policy>, ConfigError> {
        Ok(match self {
            PolicyConfig::SlidingWindow(c) => Box::new(SlidingWindow::new(c.clone())?),
            PolicyConfig::Infinicache(c) => Box::new(InfiniCache::new(c.clone())?),
            PolicyConfig::Provisioned(c) => Box::new(Provisioned::new(c.clone())?),
        })
    }

    /// Memory of one function in MB (what Lambda bills), if the policy uses functions.
    pub fn function_memory_mb(&self) -> Option<u32> {
        match self {
            PolicyConfig::SlidingWindow(c) => Some(c.function_memory_mb),
            PolicyConfig::Infinicache(c) => Some(c.function_memory_mb),
            PolicyConfig::Provisioned(_) => None,
        }
    }

    /// `d`, to cut objects into pieces (1 for the provisioned cache, which stores whole objects).
    pub fn data_chunks(&self) -> u32 {
        match self {
            PolicyConfig::SlidingWindow(c) => c.data_chunks,
            PolicyConfig::Infinicache(c) => c.data_chunks,
            PolicyConfig::Provisioned(_) => 1,
        }
    }

    /// `(nodes, price per node-hour)` of a provisioned cluster (`None` for function policies).
    pub fn node_pricing(&self) -> Option<(u32, f64)> {
        match self {
            PolicyConfig::Provisioned(c) => Some((c.nodes, c.node.hourly_usd)),
            _ => None,
        }
    }
}
