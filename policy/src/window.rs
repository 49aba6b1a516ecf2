//! InfiniStore's sliding window (VLDB'23), as described in `serverless-memory.md` §4.
//!
//! Functions are grouped into time buckets; a new bucket opens every [`WindowConfig::bucket_ms`]
//! and takes every new write (the nursery). The newest [`WindowConfig::active_buckets`] buckets
//! form the active window (warmed every minute, lost functions recovered from S3); older ones up
//! to [`WindowConfig::window_buckets`] are degraded (read-only, warmed every 5 minutes, a lost
//! function is delegated instead of recovered); beyond that a bucket expires, its objects are
//! evicted from memory (they stay in S3) and its functions return to the pool. A GET promotes
//! an old object into the current bucket (always at age >= 6 buckets, with probability 1/2 at
//! 3–5). A function above 90% occupancy stops taking writes and the current bucket grows by a
//! step of functions. Chunk `i` of a piece goes to the first function with room among bucket
//! positions `i, i + (d+p), i + 2(d+p), ...`, else to the emptiest other function of the
//! bucket with room; never to one holding another chunk of the piece, so the chunks of one
//! piece are on distinct functions.
//!
//! # Bucket inheritance, and where the room comes from
//!
//! A bucket is a set of functions *and* a set of objects (those written or promoted while it
//! was current). At rotation the current bucket's functions that still take writes (at most
//! the occupancy threshold, not full) move into the new bucket with their chunks, as
//! InfiniStore's `createNextBucket` does; the old bucket keeps its full functions (read-only
//! from then on) and all its objects. Objects keep their own bucket whatever function their
//! chunks are on: their age decides promotion, and their bucket's expiry evicts them, freeing
//! those chunks on whichever function holds them. Functions, not objects, decide warm-ups and
//! loss handling: an inherited function is warmed as a member of its new bucket, and if it is
//! lost while active every chunk it holds is recovered. A promotion rewrites only the chunks
//! that are lost or on functions outside the current bucket (chunks on inherited functions
//! stay put; the object just joins the current bucket).
//!
//! InfiniStore inherits only when at least one scaling step of non-full functions remains,
//! and otherwise opens the new bucket with a fresh step. That cannot work with a pool of one
//! step (the gateway's default: pool = scale step = d + p = 12): bucket 0 holds the whole pool
//! and the new bucket would get nothing. The rule here:
//!
//! 1. At rotation the new bucket inherits every function that takes writes, then draws from
//!    the pool until `d + p` of its functions take writes: a whole step if the pool has one,
//!    else the shortfall if the pool has that many, else nothing yet (step 2 does it).
//! 2. A write that finds no function with room in the current bucket draws from the pool (a
//!    step, or one function if the pool is short); if the pool is empty it expires the oldest
//!    bucket early (degraded ones first, being older, then old active ones; never the
//!    current one), which returns its functions and frees its objects' chunks wherever they
//!    are; when only the current bucket is left, its oldest objects are evicted.
//! 3. A promotion draws from the pool, and may expire early only degraded buckets older than
//!    the promoted object's; it never evicts anything else (failing that, the object is read
//!    where it is).
//! 4. After writes, and when an occupancy report stops a function, the bucket is topped up
//!    from the pool only; expiry and eviction happen only when a write needs the room.
//!
//! Invariant: a function holds chunks only of objects of its bucket or older ones (chunks are
//! placed on the current bucket's functions, functions only move forward, and promotions move
//! every chunk outside the current bucket), and buckets expire oldest first; so an expiring
//! bucket's functions hold nothing and return to the pool empty. Guarantee: while the pool
//! holds at least `d + p` functions (validated: pool >= step >= d + p) and occupancy reports
//! tell the truth, a PUT whose chunks fit in the pool's empty functions (one piece: a chunk
//! no larger than a function; `n` pieces: `n` chunks per position on `floor(pool / (d+p))`
//! functions each) is always placed, evicting the oldest data if needed; a larger one
//! bypasses at once (`TooLarge`) without evicting anything.
//!
//! "Takes writes" is computed, not latched: a function of the current bucket that stopped
//! (above the threshold by the policy's accounting, or by an occupancy report) takes writes
//! again once expiry, eviction, deletion or promotion brought it back under the threshold (a
//! report's stop holds until a later report at or below the threshold, or until the policy
//! frees chunks on the function, which makes the report out of date).
//!
//! Other deviations, all documented in `docs/policy.md`: functions of an older bucket that
//! hold no chunk are not warmed (nothing to keep warm); the current bucket's functions always
//! are. Functions drawn from the pool get a warm-up at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ensure};
use crate::schedule::Schedule;
use crate::store::{ChunkTable, Obj, ObjRef};
use crate::types::*;

/// Policy name.
pub const NAME: &str = "sliding-window";

