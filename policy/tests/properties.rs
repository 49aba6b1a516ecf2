//! Property tests of the policies' invariants over random event sequences:
//!
//! - the chunks of one piece are on distinct functions (placements, lookups, relocations);
//! - no function holds more than its capacity;
//! - every acknowledged object is in memory or in S3: the model gateway writes every
//!   acknowledged PUT through to S3, so a GET of an acknowledged key either hits with at least
//!   `d` chunks of every piece on held functions or misses (and S3 has it); the policy never
//!   claims an object that was not acknowledged or was deleted;
//! - expired functions are never warmed (until a bucket draws them again), and every warm-up
//!   targets a held function;
//! - every function is in at most one bucket or in the pool: functions drawn for a bucket were
//!   not held before, inherited ones move from the bucket they were in to the current one;
//! - with a pool of exactly one scale step (the gateway's default shape, issue 15), after any
//!   sequence of rotations, writes, reads, deletes and losses, a new object that fits in the
//!   pool's empty functions is admitted into memory.

use std::collections::{BTreeMap, BTreeSet};

use policy::*;
use proptest::prelude::*;

const MIN: u64 = 60_000;
/// The window's pool in most tests: five steps.
const WINDOW_POOL: u32 = 15;
/// One step: d + p = 3.
const ONE_STEP: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        kib: u64,
        pieces: u32,
    },
    /// A GET; whether the gateway manages the relocation it asks for.
    Get(u8, bool),
    Delete(u8),
    Advance(u64),
    Lost(u32),
    Occupancy(u32, u64),
}

fn ops(pool: u32) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0u8..10, 0u64..24 * 1024, 1u32..4)
            .prop_map(|(key, kib, pieces)| Op::Put { key, kib, pieces }),
        4 => (0u8..10, proptest::bool::weighted(0.8)).prop_map(|(k, ok)| Op::Get(k, ok)),
        1 => (0u8..10).prop_map(Op::Delete),
        3 => (0u64..8 * MIN).prop_map(Op::Advance),
        1 => (0..pool + 2).prop_map(Op::Lost),
        1 => (0..pool + 2, 0u64..12).prop_map(|(f, mib)| Op::Occupancy(f, mib)),
    ];
    prop::collection::vec(op, 1..80)
}

fn window_cfg(seed: u64) -> WindowConfig {
    WindowConfig {
        pool_size: WINDOW_POOL,
        function_memory_mb: 12,
        reserved_mb: 2,
        data_chunks: 2,
        parity_chunks: 1,
        bucket_ms: 10 * MIN,
        active_buckets: 2,
        window_buckets: 4,
        active_warmup_ms: MIN,
        active_jitter_ms: 5_000,
        degraded_warmup_ms: 5 * MIN,
        degraded_jitter_ms: 20_000,
        promote_always_age: 2,
        promote_maybe_age: 1,
        promote_probability: 0.5,
        stop_writes_occupancy: 0.9,
        scale_step: 3,
        min_object_bytes: 0,
        seed,
    }
}

fn pool_cfg(seed: u64) -> InfiniCacheConfig {
    InfiniCacheConfig {
        functions: 6,
        function_memory_mb: 12,
        reserved_mb: 2,
        data_chunks: 2,
        parity_chunks: 1,
        warmup_ms: MIN,
        jitter_ms: 5_000,
        min_object_bytes: 0,
        seed,
    }
}

fn provisioned_cfg() -> ProvisionedConfig {
    ProvisionedConfig {
        node: NodeType {
            name: "test".into(),
            memory_gib: 40.0 / 1024.0,
            hourly_usd: 1.0,
        },
        nodes: 1,
        usable_fraction: 1.0,
        min_object_bytes: 0,
    }
}

struct Harness {
    p: Box<dyn Policy>,
    now: u64,
    /// The S3 model: every acknowledged PUT, minus deletes.
    s3: BTreeMap<String, u64>,
    /// Functions returned to the pool and not drawn again since.
    expired: BTreeSet<FunctionId>,
    /// Functions held before the event being applied.
    before: BTreeSet<FunctionId>,
    /// Sliding window with this pool: every PUT that fits it must be admitted, and occupancy
    /// reports tell the truth (the policy's own accounting), as the gateway's functions do.
    admit_all_that_fits: Option<u32>,
}

