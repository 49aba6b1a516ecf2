//! Events in, decisions out: the types shared by every policy.
//!
//! Every call takes `now`, the caller's clock in milliseconds (any epoch, but monotonic; a `now`
//! earlier than one already seen is treated as the latest one seen). Keys are the gateway's
//! object keys; function ids are indices `0..N` into the deployed pool (Lambda name
//! `{prefix}{i}`, see [`FunctionId::lambda_name`]).

use serde::Serialize;

/// Milliseconds on the injected clock.
pub type Millis = u64;

/// Reads a duration into [`Millis`]: a human-readable string (`"10m"`, `"90s"`, `"1h 30m"`) or
/// a number of milliseconds.
pub(crate) fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Duration {
        Text(String),
        Millis(Millis),
    }
    match <Duration as serde::Deserialize>::deserialize(d)? {
        Duration::Millis(ms) => Ok(ms),
        Duration::Text(s) => humantime::parse_duration(&s)
            .map(|d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}"))),
    }
}

/// What a deployment decides, not a policy: the functions, their memory, the code, and the
/// smallest object the tier takes. See [`crate::WindowConfig::deployed`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Deployed functions, ids `0..functions`.
    pub functions: u32,
    /// Memory of each function, MB.
    pub function_memory_mb: u32,
    /// `d`.
    pub data_chunks: u32,
    /// `p`.
    pub parity_chunks: u32,
    /// Smaller objects bypass function memory.
    pub min_object_bytes: u64,
}

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Index of a function in the deployed pool (`0..pool_size`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FunctionId(pub u32);

impl FunctionId {
    /// The index as a `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The Lambda function name for this id: `{prefix}{i}`.
    pub fn lambda_name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.0)
    }
}

impl std::fmt::Display for FunctionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "f{}", self.0)
    }
}

/// Sequence number of a sliding-window bucket (0 for the first bucket opened).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BucketId(pub u64);

impl std::fmt::Display for BucketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// Life stage of a bucket.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BucketState {
    /// In the active window: read-write (only the newest bucket takes new writes), warmed often,
    /// recovered when a function is lost.
    Active,
    /// Read-only, warmed rarely, a lost function is delegated rather than recovered.
    Degraded,
}

/// How an object's chunks are laid out on functions.
///
/// `functions[piece * chunks_per_piece + i]` holds chunk `i` of `piece`; the first
/// `data_chunks` chunks of a piece are data, the rest parity. The chunks of one piece are always
/// on distinct functions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChunkLayout {
    /// Bytes per chunk (`ceil(size / pieces / data_chunks)`; the last piece may be padded).
    pub chunk_size: u64,
    /// `d + p`.
    pub chunks_per_piece: u32,
    /// `d`: chunks needed to decode a piece.
    pub data_chunks: u32,
    /// Where every chunk lives.
    pub functions: Vec<FunctionId>,
}

impl ChunkLayout {
    /// Number of pieces.
    pub fn pieces(&self) -> u32 {
        (self.functions.len() / self.chunks_per_piece.max(1) as usize) as u32
    }
}

/// Why an object is not kept in memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BypassReason {
    /// Smaller than `min_object_bytes`: per-request overhead beats the benefit (small objects
    /// should bypass a function-memory tier).
    TooSmall,
    /// A chunk (or the whole object) would not fit even in an empty function or cache.
    TooLarge,
    /// No function could be drawn from the deployed pool and nothing could be expired early.
    PoolExhausted,
}

/// Where a new object goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Write every chunk to its function.
    Functions(ChunkLayout),
    /// Store the whole object in the provisioned node cache.
    Node,
    /// Keep it only in S3.
    Bypass(BypassReason),
}

/// What the gateway does with an object PUT (or the re-fill after a GET miss).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PutDecision {
    /// Where the object goes.
    pub placement: Placement,
    /// Functions that held chunks of the previous version of this key (delete them).
    pub stale: Vec<FunctionId>,
    /// Side effects (scale-out, evictions, ...).
    pub effects: Effects,
}