/// A new bucket every 10 minutes (InfiniStore).
pub const DEFAULT_BUCKET_MS: Millis = 10 * 60 * 1000;
/// The active window: the newest 6 buckets (60 min).
pub const DEFAULT_ACTIVE_BUCKETS: u32 = 6;
/// Buckets 7..18 are degraded; older ones expire (180 min).
pub const DEFAULT_WINDOW_BUCKETS: u32 = 18;
/// Active functions are warmed every minute...
pub const DEFAULT_ACTIVE_WARMUP_MS: Millis = 60 * 1000;
/// ...up to 6 s early (random jitter, so warm-ups do not arrive in lockstep).
pub const DEFAULT_ACTIVE_JITTER_MS: Millis = 6 * 1000;
/// Degraded functions are warmed every 5 minutes...
pub const DEFAULT_DEGRADED_WARMUP_MS: Millis = 5 * 60 * 1000;
/// ...up to 30 s early.
pub const DEFAULT_DEGRADED_JITTER_MS: Millis = 30 * 1000;
/// Deployed functions the buckets draw from (InfiniStore's default).
pub const DEFAULT_POOL_SIZE: u32 = 1000;
/// Function memory (InfiniStore's default).
pub const DEFAULT_FUNCTION_MEMORY_MB: u32 = 1536;
/// Memory kept for the runtime, not for chunks.
pub const DEFAULT_RESERVED_MB: u32 = 100;
/// Data chunks per piece.
pub const DEFAULT_DATA_CHUNKS: u32 = 10;
/// Parity chunks per piece.
pub const DEFAULT_PARITY_CHUNKS: u32 = 2;
/// Functions added when the current bucket fills (at least d + p).
pub const DEFAULT_SCALE_STEP: u32 = 12;
/// A function above this fraction of its capacity stops taking writes.
pub const DEFAULT_STOP_WRITES_OCCUPANCY: f64 = 0.9;
/// Objects smaller than this bypass function memory (per-request overhead dominates, §1).
pub const DEFAULT_MIN_OBJECT_BYTES: u64 = MIB;

/// Configuration of [`SlidingWindow`]; defaults are InfiniStore's.
///
/// As a configuration file reads it (the gateway's `[policy.window]`): the window's own
/// tunables, durations as `"10m"` or milliseconds. What the deployment decides — the pool,
/// function memory, `d + p`, the smallest object, warm-up jitter — is not read from it but set
/// by [`WindowConfig::deployed`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Deployed functions, ids `0..pool_size`.
    #[serde(skip_deserializing)]
    pub pool_size: u32,
    /// Memory of each function, MB (Lambda's MB: 1536 MB = 1.5 GB).
    #[serde(skip_deserializing)]
    pub function_memory_mb: u32,
    /// Memory reserved for the runtime, MB; the rest holds chunks.
    pub reserved_mb: u32,
    /// `d`.
    #[serde(skip_deserializing)]
    pub data_chunks: u32,
    /// `p`.
    #[serde(skip_deserializing)]
    pub parity_chunks: u32,
    /// Length of a bucket (`bucket` in a configuration file).
    #[serde(
        rename(deserialize = "bucket"),
        deserialize_with = "crate::types::millis"
    )]
    pub bucket_ms: Millis,
    /// Buckets in the active window (including the current one).
    pub active_buckets: u32,
    /// Buckets kept in all (active + degraded); older ones expire.
    pub window_buckets: u32,
    /// Warm-up interval in the active window (`active_warmup`).
    #[serde(
        rename(deserialize = "active_warmup"),
        deserialize_with = "crate::types::millis"
    )]
    pub active_warmup_ms: Millis,
    /// Active warm-ups come up to this much early (uniform).
    #[serde(skip_deserializing)]
    pub active_jitter_ms: Millis,
    /// Warm-up interval of degraded buckets (`degraded_warmup`).
    #[serde(
        rename(deserialize = "degraded_warmup"),
        deserialize_with = "crate::types::millis"
    )]
    pub degraded_warmup_ms: Millis,
    /// Degraded warm-ups come up to this much early (uniform).
    #[serde(skip_deserializing)]
    pub degraded_jitter_ms: Millis,
    /// A GET always promotes an object this many buckets old (or older).
    pub promote_always_age: u32,
    /// A GET promotes an object at least this old with `promote_probability`.
    pub promote_maybe_age: u32,
    /// Probability of promotion between the two ages.
    pub promote_probability: f64,
    /// Occupancy above which a function stops taking writes.
    pub stop_writes_occupancy: f64,
    /// Functions added to the current bucket when it fills (>= d + p).
    pub scale_step: u32,
    /// Smaller objects bypass function memory.
    #[serde(skip_deserializing)]
    pub min_object_bytes: u64,
    /// Seed of the RNG (jitter, promotion coin flips).
    pub seed: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            pool_size: DEFAULT_POOL_SIZE,
            function_memory_mb: DEFAULT_FUNCTION_MEMORY_MB,
            reserved_mb: DEFAULT_RESERVED_MB,
            data_chunks: DEFAULT_DATA_CHUNKS,
            parity_chunks: DEFAULT_PARITY_CHUNKS,
            bucket_ms: DEFAULT_BUCKET_MS,
            active_buckets: DEFAULT_ACTIVE_BUCKETS,
            window_buckets: DEFAULT_WINDOW_BUCKETS,
            active_warmup_ms: DEFAULT_ACTIVE_WARMUP_MS,
            active_jitter_ms: DEFAULT_ACTIVE_JITTER_MS,
            degraded_warmup_ms: DEFAULT_DEGRADED_WARMUP_MS,
            degraded_jitter_ms: DEFAULT_DEGRADED_JITTER_MS,
            promote_always_age: 6,
            promote_maybe_age: 3,
            promote_probability: 0.5,
            stop_writes_occupancy: DEFAULT_STOP_WRITES_OCCUPANCY,
            scale_step: DEFAULT_SCALE_STEP,
            min_object_bytes: DEFAULT_MIN_OBJECT_BYTES,
            seed: 0,
        }
    }
}