/// Whether `pieces` pieces of an object of `size` bytes fit in `pool` empty functions of
/// `window_cfg` (d = 2, p = 1, 10 MiB, writes stop above 9 MiB): `pieces` chunks on each of
/// `floor(pool / 3)` functions per chunk position.
fn fits_window(size: u64, pieces: u32, pool: u32) -> bool {
    let chunk = size.div_ceil(u64::from(pieces) * 2);
    if chunk == 0 {
        return true;
    }
    let per_fn = (10 * MIB / chunk).min(9 * MIB / chunk + 1);
    u64::from(pieces) <= u64::from(pool / 3) * per_fn
}

fn distinct_per_piece(chunks: &[Option<FunctionId>], cpp: usize) -> Result<(), TestCaseError> {
    for piece in chunks.chunks(cpp) {
        let fs: Vec<FunctionId> = piece.iter().flatten().copied().collect();
        let set: BTreeSet<FunctionId> = fs.iter().copied().collect();
        prop_assert_eq!(
            set.len(),
            fs.len(),
            "chunks of a piece share a function: {:?}",
            piece
        );
    }
    Ok(())
}

impl Harness {
    fn new(p: Box<dyn Policy>) -> Self {
        Harness {
            p,
            now: 0,
            s3: BTreeMap::new(),
            expired: BTreeSet::new(),
            before: BTreeSet::new(),
            admit_all_that_fits: None,
        }
    }

    /// A PUT (or re-fill) decision: admitted if it must be.
    fn check_admitted(
        &self,
        key: &str,
        size: u64,
        pieces: u32,
        placement: &Placement,
    ) -> Result<(), TestCaseError> {
        if let Some(pool) = self.admit_all_that_fits {
            if fits_window(size, pieces, pool) {
                prop_assert!(
                    matches!(placement, Placement::Functions(_)),
                    "{} ({} bytes, {} pieces) fits but was not admitted: {:?}\n{}",
                    key,
                    size,
                    pieces,
                    placement,
                    self.p.snapshot().describe()
                );
            } else {
                prop_assert_eq!(placement, &Placement::Bypass(BypassReason::TooLarge));
            }
        }
        Ok(())
    }

    fn held(&self) -> BTreeSet<FunctionId> {
        self.p.snapshot().functions.iter().map(|f| f.id).collect()
    }

    fn effects(&mut self, fx: &Effects) -> Result<(), TestCaseError> {
        self.expired.extend(fx.returned.iter().copied());
        let returned: BTreeSet<FunctionId> = fx.returned.iter().copied().collect();
        for g in fx.opened.iter().chain(&fx.scaled_out) {
            for f in &g.functions {
                self.expired.remove(f);
                // Drawn from the pool: not held before the event, unless its bucket expired
                // (early) during it.
                prop_assert!(
                    !self.before.contains(f) || returned.contains(f),
                    "{} drawn while held",
                    f
                );
            }
        }
        let snap = self.p.snapshot();
        for i in &fx.inherited {
            prop_assert!(!i.functions.is_empty());
            for f in &i.functions {
                prop_assert!(self.before.contains(f), "inherited {} was not held", f);
                let now_in = snap
                    .functions
                    .iter()
                    .find(|s| s.id == *f)
                    .and_then(|s| s.bucket);
                // It serves the new bucket (or, later in the same event, a newer one, or
                // went back to the pool with it).
                prop_assert!(
                    now_in.is_none_or(|b| b >= i.to) && i.to > i.from,
                    "inherited {} is in {:?}, not in {} or later",
                    f,
                    now_in,
                    i.to
                );
            }
        }
        let held = self.held();
        for w in &fx.warmups {
            prop_assert!(
                !self.expired.contains(&w.function),
                "expired {} warmed",
                w.function
            );
            prop_assert!(
                held.contains(&w.function),
                "warm-up of unheld {}",
                w.function
            );
            prop_assert!(w.due <= self.now);
        }
        Ok(())
    }

