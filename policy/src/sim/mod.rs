//! Trace-driven simulation: replays a [`Trace`] against one policy and prices the result.
//!
//! Pure like the policies: no I/O (progress is reported through a callback), seeded failure
//! injection, integer usage counters. The simulated gateway:
//!
//! - writes every new object to S3 (one PUT, or a multipart upload above
//!   [`SimConfig::s3_part_bytes`]) and then to the memory tier as the policy places it;
//! - on a GET asks every available chunk (`d + p` chunk requests, decoded with the first `d`),
//!   then carries out the relocation; a miss reads S3 (ranged GETs of `s3_part_bytes`) and
//!   re-fills through `put`;
//! - sends every warm-up the policy asks for;
//! - lets the provider reclaim each function that holds data at
//!   [`SimConfig::reclaim_per_function_hour`] (a Poisson process checked every minute) and
//!   carries out the loss decision (recovery reads the lost chunks back from S3).
//!
//! Hit ratios are over GETs (re-accesses); first accesses are PUTs, as the replayer counts them.

pub mod lambda;
pub mod report;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cost::{CostBreakdown, Prices, Usage};
use crate::error::{ConfigError, ensure};
use crate::trace::Trace;
use crate::trace::working_set::peak_working_set;
use crate::types::*;
use crate::{InfiniCacheConfig, PolicyConfig, ProvisionedConfig, WindowConfig, pieces_for};
pub use lambda::{FunctionModel, LambdaMeter};

/// Simulator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of the failure injection (the policies have their own seeds).
    pub seed: u64,
    /// Unit prices.
    pub prices: Prices,
    /// How long function work takes.
    pub function: FunctionModel,
    /// Rate at which the provider reclaims a function that holds data, per function-hour.
    /// Default 0.1: a mean instance lifetime of 10 h. Ours, an assumption: measurements of AWS
    /// Lambda (e.g. Wang et al., USENIX ATC'18) found instances recycled after some hours even
    /// when kept warm; InfiniCache's backup exists because of such reclaims.
    pub reclaim_per_function_hour: f64,
    /// How often reclaims are drawn.
    pub reclaim_check_ms: Millis,
    /// Largest chunk: objects are cut into pieces of at most `d x max_chunk_bytes`.
    pub max_chunk_bytes: u64,
    /// S3 multipart part size (and ranged-GET size) for large objects.
    pub s3_part_bytes: u64,
    /// Timeline resolution (plots).
    pub sample_ms: Millis,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            prices: Prices::default(),
            function: FunctionModel::default(),
            reclaim_per_function_hour: 0.1,
            reclaim_check_ms: 60_000,
            max_chunk_bytes: crate::DEFAULT_MAX_CHUNK_BYTES,
            s3_part_bytes: 64 * MIB,
            sample_ms: 10 * 60_000,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let n = "sim";
        ensure(
            self.reclaim_per_function_hour >= 0.0,
            n,
            "reclaim_per_function_hour",
            || "must be >= 0".into(),
        )?;
        ensure(self.reclaim_check_ms > 0, n, "reclaim_check_ms", || {
            "must be > 0".into()
        })?;
        ensure(self.max_chunk_bytes > 0, n, "max_chunk_bytes", || {
            "must be > 0".into()
        })?;
        ensure(self.s3_part_bytes >= 5 * MIB, n, "s3_part_bytes", || {
            "must be >= 5 MiB (S3's minimum part size)".into()
        })?;
        ensure(self.sample_ms > 0, n, "sample_ms", || "must be > 0".into())?;
        ensure(
            self.function.bytes_per_sec > 0,
            n,
            "function.bytes_per_sec",
            || "must be > 0".into(),
        )?;
        Ok(())
    }

    /// S3 PUT-class requests to store an object of `size` bytes.
    pub fn s3_put_requests(&self, size: u64) -> u64 {
        if size <= self.s3_part_bytes {
            1
        } else {
            // CreateMultipartUpload + parts + CompleteMultipartUpload.
            size.div_ceil(self.s3_part_bytes) + 2
        }
    }

    /// S3 GET requests to read an object of `size` bytes.
    pub fn s3_get_requests(&self, size: u64) -> u64 {
        size.div_ceil(self.s3_part_bytes).max(1)
    }
}

/// One point of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Time, ms since the trace start.
    pub t_ms: Millis,
    /// Cost so far, USD.
    pub cost_usd: f64,
    /// Functions held.
    pub functions: u32,
    /// Of which in active buckets.
    pub active_functions: u32,
    /// Of which in degraded buckets.
    pub degraded_functions: u32,
    /// Bytes stored in memory.
    pub stored_bytes: u64,
    /// Memory provisioned, bytes.
    pub memory_bytes: u64,
}