/// Where a GET finds the object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lookup {
    /// In function memory. `chunks[i]` is `None` where the chunk was lost with its function;
    /// every piece still has at least `data_chunks` chunks. Ask all, decode with the first `d`.
    Functions {
        /// Bytes per chunk.
        chunk_size: u64,
        /// `d + p`.
        chunks_per_piece: u32,
        /// `d`.
        data_chunks: u32,
        /// Where every chunk lives, piece-major.
        chunks: Vec<Option<FunctionId>>,
    },
    /// In the provisioned node cache.
    Node,
    /// Not in memory: read it from S3, then re-fill with [`crate::Policy::put`].
    Miss,
}

impl Lookup {
    /// Whether the memory tier serves this GET.
    pub fn is_hit(&self) -> bool {
        !matches!(self, Lookup::Miss)
    }
}

/// One chunk to (re)write after a GET: promotion into the current bucket, or repair of a lost
/// chunk. The gateway has the decoded object in hand, so it writes chunk `index` (re-encoded if
/// needed) to `to` and then deletes it from `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChunkMove {
    /// Chunk index, piece-major (`piece * (d + p) + i`).
    pub index: u32,
    /// The function that held it (`None` if it was lost).
    pub from: Option<FunctionId>,
    /// The function that holds it from now on.
    pub to: FunctionId,
    /// Bytes to write.
    pub size: u64,
}

/// What the gateway does with a GET.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GetDecision {
    /// Where to read.
    pub lookup: Lookup,
    /// Chunks to rewrite after the read (promotion or repair); empty for most GETs.
    pub relocation: Vec<ChunkMove>,
    /// Side effects.
    pub effects: Effects,
}

/// What the gateway does with a DELETE.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeleteDecision {
    /// Functions holding chunks of the object (delete them there); empty if not in functions.
    pub chunks: Vec<FunctionId>,
    /// Whether the object was in memory at all.
    pub was_cached: bool,
    /// Side effects.
    pub effects: Effects,
}

/// A chunk a recovering function must restore from S3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChunkRef {
    /// Object key.
    pub key: String,
    /// Chunk index, piece-major.
    pub index: u32,
    /// Bytes of the chunk.
    pub chunk_size: u64,
    /// Parity chunk (needs the whole piece, `d * chunk_size` bytes, read from S3 to re-encode).
    pub parity: bool,
}

/// What to do about a function the provider reclaimed (its memory is gone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAction {
    /// Active window: re-invoke the function and restore these chunks from S3 now.
    Recover {
        /// The chunks it held.
        chunks: Vec<ChunkRef>,
    },
    /// Degraded bucket: do not recover. The chunks are marked lost; a GET that still has `d`
    /// chunks of every piece decodes without them, otherwise it is a miss whose data comes from
    /// S3 and lands in the current bucket (the delegation).
    Delegate {
        /// Chunks marked lost.
        chunks_lost: u32,
    },
    /// InfiniCache-style pool: the instance restarts empty; lost chunks are rewritten from the
    /// decoded object on the next GET (see [`GetDecision::relocation`]).
    RepairOnRead {
        /// Chunks marked lost.
        chunks_lost: u32,
    },
    /// The function holds nothing this policy tracks (in the pool, or its bucket expired).
    Nothing,
}

/// What the gateway does about a lost function.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LossDecision {
    /// Recover, delegate, repair lazily or nothing.
    pub action: LossAction,
    /// Side effects (objects evicted because too many of their chunks were lost, ...).
    pub effects: Effects,
}

/// A warm-up invocation to send.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warmup {
    /// The function to invoke.
    pub function: FunctionId,
    /// When it was due (`<= now`; it includes the random jitter).
    pub due: Millis,
}

/// Functions added to a bucket (a new bucket, or a scale-out step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BucketGrowth {
    /// The bucket.
    pub bucket: BucketId,
    /// Functions drawn from the pool, to treat as empty.
    pub functions: Vec<FunctionId>,
}