    fn state(&self) -> Result<(), TestCaseError> {
        let snap = self.p.snapshot();
        // Every function in at most one bucket, and listed with that bucket.
        let mut seen = BTreeSet::new();
        for b in &snap.buckets {
            for f in &b.functions {
                prop_assert!(seen.insert(*f), "{} in two buckets", f);
                let fs = snap.functions.iter().find(|s| s.id == *f);
                prop_assert_eq!(fs.and_then(|s| s.bucket), Some(b.id));
            }
        }
        if !snap.buckets.is_empty() {
            prop_assert_eq!(seen.len(), snap.functions.len());
            prop_assert_eq!(seen.len() as u32, snap.stats.functions_held);
        }
        if let Some(pool) = self.admit_all_that_fits {
            prop_assert!(snap.stats.functions_held <= pool);
        }
        let mut sum = 0;
        for f in &snap.functions {
            prop_assert!(
                f.used_bytes <= f.capacity_bytes,
                "{} over capacity: {} > {}",
                f.id,
                f.used_bytes,
                f.capacity_bytes
            );
            sum += f.used_bytes;
        }
        if !snap.functions.is_empty() {
            prop_assert_eq!(sum, snap.stats.stored_bytes);
        }
        for k in 0..10u8 {
            let key = format!("k{k}");
            if self.p.contains(&key) {
                prop_assert!(self.s3.contains_key(&key), "phantom object {}", key);
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.before = self.held();
        match *op {
            Op::Put { key, kib, pieces } => {
                let key = format!("k{key}");
                let size = kib * 1024;
                // Write-through: S3 has it before the PUT is acknowledged.
                self.s3.insert(key.clone(), size);
                let dec = self.p.put(self.now, &key, size, pieces);
                self.effects(&dec.effects)?;
                self.check_admitted(&key, size, pieces, &dec.placement)?;
                if let Placement::Functions(l) = &dec.placement {
                    let chunks: Vec<Option<FunctionId>> =
                        l.functions.iter().copied().map(Some).collect();
                    prop_assert_eq!(chunks.len(), (pieces * l.chunks_per_piece) as usize);
                    distinct_per_piece(&chunks, l.chunks_per_piece as usize)?;
                    let held = self.held();
                    prop_assert!(l.functions.iter().all(|f| held.contains(f)));
                    prop_assert!(self.p.contains(&key));
                }
            }
            Op::Get(key, ok) => {
                let key = format!("k{key}");
                let dec = self.p.get(self.now, &key);
                self.effects(&dec.effects)?;
                // The relocation counts only once reported done; a failed one changes nothing.
                if !dec.relocation.is_empty() {
                    let chunks_at = |p: &dyn Policy| -> Vec<(FunctionId, u64)> {
                        p.snapshot()
                            .functions
                            .iter()
                            .map(|f| (f.id, f.chunks))
                            .collect()
                    };
                    let before = chunks_at(self.p.as_ref());
                    let fx = self.p.relocated(self.now, &key, &dec.relocation, ok);
                    self.effects(&fx)?;
                    if !ok {
                        prop_assert_eq!(
                            before,
                            chunks_at(self.p.as_ref()),
                            "a failed relocation moved chunks"
                        );
                    }
                }
                match &dec.lookup {
                    Lookup::Functions {
                        chunks,
                        chunks_per_piece,
                        data_chunks,
                        ..
                    } => {
                        prop_assert!(self.s3.contains_key(&key), "hit for unacknowledged {}", key);
                        distinct_per_piece(chunks, *chunks_per_piece as usize)?;
                        for piece in chunks.chunks(*chunks_per_piece as usize) {
                            prop_assert!(
                                piece.iter().flatten().count() >= *data_chunks as usize,
                                "hit without d chunks"
                            );
                        }
                        // After the relocation, the object's new layout is still distinct.
                        let mut after = chunks.clone();
                        for m in &dec.relocation {
                            after[m.index as usize] = Some(m.to);
                        }
                        distinct_per_piece(&after, *chunks_per_piece as usize)?;
                    }
                    Lookup::Node => prop_assert!(self.s3.contains_key(&key)),
                    Lookup::Miss => {
                        // Served from S3 if acknowledged; then re-filled, as the gateway does.
                        if let Some(&size) = self.s3.get(&key) {
                            self.before = self.held();
                            let dec = self.p.put(self.now, &key, size, 1);
                            self.effects(&dec.effects)?;
                            self.check_admitted(&key, size, 1, &dec.placement)?;
                        }
                    }
                }
            }
            Op::Delete(key) => {
                let key = format!("k{key}");
                self.s3.remove(&key);
                let dec = self.p.delete(self.now, &key);
                self.effects(&dec.effects)?;
                prop_assert!(!self.p.contains(&key));
            }
            Op::Advance(ms) => {
                let end = self.now + ms;
                // Tick at every wake-up on the way, as the gateway's timer would.
                while let Some(w) = self.p.next_wakeup().filter(|&w| w <= end) {
                    self.now = w.max(self.now);
                    self.before = self.held();
                    let fx = self.p.tick(self.now);
                    self.effects(&fx)?;
                }
                self.now = end;
                self.before = self.held();
                let fx = self.p.tick(self.now);
                self.effects(&fx)?;
            }
            Op::Lost(f) => {
                let dec = self.p.function_lost(self.now, FunctionId(f));
                self.effects(&dec.effects)?;
            }
            Op::Occupancy(f, mib) => {
                let used = if self.admit_all_that_fits.is_some() {
                    // The truth: what the policy placed there.
                    let snap = self.p.snapshot();
                    let held = snap.functions.iter().find(|s| s.id.0 == f);
                    held.map_or(0, |s| s.used_bytes)
                } else {
                    mib * MIB
                };
                let fx = self.p.occupancy(self.now, FunctionId(f), used);
                self.effects(&fx)?;
            }
        }
        self.state()
    }
}

fn run(p: Box<dyn Policy>, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(p);
    for op in ops {
        h.apply(op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn sliding_window_invariants(seed in 0u64..1000, ops in ops(WINDOW_POOL)) {
        run(Box::new(SlidingWindow::new(window_cfg(seed)).unwrap()), &ops)?;
    }

    /// The same with a pool of one step (d + p = scale step = pool, the gateway's default
    /// shape), arbitrary occupancy reports included.
    #[test]
    fn sliding_window_invariants_with_a_pool_of_one_step(seed in 0u64..1000, ops in ops(ONE_STEP)) {
        let cfg = WindowConfig { pool_size: ONE_STEP, ..window_cfg(seed) };
        run(Box::new(SlidingWindow::new(cfg).unwrap()), &ops)?;
    }

    /// With a pool of one step (and, where first-fit packing is harder, a pool that is not a
    /// multiple of d + p, or two steps), after any sequence of rotations, writes, reads,
    /// deletes, losses and (truthful) occupancy reports, every new object that fits in the
    /// pool's empty functions is admitted, evicting the oldest data if needed.
    #[test]
    fn a_pool_of_one_step_admits_every_object_that_fits(
        seed in 0u64..1000,
        pool in prop::sample::select(vec![ONE_STEP, ONE_STEP, ONE_STEP + 1, 2 * ONE_STEP]),
        ops in ops(ONE_STEP),
    ) {
        let cfg = WindowConfig { pool_size: pool, ..window_cfg(seed) };
        let mut h = Harness::new(Box::new(SlidingWindow::new(cfg).unwrap()));
        h.admit_all_that_fits = Some(pool);
        for op in &ops {
            h.apply(op)?;
        }
    }

    #[test]
    fn infinicache_invariants(seed in 0u64..1000, ops in ops(6)) {
        run(Box::new(InfiniCache::new(pool_cfg(seed)).unwrap()), &ops)?;
    }

    #[test]
    fn provisioned_invariants(ops in ops(0)) {
        run(Box::new(Provisioned::new(provisioned_cfg()).unwrap()), &ops)?;
        let p = Provisioned::new(provisioned_cfg()).unwrap();
        prop_assert!(p.stats().stored_bytes == 0);
    }

    /// Relocations land in the current (newest) bucket, and the window never holds more
    /// functions than the pool.
    #[test]
    fn promotions_go_to_the_current_bucket(seed in 0u64..1000, ops in ops(WINDOW_POOL)) {
        let mut w = SlidingWindow::new(window_cfg(seed)).unwrap();
        let mut now = 0;
        for op in &ops {
            match *op {
                Op::Put { key, kib, pieces } => { w.put(now, &format!("k{key}"), kib * 1024, pieces); }
                Op::Advance(ms) => { now += ms; w.tick(now); }
                Op::Get(key, _) => {
                    let dec = w.get(now, &format!("k{key}"));
                    w.relocated(now, &format!("k{key}"), &dec.relocation, true);
                    let snap = w.snapshot();
                    let current: BTreeSet<FunctionId> =
                        snap.buckets.last().map(|b| b.functions.iter().copied().collect()).unwrap_or_default();
                    for m in &dec.relocation {
                        prop_assert!(current.contains(&m.to));
                    }
                }
                _ => {}
            }
            prop_assert!(w.stats().functions_held <= WINDOW_POOL);
        }
    }
}