impl WindowConfig {
    /// This configuration on `deployment`: its pool, function memory, code and smallest
    /// object; warm-ups jittered by up to a tenth of their interval; the scale step clamped to
    /// the pool and to at least `d + p`.
    pub fn deployed(mut self, deployment: &Deployment) -> Self {
        self.pool_size = deployment.functions;
        self.function_memory_mb = deployment.function_memory_mb;
        self.data_chunks = deployment.data_chunks;
        self.parity_chunks = deployment.parity_chunks;
        self.min_object_bytes = deployment.min_object_bytes;
        self.active_jitter_ms = self.active_warmup_ms / 10;
        self.degraded_jitter_ms = self.degraded_warmup_ms / 10;
        self.scale_step = self
            .scale_step
            .min(deployment.functions)
            .max(deployment.data_chunks + deployment.parity_chunks);
        self
    }

    /// Bytes of chunks one function may hold.
    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.function_memory_mb.saturating_sub(self.reserved_mb)) * MIB
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let n = NAME;
        ensure(self.data_chunks >= 1, n, "data_chunks", || {
            "must be >= 1".into()
        })?;
        let cpp = self.data_chunks + self.parity_chunks;
        ensure(
            self.reserved_mb < self.function_memory_mb,
            n,
            "reserved_mb",
            || {
                format!(
                    "must be below function_memory_mb ({})",
                    self.function_memory_mb
                )
            },
        )?;
        ensure(self.bucket_ms > 0, n, "bucket_ms", || "must be > 0".into())?;
        ensure(self.active_buckets >= 1, n, "active_buckets", || {
            "must be >= 1".into()
        })?;
        ensure(
            self.window_buckets >= self.active_buckets,
            n,
            "window_buckets",
            || format!("must be >= active_buckets ({})", self.active_buckets),
        )?;
        ensure(self.active_warmup_ms > 0, n, "active_warmup_ms", || {
            "must be > 0".into()
        })?;
        ensure(self.degraded_warmup_ms > 0, n, "degraded_warmup_ms", || {
            "must be > 0".into()
        })?;
        ensure(
            self.active_jitter_ms < self.active_warmup_ms,
            n,
            "active_jitter_ms",
            || "must be below active_warmup_ms".into(),
        )?;
        ensure(
            self.degraded_jitter_ms < self.degraded_warmup_ms,
            n,
            "degraded_jitter_ms",
            || "must be below degraded_warmup_ms".into(),
        )?;
        ensure(
            self.promote_maybe_age <= self.promote_always_age,
            n,
            "promote_maybe_age",
            || "must be <= promote_always_age".into(),
        )?;
        ensure(
            (0.0..=1.0).contains(&self.promote_probability),
            n,
            "promote_probability",
            || "must be within 0..=1".into(),
        )?;
        ensure(
            self.stop_writes_occupancy > 0.0 && self.stop_writes_occupancy <= 1.0,
            n,
            "stop_writes_occupancy",
            || "must be within (0, 1]".into(),
        )?;
        ensure(self.scale_step >= cpp, n, "scale_step", || {
            format!("must be >= d + p ({cpp})")
        })?;
        ensure(self.pool_size >= self.scale_step, n, "pool_size", || {
            format!("must be >= scale_step ({})", self.scale_step)
        })?;
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
struct FnState {
    /// The bucket holding the function (`None`: in the pool).
    bucket: Option<u64>,
    /// An occupancy report above the threshold stopped its writes. Cleared by a later report
    /// at or below it, or when the policy frees chunks on the function (the report is older).
    report_full: bool,
    last_touch: Millis,
}

#[derive(Clone, Debug)]
struct Bucket {
    id: u64,
    opened_at: Millis,
    state: BucketState,
    /// Functions it holds, in placement order.
    functions: Vec<FunctionId>,
    /// Whether it has drawn functions from the pool yet (`opened` vs `scaled_out`).
    drew: bool,
    /// Objects tagged with this bucket, by when they joined it (oldest first).
    objects: BTreeMap<u64, ObjRef>,
}

/// How far [`SlidingWindow::place`] may go to find room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Room {
    /// A new object: draw from the pool; if it is short, expire the oldest buckets early
    /// (never the current one); if only the current one is left, evict its oldest objects.
    Write,
    /// A promotion of an object of bucket `tag`: draw from the pool; if it is short, expire
    /// degraded buckets older than `tag` early. Never evicts anything else.
    Promotion { tag: u64 },
}

/// The sliding-window policy. See the module docs.
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    cfg: WindowConfig,
    rng: ChaCha8Rng,
    store: ChunkTable,
    fns: Vec<FnState>,
    pool: BTreeSet<u32>,
    buckets: VecDeque<Bucket>,
    /// When each live object joined its bucket (a counter), by slot.
    joined: Vec<u64>,
    next_join: u64,
    epoch: Option<Millis>,
    last_now: Millis,
    schedule: Schedule,
    expired_total: u64,
    capacity: u64,
    stop_bytes: u64,
}