/// Functions a new bucket took over from the previous current bucket at rotation (InfiniStore's
/// bucket inheritance): the ones that still took writes. They keep their chunks, which keep
/// belonging to their objects' buckets; from now on they take the new bucket's writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inheritance {
    /// The bucket they left (it keeps its full functions).
    pub from: BucketId,
    /// The new current bucket.
    pub to: BucketId,
    /// The functions, in their new bucket's placement order. Not empty: nothing to do in memory.
    pub functions: Vec<FunctionId>,
}

/// Side effects any event may produce. The gateway applies all of them in field order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Effects {
    /// Buckets that expired: their functions stop being invoked.
    pub expired: Vec<BucketId>,
    /// Functions given back to the pool: forget their state (the next user treats them as empty).
    pub returned: Vec<FunctionId>,
    /// Objects dropped from memory (they remain in S3).
    pub evicted: Vec<String>,
    /// Buckets that left the active window (read-only now, warmed less often).
    pub degraded: Vec<BucketId>,
    /// Functions that moved, with their chunks, into a new bucket at rotation (keep them as
    /// they are: they hold data and are warmed as members of their new bucket).
    pub inherited: Vec<Inheritance>,
    /// A bucket's first functions drawn from the pool (at its rotation, or at its first write
    /// if the pool was short then), empty.
    pub opened: Vec<BucketGrowth>,
    /// Functions drawn from the pool later, because the bucket's functions filled up, empty.
    pub scaled_out: Vec<BucketGrowth>,
    /// Functions that stop taking writes (above the occupancy threshold).
    pub stopped_writes: Vec<FunctionId>,
    /// Warm-ups due now.
    pub warmups: Vec<Warmup>,
}

impl Effects {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Effects::default()
    }

    /// Appends `other` to `self`.
    pub fn extend(&mut self, other: Effects) {
        self.expired.extend(other.expired);
        self.returned.extend(other.returned);
        self.evicted.extend(other.evicted);
        self.degraded.extend(other.degraded);
        self.inherited.extend(other.inherited);
        self.opened.extend(other.opened);
        self.scaled_out.extend(other.scaled_out);
        self.stopped_writes.extend(other.stopped_writes);
        self.warmups.extend(other.warmups);
    }
}

/// Cheap counters, for metrics and the simulator.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Functions drawn from the pool (in live buckets, or the whole fixed pool).
    pub functions_held: u32,
    /// Of those, functions in active buckets.
    pub active_functions: u32,
    /// Of those, functions in degraded buckets.
    pub degraded_functions: u32,
    /// Memory provisioned for them (functions x memory size, or nodes x node memory), bytes.
    pub memory_bytes: u64,
    /// Bytes of chunks (or objects) stored.
    pub stored_bytes: u64,
    /// Objects in memory.
    pub objects: u64,
    /// Buckets in the active window.
    pub active_buckets: u32,
    /// Degraded buckets.
    pub degraded_buckets: u32,
    /// Buckets expired so far.
    pub expired_buckets: u64,
}

/// One bucket in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BucketSnapshot {
    /// Its id.
    pub id: BucketId,
    /// Active or degraded.
    pub state: BucketState,
    /// When it was opened.
    pub opened_at: Millis,
    /// Its functions, in placement order.
    pub functions: Vec<FunctionId>,
    /// Objects written (or promoted) while it was current and not evicted since; their chunks
    /// may be on functions a newer bucket inherited.
    pub objects: u64,
}

/// One function in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionSnapshot {
    /// Its id.
    pub id: FunctionId,
    /// Its bucket (sliding window only).
    pub bucket: Option<BucketId>,
    /// Bytes of chunks the policy placed on it.
    pub used_bytes: u64,
    /// Bytes it may hold (memory minus reserved overhead).
    pub capacity_bytes: u64,
    /// `used_bytes / capacity_bytes`.
    pub occupancy: f64,
    /// Chunks on it.
    pub chunks: u64,
    /// Whether it takes writes now (sliding window: a function of the current bucket below the
    /// occupancy threshold).
    pub accepting_writes: bool,
}

/// Full state for metrics: functions per bucket, occupancy per function, bucket counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Policy name.
    pub policy: &'static str,
    /// Live buckets, oldest first (empty for the baselines).
    pub buckets: Vec<BucketSnapshot>,
    /// Held functions, by id.
    pub functions: Vec<FunctionSnapshot>,
    /// Counters.
    pub stats: Stats,
}

