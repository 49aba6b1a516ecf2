//! InfiniCache-style baseline (FAST'20): a fixed pool of functions, every one warmed every
//! minute, objects erasure-coded onto `d + p` distinct functions chosen at random (seeded),
//! LRU eviction of whole objects when the chosen functions are full.
//!
//! A reclaimed function restarts empty: its chunks are marked lost, an object that lost more
//! than `p` chunks of a piece is evicted, the others are repaired on their next GET by writing
//! the missing chunks (re-encoded from the decoded object) to other functions. InfiniCache's
//! peer-replica backup is not modelled (neither its cost nor its protection).

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ensure};
use crate::schedule::Schedule;
use crate::store::{ChunkTable, Obj, ObjRef};
use crate::types::*;

/// Policy name.
pub const NAME: &str = "infinicache";

/// InfiniCache's evaluation pool: 400 functions.
pub const DEFAULT_FUNCTIONS: u32 = 400;
/// Function memory, MB.
pub const DEFAULT_FUNCTION_MEMORY_MB: u32 = 1536;
/// Memory kept for the runtime, MB.
pub const DEFAULT_RESERVED_MB: u32 = 100;
/// Every function is warmed every minute...
pub const DEFAULT_WARMUP_MS: Millis = 60 * 1000;
/// ...up to 6 s early (uniform jitter).
pub const DEFAULT_JITTER_MS: Millis = 6 * 1000;

/// Configuration of [`InfiniCache`].
///
/// As a configuration file reads it (the gateway's `[policy.infinicache]`): the pool's own
/// tunables, durations as `"1m"` or milliseconds; what the deployment decides is set by
/// [`InfiniCacheConfig::deployed`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfiniCacheConfig {
    /// Functions in the fixed pool, ids `0..functions`.
    #[serde(skip_deserializing)]
    pub functions: u32,
    /// Memory of each function, MB.
    #[serde(skip_deserializing)]
    pub function_memory_mb: u32,
    /// Memory reserved for the runtime, MB.
    pub reserved_mb: u32,
    /// `d`.
    #[serde(skip_deserializing)]
    pub data_chunks: u32,
    /// `p`.
    #[serde(skip_deserializing)]
    pub parity_chunks: u32,
    /// Warm-up interval (a function invoked for a request is not warmed again before it;
    /// `warmup` in a configuration file).
    #[serde(
        rename(deserialize = "warmup"),
        deserialize_with = "crate::types::millis"
    )]
    pub warmup_ms: Millis,
    /// Warm-ups come up to this much early.
    #[serde(skip_deserializing)]
    pub jitter_ms: Millis,
    /// Smaller objects bypass function memory.
    #[serde(skip_deserializing)]
    pub min_object_bytes: u64,
    /// Seed of the RNG (placement, jitter).
    pub seed: u64,
}

impl Default for InfiniCacheConfig {
    fn default() -> Self {
        InfiniCacheConfig {
            functions: DEFAULT_FUNCTIONS,
            function_memory_mb: DEFAULT_FUNCTION_MEMORY_MB,
            reserved_mb: DEFAULT_RESERVED_MB,
            data_chunks: crate::window::DEFAULT_DATA_CHUNKS,
            parity_chunks: crate::window::DEFAULT_PARITY_CHUNKS,
            warmup_ms: DEFAULT_WARMUP_MS,
            jitter_ms: DEFAULT_JITTER_MS,
            min_object_bytes: crate::window::DEFAULT_MIN_OBJECT_BYTES,
            seed: 0,
        }
    }
}

impl InfiniCacheConfig {
    /// This configuration on `deployment`: its pool, function memory, code and smallest
    /// object; warm-ups jittered by up to a tenth of their interval.
    pub fn deployed(mut self, deployment: &crate::Deployment) -> Self {
        self.functions = deployment.functions;
        self.function_memory_mb = deployment.function_memory_mb;
        self.data_chunks = deployment.data_chunks;
        self.parity_chunks = deployment.parity_chunks;
        self.min_object_bytes = deployment.min_object_bytes;
        self.jitter_ms = self.warmup_ms / 10;
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
        ensure(self.functions >= cpp, n, "functions", || {
            format!("must be >= d + p ({cpp})")
        })?;
        ensure(
            self.reserved_mb < self.function_memory_mb,
            n,
            "reserved_mb",
            || "must be below function_memory_mb".into(),
        )?;
        ensure(self.warmup_ms > 0, n, "warmup_ms", || "must be > 0".into())?;
        ensure(self.jitter_ms < self.warmup_ms, n, "jitter_ms", || {
            "must be below warmup_ms".into()
        })?;
        Ok(())
    }
}

/// The InfiniCache-style pool. See the module docs.
#[derive(Clone, Debug)]
pub struct InfiniCache {
    cfg: InfiniCacheConfig,
    rng: ChaCha8Rng,
    store: ChunkTable,
    lru: BTreeMap<u64, ObjRef>,
    stamp: u64,
    schedule: Schedule,
    started: bool,
    last_now: Millis,
    capacity: u64,
}

