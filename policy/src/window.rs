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
//! positions `i, i + (d+p), i + 2(d+p), ...`, so the chunks of one piece are on distinct
//! functions by construction.
//!
//! Deviations, all documented in `docs/policy.md`: functions of an older bucket that hold no
//! chunk are not warmed (nothing to keep warm); the current bucket's functions always are.
//! Functions drawn from the pool get a warm-up at once. When the pool runs dry the oldest
//! degraded bucket expires early.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ensure};
use crate::schedule::Schedule;
use crate::store::{ChunkStore, Obj, Slot};
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Deployed functions, ids `0..pool_size`.
    pub pool_size: u32,
    /// Memory of each function, MB (Lambda's MB: 1536 MB = 1.5 GB).
    pub function_memory_mb: u32,
    /// Memory reserved for the runtime, MB; the rest holds chunks.
    pub reserved_mb: u32,
    /// `d`.
    pub data_chunks: u32,
    /// `p`.
    pub parity_chunks: u32,
    /// Length of a bucket.
    pub bucket_ms: Millis,
    /// Buckets in the active window (including the current one).
    pub active_buckets: u32,
    /// Buckets kept in all (active + degraded); older ones expire.
    pub window_buckets: u32,
    /// Warm-up interval in the active window.
    pub active_warmup_ms: Millis,
    /// Active warm-ups come up to this much early (uniform).
    pub active_jitter_ms: Millis,
    /// Warm-up interval of degraded buckets.
    pub degraded_warmup_ms: Millis,
    /// Degraded warm-ups come up to this much early (uniform).
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
    bucket: Option<u64>,
    accepting: bool,
    reported: u64,
    last_touch: Millis,
}

#[derive(Clone, Debug)]
struct Bucket {
    id: u64,
    opened_at: Millis,
    state: BucketState,
    functions: Vec<FunctionId>,
    objects: BTreeSet<Slot>,
}