/// A memory-management policy: events in, decisions out.
///
/// Implementations are pure and synchronous: no I/O, no clock of their own (every call takes
/// `now`), randomness from a seeded RNG in their config.
pub trait Policy: Send {
    /// Stable name (`sliding-window`, `infinicache`, `provisioned`).
    fn name(&self) -> &'static str;

    /// A new object of `size` bytes, cut into `pieces` pieces (>= 1) of `d + p` chunks each, was
    /// written (or a GET miss is being re-filled). Returns where every chunk goes.
    fn put(&mut self, now: Millis, key: &str, size: u64, pieces: u32) -> PutDecision;

    /// A GET for `key`: where to read it, and which chunks to relocate afterwards. A
    /// relocation counts only once [`Policy::relocated`] reports it done.
    fn get(&mut self, now: Millis, key: &str) -> GetDecision;

    /// The relocation `get` decided for `key` was carried out (`ok`: the chunks are at their
    /// new functions) or given up (they stay where they were). Ignored if the object changed
    /// meanwhile.
    fn relocated(&mut self, now: Millis, key: &str, moves: &[ChunkMove], ok: bool) -> Effects;

    /// The object was deleted.
    fn delete(&mut self, now: Millis, key: &str) -> DeleteDecision;

    /// Clock tick: warm-ups due, bucket rotation, degradation, expiry, scale-out.
    /// Call it at [`Policy::next_wakeup`] (or periodically, e.g. every second).
    fn tick(&mut self, now: Millis) -> Effects;

    /// The provider reclaimed `function` (its memory is gone).
    fn function_lost(&mut self, now: Millis, function: FunctionId) -> LossDecision;

    /// `function` reported how many bytes of its memory hold data. Above the occupancy threshold
    /// it stops taking writes (and the current bucket may grow).
    fn occupancy(&mut self, now: Millis, function: FunctionId, bytes_used: u64) -> Effects;

    /// When [`Policy::tick`] next has something to do, if ever.
    fn next_wakeup(&self) -> Option<Millis>;

    /// Whether `key` is in memory (with enough chunks to decode).
    fn contains(&self, key: &str) -> bool;

    /// Cheap counters.
    fn stats(&self) -> Stats;

    /// Full state for metrics and tests.
    fn snapshot(&self) -> Snapshot;
}

impl Snapshot {
    /// A compact text form for tests and logs. Sliding window: one line per bucket,
    /// `b3 active: f0=2 f1=2 f2=0! | 1 obj` (MiB used per function, rounded up; `!` marks a
    /// function that takes no writes: full, or outside the current bucket; `N obj` counts the
    /// objects of that bucket, wherever their chunks are). Fixed pool: one line with the
    /// functions that hold data. Provisioned: stored bytes and objects.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b.div_ceil(MIB);
        let func = |f: &FunctionSnapshot| {
            format!(
                "{}={}{}",
                f.id,
                mib(f.used_bytes),
                if f.accepting_writes { "" } else { "!" }
            )
        };
        if !self.buckets.is_empty() {
            let by_id: std::collections::BTreeMap<FunctionId, &FunctionSnapshot> =
                self.functions.iter().map(|f| (f.id, f)).collect();
            return self
                .buckets
                .iter()
                .map(|b| {
                    let state = match b.state {
                        BucketState::Active => "active",
                        BucketState::Degraded => "degraded",
                    };
                    let fs: Vec<String> = b.functions.iter().map(|f| func(by_id[f])).collect();
                    format!("{} {}: {} | {} obj", b.id, state, fs.join(" "), b.objects)
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        if !self.functions.is_empty() {
            let fs: Vec<String> = self
                .functions
                .iter()
                .filter(|f| f.chunks > 0)
                .map(func)
                .collect();
            return format!("pool: {} | {} obj", fs.join(" "), self.stats.objects);
        }
        format!(
            "nodes: {} MiB | {} obj",
            mib(self.stats.stored_bytes),
            self.stats.objects
        )
    }
}