/// The outcome of one policy on one trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// Policy name.
    pub policy: String,
    /// Total cost, USD.
    pub cost_usd: f64,
    /// Cost of the memory tier alone (Lambda or nodes; no S3), USD.
    pub cache_tier_usd: f64,
    /// GET hits / GETs.
    pub hit_ratio: f64,
    /// Bytes of GET hits / bytes of GETs.
    pub byte_hit_ratio: f64,
    /// Cost by part.
    pub cost: CostBreakdown,
    /// Raw usage.
    pub usage: Usage,
    /// First accesses (PUTs).
    pub puts: u64,
    /// Re-accesses (GETs).
    pub gets: u64,
    /// GETs served from memory.
    pub hits: u64,
    /// Bytes requested by GETs.
    pub get_bytes: u64,
    /// Bytes of GETs served from memory.
    pub hit_bytes: u64,
    /// Misses re-filled into memory.
    pub refills: u64,
    /// Placements that bypassed memory.
    pub bypassed: u64,
    /// GB-hours of memory held (functions x memory, or nodes x node memory; GB = 2^30 bytes).
    pub memory_gb_hours: f64,
    /// Lambda GB-seconds billed.
    pub lambda_gb_seconds: f64,
    /// Warm-ups the policy asked for.
    pub warmups: u64,
    /// Of which billed (the others found the function running).
    pub warmups_billed: u64,
    /// GETs followed by a relocation (promotion or repair).
    pub relocations: u64,
    /// Chunks relocated.
    pub chunks_moved: u64,
    /// Reclaims of functions holding data.
    pub functions_lost: u64,
    /// Of which recovered from S3 at once (active window).
    pub functions_recovered: u64,
    /// Objects dropped from memory because too many of their chunks were lost.
    pub objects_lost: u64,
    /// Objects evicted from memory (expiry, LRU, losses).
    pub evictions: u64,
    /// Most functions held at once.
    pub peak_functions: u32,
    /// Provisioned cluster, e.g. `11 x cache.r6g.large`.
    pub cluster: Option<String>,
    /// Timeline for plots (not serialized).
    #[serde(skip)]
    pub timeline: Vec<Sample>,
}

struct Run<'a> {
    trace: &'a Trace,
    cfg: &'a SimConfig,
    policy: Box<dyn Policy>,
    meter: LambdaMeter,
    usage: Usage,
    rng: ChaCha8Rng,
    d: u32,
    nodes: u32,
    node_hourly: f64,
    seen: Vec<bool>,
    s3_stored: u64,
    last_t: Millis,
    mem_bytes: u64,
    mem_byte_ms: u128,
    r: SimReport,
}