/// The sliding-window policy. See the module docs.
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    cfg: WindowConfig,
    rng: ChaCha8Rng,
    store: ChunkStore,
    fns: Vec<FnState>,
    pool: BTreeSet<u32>,
    buckets: VecDeque<Bucket>,
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
            store: ChunkStore::new(cfg.pool_size),
            fns: vec![FnState::default(); cfg.pool_size as usize],
            pool: (0..cfg.pool_size).collect(),
            buckets: VecDeque::new(),
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

    /// Rotates buckets up to `now`: opens new ones, degrades, expires.
    fn advance(&mut self, now: Millis, fx: &mut Effects) {
        let Some(epoch) = self.epoch else {
            self.epoch = Some(now);
            self.buckets.push_back(Bucket {
                id: 0,
                opened_at: now,
                state: BucketState::Active,
                functions: Vec::new(),
                objects: BTreeSet::new(),
            });
            self.grow_current(now, fx);
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
            self.buckets.push_back(Bucket {
                id,
                opened_at: epoch + id * self.cfg.bucket_ms,
                state: BucketState::Active,
                functions: Vec::new(),
                objects: BTreeSet::new(),
            });
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
        self.grow_current(now, fx);
    }

    fn expire_front(&mut self, fx: &mut Effects) {
        let Some(b) = self.buckets.pop_front() else {
            return;
        };
        for slot in b.objects {
            let obj = self.store.remove(slot);
            fx.evicted.push(obj.key.into());
        }
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

    /// Takes `n` functions from the pool (lowest ids first), expiring the oldest degraded
    /// buckets early if the pool is short.
    fn draw(&mut self, n: u32, fx: &mut Effects) -> Option<Vec<FunctionId>> {
        while (self.pool.len() as u32) < n
            && self.buckets.len() > 1
            && self
                .buckets
                .front()
                .is_some_and(|b| b.state == BucketState::Degraded)
        {
            self.expire_front(fx);
        }
        if (self.pool.len() as u32) < n {
            return None;
        }
        Some(
            (0..n)
                .map(|_| FunctionId(self.pool.pop_first().expect("checked")))
                .collect(),
        )
    }

    /// Adds a step of functions to the current bucket. Returns false if the pool is exhausted.
    fn grow_current(&mut self, now: Millis, fx: &mut Effects) -> bool {
        let Some(fs) = self.draw(self.cfg.scale_step, fx) else {
            return false;
        };
        let id = self.current_id();
        for &f in &fs {
            self.fns[f.index()] = FnState {
                bucket: Some(id),
                accepting: true,
                reported: 0,
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
        if b.functions.is_empty() {
            fx.opened.push(growth);
        } else {
            fx.scaled_out.push(growth);
        }
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

    fn can_take(&self, f: FunctionId, chunk: u64, pending: u64) -> bool {
        let st = &self.fns[f.index()];
        let used = self.store.used(f) + pending;
        st.accepting && used <= self.stop_bytes && used + chunk <= self.capacity
    }

    /// Chooses functions of the current bucket for `pieces` pieces of `d + p` chunks of
    /// `chunk` bytes, growing the bucket as needed. Nothing is committed.
    fn place(
        &mut self,
        chunk: u64,
        pieces: u32,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Vec<FunctionId>, BypassReason> {
        let s = self.cpp() as usize;
        if self.buckets.back().is_none_or(|b| b.functions.is_empty()) && !self.grow_current(now, fx)
        {
            return Err(BypassReason::PoolExhausted);
        }
        let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
        let mut out = Vec::with_capacity(pieces as usize * s);
        for _ in 0..pieces {
            for i in 0..s {
                loop {
                    let b = self.buckets.back().expect("current bucket");
                    let found = b.functions.iter().skip(i).step_by(s).copied().find(|&f| {
                        self.can_take(f, chunk, pending.get(&f.0).copied().unwrap_or(0))
                    });
                    if let Some(f) = found {
                        *pending.entry(f.0).or_default() += chunk;
                        out.push(f);
                        break;
                    }
                    if !self.grow_current(now, fx) {
                        return Err(BypassReason::PoolExhausted);
                    }
                }
            }
        }
        Ok(out)
    }

    /// After chunks were written to `written`: stop writes above the threshold, reschedule
    /// warm-ups, and make sure every chunk position of the current bucket can take a write.
    fn after_writes(&mut self, written: &[FunctionId], now: Millis, fx: &mut Effects) {
        let mut seen = BTreeSet::new();
        for &f in written {
            if !seen.insert(f) {
                continue;
            }
            let st = &mut self.fns[f.index()];
            if st.accepting && self.store.used(f) > self.stop_bytes {
                st.accepting = false;
                fx.stopped_writes.push(f);
            }
            self.touch(f, now);
        }
        self.ensure_writable(now, fx);
    }

    /// Grows the current bucket if some chunk position `i mod (d+p)` has no function left that
    /// takes writes.
    fn ensure_writable(&mut self, now: Millis, fx: &mut Effects) {
        let s = self.cpp() as usize;
        let Some(b) = self.buckets.back() else {
            return;
        };
        if b.functions.is_empty() {
            return;
        }
        let full_class = (0..s).any(|i| {
            !b.functions
                .iter()
                .skip(i)
                .step_by(s)
                .any(|&f| self.can_take(f, 0, 0) && self.store.used(f) < self.capacity)
        });
        if full_class {
            self.grow_current(now, fx);
        }
    }

    fn remove_object(&mut self, slot: Slot) -> Obj {
        let tag = self.store.obj(slot).tag;
        if let Some(b) = self.bucket_mut(tag) {
            b.objects.remove(&slot);
        }
        self.store.remove(slot)
    }

    fn layout_of(&self, obj: &Obj) -> ChunkLayout {
        ChunkLayout {
            chunk_size: obj.chunk_size,
            chunks_per_piece: obj.chunks_per_piece,
            data_chunks: obj.data_chunks,
            functions: obj.chunks.iter().flatten().copied().collect(),
        }
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
        } else if chunk > self.capacity {
            Placement::Bypass(BypassReason::TooLarge)
        } else {
            match self.place(chunk, pieces, now, &mut fx) {
                Err(reason) => Placement::Bypass(reason),
                Ok(fs) => {
                    let cur = self.current_id();
                    let obj = Obj {
                        key: key.into(),
                        chunk_size: chunk,
                        chunks_per_piece: self.cpp(),
                        data_chunks: d,
                        chunks: fs.iter().copied().map(Some).collect(),
                        tag: cur,
                    };
                    let layout = self.layout_of(&obj);
                    let slot = self.store.insert(obj);
                    self.buckets
                        .back_mut()
                        .expect("current")
                        .objects
                        .insert(slot);
                    self.after_writes(&fs, now, &mut fx);
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
        let (chunk, pieces, tag) = {
            let obj = self.store.obj(slot);
            (
                obj.chunk_size,
                obj.chunks.len() as u32 / self.cpp(),
                obj.tag,
            )
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
        // Choose the new places first: growing the bucket may expire the oldest degraded
        // bucket early (pool exhausted), and with it this very object.
        let target = if promote {
            self.place(chunk, pieces, now, &mut fx).ok()
        } else {
            None
        };
        if self.store.slot(key) != Some(slot) {
            return miss(fx);
        }
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
            for (i, (&from, &to)) in old.iter().zip(&to).enumerate() {
                relocation.push(ChunkMove {
                    index: i as u32,
                    from,
                    to,
                    size: chunk,
                });
                self.store.move_chunk(slot, i as u32, to);
            }
            if let Some(b) = self.bucket_mut(tag) {
                b.objects.remove(&slot);
            }
            self.buckets
                .back_mut()
                .expect("current")
                .objects
                .insert(slot);
            self.store.obj_mut(slot).tag = cur;
            for f in old.iter().flatten() {
                self.reschedule(*f);
            }
            self.after_writes(&to, now, &mut fx);
        }
        GetDecision {
            lookup,
            relocation,
            effects: fx,
        }
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
                self.fns[function.index()].reported = 0;
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
                self.fns[function.index()].reported = 0;
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
        let Some(st) = self.fns.get_mut(function.index()) else {
            return fx;
        };
        let Some(bucket) = st.bucket else {
            return fx;
        };
        st.reported = bytes_used;
        if st.accepting && bytes_used > self.stop_bytes {
            st.accepting = false;
            fx.stopped_writes.push(function);
            if bucket == cur {
                self.ensure_writable(now, &mut fx);
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
                    accepting_writes: self.fns[f.index()].accepting,
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