impl InfiniCache {
    /// Validates `cfg` and builds the pool (warmed from the first event on).
    pub fn new(cfg: InfiniCacheConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(InfiniCache {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            store: ChunkTable::new(cfg.functions),
            lru: BTreeMap::new(),
            stamp: 0,
            schedule: Schedule::new(cfg.functions),
            started: false,
            last_now: 0,
            capacity: cfg.capacity_bytes(),
            cfg,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &InfiniCacheConfig {
        &self.cfg
    }

    fn cpp(&self) -> u32 {
        self.cfg.data_chunks + self.cfg.parity_chunks
    }

    fn clock(&mut self, now: Millis) -> Millis {
        let now = now.max(self.last_now);
        self.last_now = now;
        if !self.started {
            self.started = true;
            // The whole pool is deployed and warmed at once.
            for f in 0..self.cfg.functions {
                self.schedule.set(FunctionId(f), now);
            }
        }
        now
    }

    fn touch(&mut self, f: FunctionId, now: Millis) {
        let early = if self.cfg.jitter_ms > 0 {
            self.rng.random_range(0..=self.cfg.jitter_ms)
        } else {
            0
        };
        self.schedule.set(f, now + self.cfg.warmup_ms - early);
    }

    fn bump(&mut self, slot: ObjRef) {
        let old = self.store.obj(slot).tag;
        self.lru.remove(&old);
        self.stamp += 1;
        self.lru.insert(self.stamp, slot);
        self.store.obj_mut(slot).tag = self.stamp;
    }

    fn remove_object(&mut self, slot: ObjRef) -> Obj {
        self.lru.remove(&self.store.obj(slot).tag);
        self.store.remove(slot)
    }

    /// Picks `n` distinct functions with room for `chunk` bytes, at random, not in `exclude`.
    fn pick(
        &mut self,
        n: usize,
        chunk: u64,
        pending: &BTreeMap<u32, u64>,
        exclude: &BTreeSet<FunctionId>,
    ) -> Option<Vec<FunctionId>> {
        let mut cands: Vec<FunctionId> = (0..self.cfg.functions)
            .map(FunctionId)
            .filter(|f| {
                !exclude.contains(f)
                    && self.store.used(*f) + pending.get(&f.0).copied().unwrap_or(0) + chunk
                        <= self.capacity
            })
            .collect();
        if cands.len() < n {
            return None;
        }
        // Partial Fisher-Yates: the first n are a uniform sample.
        for i in 0..n {
            let j = self.rng.random_range(i..cands.len());
            cands.swap(i, j);
        }
        cands.truncate(n);
        Some(cands)
    }
}

impl Policy for InfiniCache {
    fn name(&self) -> &'static str {
        NAME
    }

    fn put(&mut self, now: Millis, key: &str, size: u64, pieces: u32) -> PutDecision {
        let now = self.clock(now);
        let mut fx = Effects::default();
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
        let cpp = self.cpp() as usize;
        let pieces = pieces.max(1);
        let chunk = size.div_ceil(u64::from(pieces) * u64::from(d));
        if size < self.cfg.min_object_bytes {
            return PutDecision {
                placement: Placement::Bypass(BypassReason::TooSmall),
                stale,
                effects: fx,
            };
        }
        let total = chunk * u64::from(pieces) * cpp as u64;
        if chunk > self.capacity || total > self.capacity * u64::from(self.cfg.functions) {
            return PutDecision {
                placement: Placement::Bypass(BypassReason::TooLarge),
                stale,
                effects: fx,
            };
        }
        let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
        let mut out: Vec<FunctionId> = Vec::with_capacity(pieces as usize * cpp);
        let none = BTreeSet::new();
        while out.len() < pieces as usize * cpp {
            match self.pick(cpp, chunk, &pending, &none) {
                Some(fs) => {
                    for f in &fs {
                        *pending.entry(f.0).or_default() += chunk;
                    }
                    out.extend(fs);
                }
                None => {
                    // Evict the least recently used object and retry.
                    let Some((_, slot)) = self.lru.pop_first() else {
                        return PutDecision {
                            placement: Placement::Bypass(BypassReason::TooLarge),
                            stale,
                            effects: fx,
                        };
                    };
                    let obj = self.store.remove(slot);
                    fx.evicted.push(obj.key.into());
                }
            }
        }
        let obj = Obj {
            key: key.into(),
            chunk_size: chunk,
            chunks_per_piece: cpp as u32,
            data_chunks: d,
            chunks: out.iter().copied().map(Some).collect(),
            tag: 0,
        };
        let slot = self.store.insert(obj);
        self.bump(slot);
        for &f in &out {
            self.touch(f, now);
        }
        PutDecision {
            placement: Placement::Functions(ChunkLayout {
                chunk_size: chunk,
                chunks_per_piece: cpp as u32,
                data_chunks: d,
                functions: out,
            }),
            stale,
            effects: fx,
        }
    }

    fn get(&mut self, now: Millis, key: &str) -> GetDecision {
        let now = self.clock(now);
        let mut fx = Effects::default();
        let Some(slot) = self.store.slot(key) else {
            return GetDecision {
                lookup: Lookup::Miss,
                relocation: Vec::new(),
                effects: fx,
            };
        };
        if !self.store.obj(slot).decodable() {
            let obj = self.remove_object(slot);
            fx.evicted.push(obj.key.into());
            return GetDecision {
                lookup: Lookup::Miss,
                relocation: Vec::new(),
                effects: fx,
            };
        }
        self.bump(slot);
        let obj = self.store.obj(slot);
        let chunks = obj.chunks.clone();
        let chunk = obj.chunk_size;
        let lookup = Lookup::Functions {
            chunk_size: chunk,
            chunks_per_piece: obj.chunks_per_piece,
            data_chunks: obj.data_chunks,
            chunks: chunks.clone(),
        };
        for f in chunks.iter().flatten() {
            self.touch(*f, now);
        }
        // Repair lost chunks: write them to functions not holding another chunk of the piece.
        let cpp = self.cpp() as usize;
        let mut relocation = Vec::new();
        // Chunks chosen for earlier pieces count against their functions' room: nothing moves
        // until the gateway reports the repair done.
        let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
        for (p, piece) in chunks.chunks(cpp).enumerate() {
            if piece.iter().all(|c| c.is_some()) {
                continue;
            }
            let holders: BTreeSet<FunctionId> = piece.iter().flatten().copied().collect();
            let lost: Vec<usize> = (0..cpp).filter(|&i| piece[i].is_none()).collect();
            if let Some(to) = self.pick(lost.len(), chunk, &pending, &holders) {
                for (&i, to) in lost.iter().zip(to) {
                    let index = (p * cpp + i) as u32;
                    *pending.entry(to.0).or_default() += chunk;
                    relocation.push(ChunkMove {
                        index,
                        from: None,
                        to,
                        size: chunk,
                    });
                }
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
        let Some(slot) = self.store.slot(key) else {
            return Effects::default();
        };
        let current = &self.store.obj(slot).chunks;
        let still = moves
            .iter()
            .all(|m| current.get(m.index as usize) == Some(&m.from));
        if ok && still {
            for m in moves {
                self.store.move_chunk(slot, m.index, m.to);
                self.touch(m.to, now);
            }
        }
        Effects::default()
    }

    fn delete(&mut self, now: Millis, key: &str) -> DeleteDecision {
        self.clock(now);
        match self.store.slot(key) {
            None => DeleteDecision {
                chunks: Vec::new(),
                was_cached: false,
                effects: Effects::default(),
            },
            Some(slot) => DeleteDecision {
                chunks: self
                    .remove_object(slot)
                    .chunks
                    .into_iter()
                    .flatten()
                    .collect(),
                was_cached: true,
                effects: Effects::default(),
            },
        }
    }

    fn tick(&mut self, now: Millis) -> Effects {
        let now = self.clock(now);
        let mut fx = Effects::default();
        while let Some((due, f)) = self.schedule.pop_due(now) {
            fx.warmups.push(Warmup { function: f, due });
            self.touch(f, now);
        }
        fx
    }

    fn function_lost(&mut self, now: Millis, function: FunctionId) -> LossDecision {
        let now = self.clock(now);
        let mut fx = Effects::default();
        if function.0 >= self.cfg.functions {
            return LossDecision {
                action: LossAction::Nothing,
                effects: fx,
            };
        }
        let lost = self.store.chunk_count(function) as u32;
        for slot in self.store.lose_function(function) {
            if !self.store.obj(slot).decodable() {
                let obj = self.remove_object(slot);
                fx.evicted.push(obj.key.into());
            }
        }
        self.touch(function, now);
        LossDecision {
            action: LossAction::RepairOnRead { chunks_lost: lost },
            effects: fx,
        }
    }

    fn occupancy(&mut self, now: Millis, _function: FunctionId, _bytes_used: u64) -> Effects {
        // A fixed pool has nowhere to grow: placement already checks capacity.
        self.clock(now);
        Effects::default()
    }

    fn next_wakeup(&self) -> Option<Millis> {
        self.schedule.first()
    }

    fn contains(&self, key: &str) -> bool {
        self.store
            .slot(key)
            .is_some_and(|s| self.store.obj(s).decodable())
    }

    fn stats(&self) -> Stats {
        Stats {
            functions_held: self.cfg.functions,
            active_functions: self.cfg.functions,
            degraded_functions: 0,
            memory_bytes: u64::from(self.cfg.functions)
                * u64::from(self.cfg.function_memory_mb)
                * MIB,
            stored_bytes: self.store.stored_bytes(),
            objects: self.store.len(),
            active_buckets: 0,
            degraded_buckets: 0,
            expired_buckets: 0,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let functions = (0..self.cfg.functions)
            .map(FunctionId)
            .map(|f| {
                let used = self.store.used(f);
                FunctionSnapshot {
                    id: f,
                    bucket: None,
                    used_bytes: used,
                    capacity_bytes: self.capacity,
                    occupancy: used as f64 / self.capacity as f64,
                    chunks: self.store.chunk_count(f),
                    accepting_writes: true,
                }
            })
            .collect();
        Snapshot {
            policy: NAME,
            buckets: Vec::new(),
            functions,
            stats: self.stats(),
        }
    }
}