impl Run<'_> {
    fn advance(&mut self, t: Millis) {
        let dt = t.saturating_sub(self.last_t);
        self.usage.s3_byte_ms += u128::from(self.s3_stored) * u128::from(dt);
        self.usage.node_ms += u128::from(self.nodes) * u128::from(dt);
        self.mem_byte_ms += u128::from(self.mem_bytes) * u128::from(dt);
        self.last_t = self.last_t.max(t);
    }

    fn after_event(&mut self) {
        let s = self.policy.stats();
        self.mem_bytes = s.memory_bytes;
        self.r.peak_functions = self.r.peak_functions.max(s.functions_held);
    }

    fn effects(&mut self, t: Millis, fx: &Effects) {
        for f in &fx.returned {
            self.meter.stop(*f, t);
        }
        for w in &fx.warmups {
            self.meter.warmup(w.function, t);
            self.r.warmups += 1;
        }
        self.r.evictions += fx.evicted.len() as u64;
    }

    fn overhead(&mut self, f: FunctionId, t: Millis) {
        let w = self.cfg.function.request_overhead_ms;
        self.meter.work(f, t, w);
    }

    fn apply_put(&mut self, t: Millis, dec: PutDecision) {
        self.effects(t, &dec.effects);
        for f in dec.stale {
            self.overhead(f, t);
        }
        match dec.placement {
            Placement::Functions(layout) => {
                for f in layout.functions {
                    self.meter.serve(f, t, layout.chunk_size);
                }
            }
            Placement::Node => {}
            Placement::Bypass(_) => self.r.bypassed += 1,
        }
    }

    fn request(&mut self, t: Millis, object: u32) {
        let o = object as usize;
        let size = self.trace.sizes[o];
        let key = self.trace.keys[o].as_str();
        let pieces = pieces_for(size, self.d, self.cfg.max_chunk_bytes);
        if !self.seen[o] {
            self.seen[o] = true;
            self.r.puts += 1;
            self.usage.s3_put_requests += self.cfg.s3_put_requests(size);
            self.s3_stored += size;
            let dec = self.policy.put(t, key, size, pieces);
            self.apply_put(t, dec);
            return;
        }
        self.r.gets += 1;
        self.r.get_bytes += size;
        let dec = self.policy.get(t, key);
        self.effects(t, &dec.effects);
        match dec.lookup {
            Lookup::Functions {
                chunk_size, chunks, ..
            } => {
                self.r.hits += 1;
                self.r.hit_bytes += size;
                for f in chunks.into_iter().flatten() {
                    self.meter.serve(f, t, chunk_size);
                }
            }
            Lookup::Node => {
                self.r.hits += 1;
                self.r.hit_bytes += size;
            }
            Lookup::Miss => {
                self.usage.s3_get_requests += self.cfg.s3_get_requests(size);
                self.r.refills += 1;
                let dec = self.policy.put(t, key, size, pieces);
                self.apply_put(t, dec);
            }
        }
        if !dec.relocation.is_empty() {
            self.r.relocations += 1;
            // The simulated functions always take the moved chunks.
            let fx = self.policy.relocated(t, key, &dec.relocation, true);
            self.effects(t, &fx);
        }
        for mv in dec.relocation {
            self.r.chunks_moved += 1;
            self.meter.serve(mv.to, t, mv.size);
            if let Some(from) = mv.from {
                self.overhead(from, t);
            }
        }
    }

    fn reclaims(&mut self, t: Millis) {
        let rate = self.cfg.reclaim_per_function_hour;
        if rate <= 0.0 {
            return;
        }
        let p = 1.0 - (-rate * self.cfg.reclaim_check_ms as f64 / 3_600_000.0).exp();
        let candidates: Vec<FunctionId> = self
            .policy
            .snapshot()
            .functions
            .iter()
            .filter(|f| f.chunks > 0)
            .map(|f| f.id)
            .collect();
        for f in candidates {
            if self.rng.random::<f64>() >= p {
                continue;
            }
            self.meter.stop(f, t);
            let dec = self.policy.function_lost(t, f);
            self.effects(t, &dec.effects);
            self.r.objects_lost += dec.effects.evicted.len() as u64;
            match dec.action {
                LossAction::Nothing => {}
                LossAction::Delegate { .. } | LossAction::RepairOnRead { .. } => {
                    self.r.functions_lost += 1;
                }
                LossAction::Recover { chunks } => {
                    self.r.functions_lost += 1;
                    self.r.functions_recovered += 1;
                    // The new instance reads every lost chunk back from S3 (a ranged GET; a
                    // parity chunk needs its whole piece to re-encode).
                    for c in chunks {
                        let bytes = if c.parity {
                            c.chunk_size * u64::from(self.d)
                        } else {
                            c.chunk_size
                        };
                        self.usage.s3_get_requests += 1;
                        self.meter.serve(f, t, bytes);
                    }
                }
            }
        }
    }

    fn cost_now(&self) -> f64 {
        let mut u = self.usage.clone();
        u.lambda_requests = self.meter.requests;
        u.lambda_mb_ms = self.meter.mb_ms_so_far();
        u.cost(&self.cfg.prices, self.node_hourly).total()
    }

    fn sample(&mut self, t: Millis) {
        let s = self.policy.stats();
        let cost = self.cost_now();
        self.r.timeline.push(Sample {
            t_ms: t,
            cost_usd: cost,
            functions: s.functions_held,
            active_functions: s.active_functions,
            degraded_functions: s.degraded_functions,
            stored_bytes: s.stored_bytes,
            memory_bytes: s.memory_bytes,
        });
    }
}