impl SlidingWindow {
    /// Validates `cfg` and builds an empty window (the first event opens bucket 0).
    pub fn new(cfg: WindowConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let capacity = cfg.capacity_bytes();
        Ok(SlidingWindow {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            store: ChunkTable::new(cfg.pool_size),
            fns: vec![FnState::default(); cfg.pool_size as usize],
            pool: (0..cfg.pool_size).collect(),
            buckets: VecDeque::new(),
            joined: Vec::new(),
            next_join: 0,
            epoch: None,
            last_now: 0,
            schedule: Schedule::new(cfg.pool_size),
            expired_total: 0,
            capacity,
            stop_bytes: (capacity as f64 * cfg.stop_writes_occupancy) as u64,
            cfg,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &WindowConfig {
        &self.cfg
    }

    fn cpp(&self) -> u32 {
        self.cfg.data_chunks + self.cfg.parity_chunks
    }

    fn clock(&mut self, now: Millis) -> Millis {
        let now = now.max(self.last_now);
        self.last_now = now;
        now
    }

    fn current_id(&self) -> u64 {
        self.buckets.back().map_or(0, |b| b.id)
    }

    fn bucket(&self, id: u64) -> Option<&Bucket> {
        let front = self.buckets.front()?.id;
        self.buckets.get(id.checked_sub(front)? as usize)
    }

    fn bucket_mut(&mut self, id: u64) -> Option<&mut Bucket> {
        let front = self.buckets.front()?.id;
        self.buckets.get_mut(id.checked_sub(front)? as usize)
    }

    fn new_bucket(id: u64, opened_at: Millis) -> Bucket {
        Bucket {
            id,
            opened_at,
            state: BucketState::Active,
            functions: Vec::new(),
            drew: false,
            objects: BTreeMap::new(),
        }
    }

    /// Rotates buckets up to `now`: opens new ones, expires, degrades, and gives the new
    /// current bucket its functions (inherited, then topped up from the pool).
    fn advance(&mut self, now: Millis, fx: &mut Effects) {
        let Some(epoch) = self.epoch else {
            self.epoch = Some(now);
            self.buckets.push_back(Self::new_bucket(0, now));
            self.ensure_writable(now, fx);
            return;
        };
        let target = (now - epoch) / self.cfg.bucket_ms;
        let cur = self.current_id();
        if target <= cur {
            return;
        }
        let window = u64::from(self.cfg.window_buckets);
        // Buckets that would expire at once are never created.
        let first_new = (cur + 1).max((target + 1).saturating_sub(window));
        for id in first_new..=target {
            self.buckets
                .push_back(Self::new_bucket(id, epoch + id * self.cfg.bucket_ms));
        }
        while self
            .buckets
            .front()
            .is_some_and(|b| target - b.id >= window)
        {
            self.expire_front(fx);
        }
        let active = u64::from(self.cfg.active_buckets);
        let to_degrade: Vec<u64> = self
            .buckets
            .iter()
            .filter(|b| b.state == BucketState::Active && target - b.id >= active)
            .map(|b| b.id)
            .collect();
        for id in to_degrade {
            let b = self.bucket_mut(id).expect("live bucket");
            b.state = BucketState::Degraded;
            let functions = b.functions.clone();
            fx.degraded.push(BucketId(id));
            for f in functions {
                self.reschedule(f);
            }
        }
        // The previous current bucket, unless it just expired (a long idle period).
        if self.bucket(cur).is_some() {
            self.inherit(cur, fx);
        }
        self.ensure_writable(now, fx);
    }

    /// Bucket inheritance: the functions of bucket `from` that still take writes move, with
    /// their chunks, into the current bucket; `from` keeps its full ones.
    fn inherit(&mut self, from: u64, fx: &mut Effects) {
        let to = self.current_id();
        let b = self.bucket(from).expect("live bucket");
        let (moving, staying): (Vec<FunctionId>, Vec<FunctionId>) =
            b.functions.iter().partition(|&&f| self.writable(f));
        if moving.is_empty() {
            return;
        }
        self.bucket_mut(from).expect("live bucket").functions = staying;
        for &f in &moving {
            self.fns[f.index()].bucket = Some(to);
            self.reschedule(f);
        }
        self.buckets
            .back_mut()
            .expect("current bucket")
            .functions
            .extend(&moving);
        fx.inherited.push(Inheritance {
            from: BucketId(from),
            to: BucketId(to),
            functions: moving,
        });
    }

    fn expire_front(&mut self, fx: &mut Effects) {
        let Some(b) = self.buckets.pop_front() else {
            return;
        };
        for (_, slot) in b.objects {
            let obj = self.store.remove(slot);
            self.evicted(&obj);
            fx.evicted.push(obj.key.into());
        }
        // A function holds chunks only of objects of its bucket or older ones (chunks are
        // placed on the current bucket's functions and functions only move forward, by
        // inheritance), and older buckets expired first.
        for f in b.functions {
            debug_assert_eq!(self.store.used(f), 0, "expired function still holds chunks");
            self.fns[f.index()] = FnState::default();
            self.schedule.clear(f);
            self.pool.insert(f.0);
            fx.returned.push(f);
        }
        fx.expired.push(BucketId(b.id));
        self.expired_total += 1;
    }

    /// Draws functions from the pool (lowest ids first) into the current bucket: a whole
    /// step if the pool has one, else `need` functions if it has that many. Returns false if
    /// nothing was drawn.
    fn grow(&mut self, need: u32, now: Millis, fx: &mut Effects) -> bool {
        let avail = self.pool.len() as u32;
        let n = if avail >= self.cfg.scale_step {
            self.cfg.scale_step
        } else if need > 0 && avail >= need {
            need
        } else {
            return false;
        };
        let fs: Vec<FunctionId> = (0..n)
            .map(|_| FunctionId(self.pool.pop_first().expect("checked")))
            .collect();
        let id = self.current_id();
        for &f in &fs {
            self.fns[f.index()] = FnState {
                bucket: Some(id),
                report_full: false,
                last_touch: now,
            };
            fx.warmups.push(Warmup {
                function: f,
                due: now,
            });
            self.reschedule(f);
        }
        let b = self.buckets.back_mut().expect("current bucket");
        let growth = BucketGrowth {
            bucket: BucketId(id),
            functions: fs.clone(),
        };
        if b.drew {
            fx.scaled_out.push(growth);
        } else {
            fx.opened.push(growth);
        }
        b.drew = true;
        b.functions.extend(fs);
        true
    }

    /// Whether a warm-up of `f` is worth sending: it is in a live bucket and either holds chunks
    /// or belongs to the current bucket (kept warm for writes).
    fn warm_worthy(&self, f: FunctionId) -> bool {
        match self.fns[f.index()].bucket {
            None => false,
            Some(b) => b == self.current_id() || self.store.chunk_count(f) > 0,
        }
    }

    fn reschedule(&mut self, f: FunctionId) {
        if !self.warm_worthy(f) {
            self.schedule.clear(f);
            return;
        }
        let bucket = self.fns[f.index()].bucket.expect("worthy => in a bucket");
        let state = self.bucket(bucket).map_or(BucketState::Active, |b| b.state);
        let (interval, jitter) = match state {
            BucketState::Active => (self.cfg.active_warmup_ms, self.cfg.active_jitter_ms),
            BucketState::Degraded => (self.cfg.degraded_warmup_ms, self.cfg.degraded_jitter_ms),
        };
        let early = if jitter > 0 {
            self.rng.random_range(0..=jitter)
        } else {
            0
        };
        let at = self.fns[f.index()].last_touch + interval - early;
        self.schedule.set(f, at);
    }

    fn touch(&mut self, f: FunctionId, now: Millis) {
        self.fns[f.index()].last_touch = now;
        self.reschedule(f);
    }

    /// Whether `f` takes writes: at most the occupancy threshold used (by the policy's
    /// accounting, and not stopped by a later report) and not full.
    fn writable(&self, f: FunctionId) -> bool {
        let used = self.store.used(f);
        !self.fns[f.index()].report_full && used <= self.stop_bytes && used < self.capacity
    }

    fn can_take(&self, f: FunctionId, chunk: u64, pending: u64) -> bool {
        let used = self.store.used(f) + pending;
        !self.fns[f.index()].report_full && used <= self.stop_bytes && used + chunk <= self.capacity
    }

    /// `obj` was evicted: reports that stopped its functions are out of date.
    fn evicted(&mut self, obj: &Obj) {
        for f in obj.chunks.iter().flatten() {
            self.fns[f.index()].report_full = false;
        }
    }

    /// A function of the current bucket for chunk `i` of a piece: the first with room among
    /// positions `i, i + (d+p), ...`, else the emptiest other one with room; never one in
    /// `taken` (the piece's other chunks).
    fn find(
        &self,
        i: usize,
        chunk: u64,
        pending: &BTreeMap<u32, u64>,
        taken: &[FunctionId],
    ) -> Option<FunctionId> {
        let s = self.cpp() as usize;
        let fs = &self.buckets.back()?.functions;
        let ok = |f: FunctionId| {
            !taken.contains(&f) && self.can_take(f, chunk, pending.get(&f.0).copied().unwrap_or(0))
        };
        if let Some(&f) = fs.iter().skip(i).step_by(s).find(|&&f| ok(f)) {
            return Some(f);
        }
        fs.iter()
            .enumerate()
            .filter(|&(p, &f)| p % s != i && ok(f))
            .min_by_key(|&(p, &f)| {
                (
                    self.store.used(f) + pending.get(&f.0).copied().unwrap_or(0),
                    p,
                )
            })
            .map(|(_, &f)| f)
    }

    /// Chooses functions of the current bucket for chunks of `chunk` bytes: for every piece,
    /// the chunk indices to place and the functions holding its other chunks (so that the
    /// chunks of a piece stay on distinct functions). Makes room as `room` allows. Nothing is
    /// committed; returns the functions in the order asked.
    fn place(
        &mut self,
        chunk: u64,
        pieces: &[(Vec<u32>, Vec<FunctionId>)],
        room: Room,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Vec<FunctionId>, BypassReason> {
        let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
        let mut out = Vec::with_capacity(pieces.iter().map(|p| p.0.len()).sum());
        for (indices, keep) in pieces {
            let mut taken = keep.clone();
            for &i in indices {
                loop {
                    if let Some(f) = self.find(i as usize, chunk, &pending, &taken) {
                        *pending.entry(f.0).or_default() += chunk;
                        taken.push(f);
                        out.push(f);
                        break;
                    }
                    if !self.make_room(room, now, fx) {
                        return Err(BypassReason::PoolExhausted);
                    }
                }
            }
        }
        Ok(out)
    }

    /// One step towards a function with room in the current bucket: draw from the pool, else
    /// expire the oldest bucket, else (writes only, nothing older left) evict the current
    /// bucket's oldest object. Returns false if `room` allows nothing more.
    fn make_room(&mut self, room: Room, now: Millis, fx: &mut Effects) -> bool {
        if self.grow(1, now, fx) {
            return true;
        }
        let older = self.buckets.len() > 1;
        let front = self.buckets.front().expect("current bucket");
        match room {
            Room::Promotion { tag } => {
                if !(older && front.state == BucketState::Degraded && front.id < tag) {
                    return false;
                }
                self.expire_front(fx);
            }
            Room::Write if older => self.expire_front(fx),
            Room::Write => {
                let Some((_, &slot)) = front.objects.first_key_value() else {
                    return false;
                };
                let obj = self.remove_object(slot);
                fx.evicted.push(obj.key.into());
            }
        }
        true
    }

    /// After chunks were written to `written`: stop writes above the threshold, reschedule
    /// warm-ups, and make sure the current bucket has `d + p` functions that take writes.
    fn after_writes(&mut self, written: &[FunctionId], chunk: u64, now: Millis, fx: &mut Effects) {
        let mut added: BTreeMap<FunctionId, u64> = BTreeMap::new();
        for &f in written {
            *added.entry(f).or_default() += chunk;
        }
        for (f, bytes) in added {
            let used = self.store.used(f);
            if used > self.stop_bytes && used - bytes <= self.stop_bytes {
                fx.stopped_writes.push(f);
            }
            self.touch(f, now);
        }
        self.ensure_writable(now, fx);
    }

    /// Grows the current bucket from the pool if fewer than `d + p` of its functions take
    /// writes (never expires or evicts anything: the next write does, if it must).
    fn ensure_writable(&mut self, now: Millis, fx: &mut Effects) {
        let Some(b) = self.buckets.back() else {
            return;
        };
        let writable = b.functions.iter().filter(|&&f| self.writable(f)).count() as u32;
        let need = self.cpp().saturating_sub(writable);
        if need > 0 {
            self.grow(need, now, fx);
        }
    }

    /// Tags `slot` with the current bucket (a new object, or a promotion).
    fn join_current(&mut self, slot: ObjRef) {
        let seq = self.next_join;
        self.next_join += 1;
        let i = slot as usize;
        if self.joined.len() <= i {
            self.joined.resize(i + 1, 0);
        }
        self.joined[i] = seq;
        self.store.obj_mut(slot).tag = self.current_id();
        self.buckets
            .back_mut()
            .expect("current bucket")
            .objects
            .insert(seq, slot);
    }

    fn leave_bucket(&mut self, slot: ObjRef) {
        let tag = self.store.obj(slot).tag;
        let seq = self.joined[slot as usize];
        if let Some(b) = self.bucket_mut(tag) {
            b.objects.remove(&seq);
        }
    }

    fn remove_object(&mut self, slot: ObjRef) -> Obj {
        self.leave_bucket(slot);
        let obj = self.store.remove(slot);
        self.evicted(&obj);
        obj
    }

    fn layout_of(&self, obj: &Obj) -> ChunkLayout {
        ChunkLayout {
            chunk_size: obj.chunk_size,
            chunks_per_piece: obj.chunks_per_piece,
            data_chunks: obj.data_chunks,
            functions: obj.chunks.iter().flatten().copied().collect(),
        }
    }

    /// Whether `pieces` pieces of chunks of `chunk` bytes fit in the pool's empty functions
    /// with chunk `i` of every piece on positions `i, i + (d+p), ...` alone: each of those
    /// `floor(pool / (d+p))` (or more) functions per position takes as many chunks as fit
    /// under the threshold.
    fn fits_pool(&self, chunk: u64, pieces: u32) -> bool {
        if chunk == 0 {
            return true;
        }
        let per_fn = (self.capacity / chunk).min(self.stop_bytes / chunk + 1);
        let per_position = u64::from(self.cfg.pool_size / self.cpp());
        u64::from(pieces) <= per_position.saturating_mul(per_fn)
    }
}

impl Policy for SlidingWindow {
    fn name(&self) -> &'static str {
        NAME
    }

    fn put(&mut self, now: Millis, key: &str, size: u64, pieces: u32) -> PutDecision {
        let now = self.clock(now);
        let mut fx = Effects::default();
        self.advance(now, &mut fx);
        let mut stale = Vec::new();
        if let Some(slot) = self.store.slot(key) {
            stale = self
                .remove_object(slot)
                .chunks
                .into_iter()
                .flatten()
                .collect();
        }
        let d = self.cfg.data_chunks;
        let pieces = pieces.max(1);
        let chunk = size.div_ceil(u64::from(pieces) * u64::from(d));
        let placement = if size < self.cfg.min_object_bytes {
            Placement::Bypass(BypassReason::TooSmall)
        } else if !self.fits_pool(chunk, pieces) {
            Placement::Bypass(BypassReason::TooLarge)
        } else {
            let all: Vec<u32> = (0..self.cpp()).collect();
            let wanted = vec![(all, Vec::new()); pieces as usize];
            let placed = self
                .place(chunk, &wanted, Room::Write, now, &mut fx)
                // Placing while making room can pack badly (a chunk that found no room at
                // its positions took another's); now every function is in the current bucket
                // and empty, and a fresh pass cannot come up short (see `fits_pool`).
                .or_else(|_| self.place(chunk, &wanted, Room::Write, now, &mut fx));
            match placed {
                Err(reason) => Placement::Bypass(reason),
                Ok(fs) => {
                    let obj = Obj {
                        key: key.into(),
                        chunk_size: chunk,
                        chunks_per_piece: self.cpp(),
                        data_chunks: d,
                        chunks: fs.iter().copied().map(Some).collect(),
                        tag: self.current_id(),
                    };
                    let layout = self.layout_of(&obj);
                    let slot = self.store.insert(obj);
                    self.join_current(slot);
                    self.after_writes(&fs, chunk, now, &mut fx);
                    Placement::Functions(layout)
                }
            }
        };
        PutDecision {
            placement,
            stale,
            effects: fx,
        }
    }

    fn get(&mut self, now: Millis, key: &str) -> GetDecision {
        let now = self.clock(now);
        let mut fx = Effects::default();
        self.advance(now, &mut fx);
        let miss = |effects| GetDecision {
            lookup: Lookup::Miss,
            relocation: Vec::new(),
            effects,
        };
        let Some(slot) = self.store.slot(key) else {
            return miss(fx);
        };
        if !self.store.obj(slot).decodable() {
            let obj = self.remove_object(slot);
            fx.evicted.push(obj.key.into());
            return miss(fx);
        }
        let (chunk, tag) = {
            let obj = self.store.obj(slot);
            (obj.chunk_size, obj.tag)
        };
        let cur = self.current_id();
        let age = cur - tag;
        let promote = if age >= u64::from(self.cfg.promote_always_age) {
            true
        } else if age >= u64::from(self.cfg.promote_maybe_age) {
            self.rng.random_bool(self.cfg.promote_probability)
        } else {
            false
        };
        // A promotion rewrites the chunks that are lost or on functions outside the current
        // bucket; chunks on the current bucket's functions (inherited) stay where they are.
        // New places are chosen first: growing the bucket may expire degraded buckets older
        // than this object's early, never the object's own.
        let s = self.cpp() as usize;
        let mut moves: Vec<u32> = Vec::new();
        let mut target = None;
        if promote && tag != cur {
            let old = &self.store.obj(slot).chunks;
            let in_current =
                |f: &Option<FunctionId>| f.is_some_and(|f| self.fns[f.index()].bucket == Some(cur));
            let mut wanted = Vec::new();
            for (j, piece) in old.chunks(s).enumerate() {
                let idx: Vec<u32> = (0..s as u32)
                    .filter(|&i| !in_current(&piece[i as usize]))
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let keep: Vec<FunctionId> = piece
                    .iter()
                    .filter(|f| in_current(f))
                    .flatten()
                    .copied()
                    .collect();
                moves.extend(idx.iter().map(|&i| (j * s) as u32 + i));
                wanted.push((idx, keep));
            }
            target = if wanted.is_empty() {
                Some(Vec::new())
            } else {
                self.place(chunk, &wanted, Room::Promotion { tag }, now, &mut fx)
                    .ok()
            };
        }
        debug_assert_eq!(
            self.store.slot(key),
            Some(slot),
            "promotion expired its object"
        );
        let obj = self.store.obj(slot);
        let old = obj.chunks.clone();
        let lookup = Lookup::Functions {
            chunk_size: chunk,
            chunks_per_piece: obj.chunks_per_piece,
            data_chunks: obj.data_chunks,
            chunks: old.clone(),
        };
        for f in old.iter().flatten() {
            self.touch(*f, now);
        }
        let mut relocation = Vec::new();
        if let Some(to) = target {
            for (&index, &to) in moves.iter().zip(&to) {
                relocation.push(ChunkMove {
                    index,
                    from: old[index as usize],
                    to,
                    size: chunk,
                });
            }
            if relocation.is_empty() {
                // Every chunk is on the current bucket's functions already: nothing moves,
                // the object just joins the current bucket.
                self.leave_bucket(slot);
                self.join_current(slot);
            }
        }
        GetDecision {
            lookup,
            relocation,
            effects: fx,
        }
    }

    fn relocated(&mut self, now: Millis, key: &str, moves: &[ChunkMove], ok: bool) -> Effects {
        let now = self.clock(now);
        let mut fx = Effects::default();
        self.advance(now, &mut fx);
        let Some(slot) = self.store.slot(key) else {
            return fx;
        };
        let current = &self.store.obj(slot).chunks;
        let still = moves
            .iter()
            .all(|m| current.get(m.index as usize) == Some(&m.from));
        if !ok || moves.is_empty() || !still {
            return fx;
        }
        let chunk = self.store.obj(slot).chunk_size;
        let mut to = Vec::with_capacity(moves.len());
        for m in moves {
            if let Some(from) = m.from {
                self.fns[from.index()].report_full = false;
            }
            self.store.move_chunk(slot, m.index, m.to);
            to.push(m.to);
        }
        self.leave_bucket(slot);
        self.join_current(slot);
        for m in moves {
            if let Some(from) = m.from {
                self.reschedule(from);
            }
        }
        self.after_writes(&to, chunk, now, &mut fx);
        fx
    }

    fn delete(&mut self, now: Millis, key: &str) -> DeleteDecision {
        let now = self.clock(now);
        let mut fx = Effects::default();
        self.advance(now, &mut fx);
        match self.store.slot(key) {
            None => DeleteDecision {
                chunks: Vec::new(),
                was_cached: false,
                effects: fx,
            },
            Some(slot) => {
                let obj = self.remove_object(slot);
                let chunks: Vec<FunctionId> = obj.chunks.into_iter().flatten().collect();
                for &f in &chunks {
                    self.reschedule(f);
                }
                DeleteDecision {
                    chunks,
                    was_cached: true,
                    effects: fx,
                }
            }
        }
    }

    fn tick(&mut self, now: Millis) -> Effects {
        let now = self.clock(now);
        let mut fx = Effects::default();
        self.advance(now, &mut fx);
        while let Some((due, f)) = self.schedule.pop_due(now) {
            if !self.warm_worthy(f) {
                continue;
            }
            fx.warmups.push(Warmup { function: f, due });
            self.touch(f, now);
        }
        fx
    }

    fn function_lost(&mut self, now: Millis, function: FunctionId) -> LossDecision {
        let now = self.clock(now);
        let mut fx = Effects::default();
        self.advance(now, &mut fx);
        // The state of the bucket the function is in now (an inherited function serves its
        // new bucket, whatever the age of the objects it holds).
        let bucket = self.fns.get(function.index()).and_then(|st| st.bucket);
        let state = bucket.and_then(|b| self.bucket(b)).map(|b| b.state);
        let action = match state {
            None => LossAction::Nothing,
            Some(BucketState::Active) => {
                let d = self.cfg.data_chunks;
                let cpp = self.cpp();
                let chunks = self
                    .store
                    .chunks_on(function)
                    .map(|(slot, index)| {
                        let obj = self.store.obj(slot);
                        ChunkRef {
                            key: obj.key.to_string(),
                            index,
                            chunk_size: obj.chunk_size,
                            parity: index % cpp >= d,
                        }
                    })
                    .collect();
                self.fns[function.index()].report_full = false;
                self.touch(function, now);
                LossAction::Recover { chunks }
            }
            Some(BucketState::Degraded) => {
                let before = self.store.chunk_count(function) as u32;
                for slot in self.store.lose_function(function) {
                    if !self.store.obj(slot).decodable() {
                        let obj = self.remove_object(slot);
                        fx.evicted.push(obj.key.into());
                    }
                }
                self.fns[function.index()].report_full = false;
                self.reschedule(function);
                LossAction::Delegate {
                    chunks_lost: before,
                }
            }
        };
        LossDecision {
            action,
            effects: fx,
        }
    }

    fn occupancy(&mut self, now: Millis, function: FunctionId, bytes_used: u64) -> Effects {
        let now = self.clock(now);
        let mut fx = Effects::default();
        self.advance(now, &mut fx);
        let cur = self.current_id();
        let Some(bucket) = self.fns.get(function.index()).and_then(|st| st.bucket) else {
            return fx;
        };
        if bytes_used <= self.stop_bytes {
            self.fns[function.index()].report_full = false;
        } else if !self.fns[function.index()].report_full {
            let was_writable = self.writable(function);
            self.fns[function.index()].report_full = true;
            if was_writable {
                fx.stopped_writes.push(function);
                if bucket == cur {
                    self.ensure_writable(now, &mut fx);
                }
            }
        }
        fx
    }

    fn next_wakeup(&self) -> Option<Millis> {
        let rotation = self
            .epoch
            .map(|e| e + (self.current_id() + 1) * self.cfg.bucket_ms);
        match (rotation, self.schedule.first()) {
            (Some(r), Some(w)) => Some(r.min(w)),
            (r, w) => r.or(w),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.store
            .slot(key)
            .is_some_and(|s| self.store.obj(s).decodable())
    }

    fn stats(&self) -> Stats {
        let mut s = Stats {
            memory_bytes: 0,
            stored_bytes: self.store.stored_bytes(),
            objects: self.store.len(),
            expired_buckets: self.expired_total,
            ..Stats::default()
        };
        for b in &self.buckets {
            let n = b.functions.len() as u32;
            s.functions_held += n;
            match b.state {
                BucketState::Active => {
                    s.active_functions += n;
                    s.active_buckets += 1;
                }
                BucketState::Degraded => {
                    s.degraded_functions += n;
                    s.degraded_buckets += 1;
                }
            }
        }
        s.memory_bytes = u64::from(s.functions_held) * u64::from(self.cfg.function_memory_mb) * MIB;
        s
    }

    fn snapshot(&self) -> Snapshot {
        let buckets = self
            .buckets
            .iter()
            .map(|b| BucketSnapshot {
                id: BucketId(b.id),
                state: b.state,
                opened_at: b.opened_at,
                functions: b.functions.clone(),
                objects: b.objects.len() as u64,
            })
            .collect();
        let cur = self.current_id();
        let mut functions: Vec<FunctionSnapshot> = self
            .buckets
            .iter()
            .flat_map(|b| b.functions.iter().map(move |&f| (b.id, f)))
            .map(|(b, f)| {
                let used = self.store.used(f);
                FunctionSnapshot {
                    id: f,
                    bucket: Some(BucketId(b)),
                    used_bytes: used,
                    capacity_bytes: self.capacity,
                    occupancy: used as f64 / self.capacity as f64,
                    chunks: self.store.chunk_count(f),
                    // Only the current bucket takes writes.
                    accepting_writes: b == cur && self.writable(f),
                }
            })
            .collect();
        functions.sort_by_key(|f| f.id);
        Snapshot {
            policy: NAME,
            buckets,
            functions,
            stats: self.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_file_sets_tunables_not_the_deployment() {
        let cfg: WindowConfig =
            serde_json::from_str(r#"{"bucket": "2m", "active_warmup": 1500, "scale_step": 40}"#)
                .unwrap();
        assert_eq!(cfg.bucket_ms, 120_000);
        assert_eq!(cfg.active_warmup_ms, 1_500);
        for field in ["pool_size", "data_chunks", "active_jitter_ms", "bucket_ms"] {
            let err = serde_json::from_str::<WindowConfig>(&format!(r#"{{"{field}": 1}}"#))
                .expect_err(field)
                .to_string();
            assert!(err.contains("unknown field"), "{field}: {err}");
        }
        let d = cfg.deployed(&Deployment {
            functions: 24,
            function_memory_mb: 512,
            data_chunks: 4,
            parity_chunks: 2,
            min_object_bytes: 1024,
        });
        assert_eq!((d.pool_size, d.data_chunks, d.parity_chunks), (24, 4, 2));
        assert_eq!(d.scale_step, 24, "clamped to the pool");
        assert_eq!(d.active_jitter_ms, 150, "a tenth of the interval");
        SlidingWindow::new(d).expect("valid");
    }
}