/// Replays `trace` against the policy `pc`. `progress(done, total)` is called now and then
/// with the number of requests replayed.
pub fn run(
    trace: &Trace,
    pc: &PolicyConfig,
    cfg: &SimConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SimReport, ConfigError> {
    cfg.validate()?;
    let policy = pc.build()?;
    let (nodes, node_hourly) = pc.node_pricing().unwrap_or((0, 0.0));
    let cluster = match pc {
        PolicyConfig::Provisioned(c) => Some(format!("{} x {}", c.nodes, c.node.name)),
        _ => None,
    };
    let mut run = Run {
        trace,
        cfg,
        meter: LambdaMeter::new(cfg.function.clone(), pc.function_memory_mb().unwrap_or(0)),
        usage: Usage::default(),
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        d: pc.data_chunks(),
        nodes,
        node_hourly,
        seen: vec![false; trace.objects()],
        s3_stored: 0,
        last_t: 0,
        mem_bytes: 0,
        mem_byte_ms: 0,
        r: SimReport {
            policy: policy.name().to_string(),
            cost_usd: 0.0,
            cache_tier_usd: 0.0,
            hit_ratio: 0.0,
            byte_hit_ratio: 0.0,
            cost: CostBreakdown::default(),
            usage: Usage::default(),
            puts: 0,
            gets: 0,
            hits: 0,
            get_bytes: 0,
            hit_bytes: 0,
            refills: 0,
            bypassed: 0,
            memory_gb_hours: 0.0,
            lambda_gb_seconds: 0.0,
            warmups: 0,
            warmups_billed: 0,
            relocations: 0,
            chunks_moved: 0,
            functions_lost: 0,
            functions_recovered: 0,
            objects_lost: 0,
            evictions: 0,
            peak_functions: 0,
            cluster,
            timeline: Vec::new(),
        },
        policy,
    };
    run.after_event();
    let end = trace.duration_ms;
    let total = trace.requests.len() as u64;
    let mut i = 0usize;
    let mut next_reclaim = cfg.reclaim_check_ms;
    let mut next_sample = 0;
    let mut now = 0;
    let mut same_tick = 0u32;
    loop {
        let wake = run
            .policy
            .next_wakeup()
            .filter(|&w| w <= end)
            .map(|w| w.max(now));
        let reclaim =
            (cfg.reclaim_per_function_hour > 0.0 && next_reclaim <= end).then_some(next_reclaim);
        let req = trace.requests.get(i).map(|r| r.t_ms.max(now));
        let sample = (next_sample <= end).then_some(next_sample);
        let mut best: Option<(Millis, u8)> = None;
        for (t, kind) in [(wake, 0u8), (reclaim, 1), (req, 2), (sample, 3)] {
            if let Some(t) = t
                && best.is_none_or(|(b, _)| t < b)
            {
                best = Some((t, kind));
            }
        }
        let Some((t, kind)) = best else {
            break;
        };
        run.advance(t);
        now = t;
        match kind {
            0 => {
                let fx = run.policy.tick(t);
                run.effects(t, &fx);
                same_tick = if run.policy.next_wakeup().is_some_and(|w| w <= t) {
                    same_tick + 1
                } else {
                    0
                };
                assert!(same_tick < 1000, "policy keeps asking for a tick at {t}");
            }
            1 => {
                run.reclaims(t);
                next_reclaim += cfg.reclaim_check_ms;
            }
            2 => {
                let object = trace.requests[i].object;
                run.request(t, object);
                i += 1;
                if i.is_multiple_of(1000) {
                    progress(i as u64, total);
                }
            }
            _ => {
                run.sample(t);
                next_sample += cfg.sample_ms;
            }
        }
        run.after_event();
    }
    progress(total, total);
    run.advance(end);
    run.meter.finish();
    run.usage.lambda_requests = run.meter.requests;
    run.usage.lambda_mb_ms = run.meter.mb_ms;
    let cost = run.usage.cost(&cfg.prices, node_hourly);
    let mut r = run.r;
    r.cost_usd = cost.total();
    r.cache_tier_usd = cost.cache_tier();
    r.cost = cost;
    r.hit_ratio = r.hits as f64 / r.gets.max(1) as f64;
    r.byte_hit_ratio = r.hit_bytes as f64 / r.get_bytes.max(1) as f64;
    r.memory_gb_hours = run.mem_byte_ms as f64 / GIB as f64 / 3_600_000.0;
    r.lambda_gb_seconds = run.usage.lambda_gb_seconds();
    r.warmups_billed = run.meter.warmups_billed;
    r.usage = run.usage;
    Ok(r)
}

/// The three policies with their defaults, seeded with `seed`, and the provisioned cluster
/// sized for `trace`: the cheapest single-type cluster from
/// [`crate::provisioned::default_catalogue`] whose usable memory (75% of node memory) holds the
/// trace's peak working set over the sliding window's horizon (`bucket_ms x window_buckets`,
/// 180 min by default).
pub fn default_contenders(trace: &Trace, seed: u64) -> Vec<PolicyConfig> {
    let window = WindowConfig {
        seed,
        ..WindowConfig::default()
    };
    let horizon = window.bucket_ms * u64::from(window.window_buckets);
    let (ws, _) = peak_working_set(trace, horizon);
    let provisioned = ProvisionedConfig::sized_for(
        ws,
        &crate::provisioned::default_catalogue(),
        crate::provisioned::DEFAULT_USABLE_FRACTION,
    );
    vec![
        PolicyConfig::SlidingWindow(window),
        PolicyConfig::Infinicache(InfiniCacheConfig {
            seed,
            ..InfiniCacheConfig::default()
        }),
        PolicyConfig::Provisioned(provisioned),
    ]
}
