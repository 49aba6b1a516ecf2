//! The memory manager: the `policy` crate's decisions, carried out by the gateway.
//!
//! The policy is pure (events in, decisions out); this adapter feeds it the tier's events with
//! the gateway's clock (milliseconds since start), turns its placements into chunk layouts, and
//! queues its side effects — evictions, warm-ups, recoveries — as [`Action`]s for the gateway to
//! carry out outside the policy's lock. A timer task calls `tick` when the policy asks to be
//! woken (at least every [`TICK_MAX`]) and reports functions' occupancy every
//! [`OCCUPANCY_INTERVAL`]; the window's state is exported on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use policy::{
    ChunkMove, Effects, FunctionId as PolicyFunction, Lookup, LossAction, Placement, Policy,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::index::FunctionId;
use super::{Placer, Relocation};
use crate::config::{FunctionsConfig, PolicyKind, PolicySection, TierConfig};
use crate::error::TierError;

/// Longest time between two ticks.
pub const TICK_MAX: Duration = Duration::from_secs(1);
/// How often functions' occupancy is reported to the policy.
pub const OCCUPANCY_INTERVAL: Duration = Duration::from_secs(5);

/// Something the policy decided that the gateway must do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Drop write `object` of the key from function memory (it stays in the bucket or the
    /// journal).
    Evict {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Which write of the key.
        object: u128,
    },
    /// Send a warm-up invocation.
    Warmup(FunctionId),
    /// A reclaimed function the policy recovers (active window): restore its chunks onto the
    /// replacement instance. `expected` is how many chunks the policy counts on it (the tier
    /// checks it against its layout, the one record of where chunks are).
    Recover {
        /// The function.
        function: FunctionId,
        /// Chunks the policy counts on it.
        expected: usize,
    },
    /// A reclaimed function the policy does not recover (degraded bucket, or nothing it
    /// tracks): its objects leave memory and come back on their next read.
    Abandon(FunctionId),
    /// A function went back to the pool: no bucket holds it; end its invocation (it is
    /// billed while it is connected) and treat it as empty.
    Release(FunctionId),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Clone, Default)]
struct WindowMetrics {
    buckets: Family<StateLabels, Gauge>,
    functions: Family<StateLabels, Gauge>,
    bucket_functions: Family<BucketLabels, Gauge>,
    occupancy: Family<FunctionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    memory_bytes: Gauge,
    stored_bytes: Gauge,
    objects: Gauge,
    inherited: Counter,
    drawn: Counter,
    returned: Counter,
    stopped_writes: Counter,
    mismatches: Counter,
}

impl WindowMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("gateway_window");
        r.register(
            "buckets",
            "Buckets by state (active, degraded, expired since start)",
            m.buckets.clone(),
        );
        r.register(
            "functions",
            "Functions held by buckets, by state",
            m.functions.clone(),
        );
        r.register(
            "bucket_functions",
            "Functions of each live bucket",
            m.bucket_functions.clone(),
        );
        r.register(
            "function_occupancy",
            "Fraction of each held function's memory in use",
            m.occupancy.clone(),
        );
        r.register(
            "memory_bytes",
            "Function memory held by the window",
            m.memory_bytes.clone(),
        );
        r.register(
            "stored_bytes",
            "Chunk bytes the policy tracks",
            m.stored_bytes.clone(),
        );
        r.register(
            "objects",
            "Objects the policy tracks in memory",
            m.objects.clone(),
        );
        r.register(
            "inherited_functions",
            "Functions a new bucket took over, with their chunks, from the previous one",
            m.inherited.clone(),
        );
        r.register(
            "drawn_functions",
            "Functions drawn from the pool into a bucket",
            m.drawn.clone(),
        );
        r.register(
            "returned_functions",
            "Functions given back to the pool (their invocation is ended)",
            m.returned.clone(),
        );
        r.register(
            "stopped_writes",
            "Times a function stopped taking writes (above the occupancy threshold)",
            m.stopped_writes.clone(),
        );
        r.register(
            "placement_mismatches",
            "Reads or recoveries where the policy's placement disagreed with the tier's layout",
            m.mismatches.clone(),
        );
        m
    }
}

/// The policy and what the gateway needs to drive it.
pub struct MemoryManager {
    policy: Mutex<Box<dyn Policy>>,
    epoch: Instant,
    /// Which write (object id) the policy's entry for a key belongs to.
    owners: Mutex<HashMap<String, u128>>,
    /// Relocations decided on a read and not yet reported done (by key and object).
    pending: Mutex<HashMap<(String, u128), Vec<ChunkMove>>>,
    per_piece: usize,
    prefix: String,
    actions: mpsc::UnboundedSender<Action>,
    metrics: WindowMetrics,
}

fn policy_key(bucket: &str, key: &str) -> String {
    format!("{bucket}/{key}")
}

fn split_key(k: &str) -> Option<(String, String)> {
    k.split_once('/').map(|(b, k)| (b.to_owned(), k.to_owned()))
}

impl MemoryManager {
    /// Builds the configured policy over the pool `[functions]` describes.
    pub(crate) fn new(
        tier: &TierConfig,
        functions: &FunctionsConfig,
        p: &PolicySection,
        registry: &mut Registry,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<Action>), TierError> {
        let deployment = policy::Deployment {
            functions: functions.count,
            function_memory_mb: functions.memory_mb,
            data_chunks: u32::try_from(tier.data_chunks).unwrap_or(u32::MAX),
            parity_chunks: u32::try_from(tier.parity_chunks).unwrap_or(u32::MAX),
            min_object_bytes: tier.min_object_size.as_u64(),
        };
        let built = match p.kind {
            PolicyKind::Infinicache => {
                policy::PolicyConfig::Infinicache(p.infinicache.clone().deployed(&deployment))
            }
            _ => policy::PolicyConfig::SlidingWindow(p.window.clone().deployed(&deployment)),
        }
        .build()
        .map_err(|e| TierError::Config(format!("policy: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Self {
            policy: Mutex::new(built),
            epoch: Instant::now(),
            owners: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            per_piece: tier.data_chunks + tier.parity_chunks,
            prefix: functions.name_prefix.clone(),
            actions: tx,
            metrics: WindowMetrics::register(registry),
        });
        Ok((me, rx))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Policy>> {
        self.policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u128), Vec<ChunkMove>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, u128>> {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues the side effects of a decision (called without the policy's lock held).
    fn apply(&self, fx: Effects) {
        if fx.is_empty() {
            return;
        }
        for k in fx.evicted {
            let owner = self.owners().remove(&k);
            if let (Some((bucket, key)), Some(object)) = (split_key(&k), owner) {
                let _ = self.actions.send(Action::Evict {
                    bucket,
                    key,
                    object,
                });
            }
        }
        for b in &fx.expired {
            info!(bucket = b.0, "window bucket expired");
        }
        for b in &fx.degraded {
            debug!(bucket = b.0, "window bucket degraded");
        }
        // Inherited functions keep their chunks and connections: nothing to do but note it.
        for i in &fx.inherited {
            info!(
                from = i.from.0,
                to = i.to.0,
                functions = i.functions.len(),
                "window bucket inherited functions that still take writes"
            );
            self.metrics.inherited.inc_by(i.functions.len() as u64);
        }
        for g in fx.opened.iter().chain(&fx.scaled_out) {
            debug!(
                bucket = g.bucket.0,
                functions = g.functions.len(),
                "window bucket grew"
            );
            self.metrics.drawn.inc_by(g.functions.len() as u64);
        }
        for f in &fx.stopped_writes {
            debug!(function = f.0, "function stops taking writes (occupancy)");
            self.metrics.stopped_writes.inc();
        }
        for f in fx.returned {
            self.metrics.returned.inc();
            let _ = self.actions.send(Action::Release(f.0));
        }
        for w in fx.warmups {
            let _ = self.actions.send(Action::Warmup(w.function.0));
        }
    }

    /// The policy's placement of a key disagreed with the tier's layout (they are kept in step
    /// by the tier's reports: a mismatch is a bug, or a report racing a read).
    pub(crate) fn mismatch(&self, what: &str, key: &str) {
        self.metrics.mismatches.inc();
        tracing::warn!(
            what,
            key,
            "the policy's placement disagrees with the tier's layout"
        );
    }

    /// Starts the timer task: ticks, occupancy reports (from `occupancy`), metrics.
    pub fn run(self: &Arc<Self>, occupancy: Arc<dyn Fn() -> Vec<(FunctionId, u64)> + Send + Sync>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last_occupancy = Instant::now();
            loop {
                let Some(me) = weak.upgrade() else { return };
                let now = me.now();
                let (fx, wake) = {
                    let mut p = me.lock();
                    let mut fx = p.tick(now);
                    if last_occupancy.elapsed() >= OCCUPANCY_INTERVAL {
                        for (f, used) in occupancy() {
                            fx.extend(p.occupancy(now, PolicyFunction(f), used));
                        }
                        last_occupancy = Instant::now();
                    }
                    (fx, p.next_wakeup())
                };
                me.apply(fx);
                me.export();
                let sleep = wake
                    .map_or(TICK_MAX, |w| {
                        Duration::from_millis(w.saturating_sub(me.now()))
                    })
                    .clamp(Duration::from_millis(10), TICK_MAX);
                drop(me);
                tokio::time::sleep(sleep).await;
            }
        });
    }

    fn export(&self) {
        let snap = self.lock().snapshot();
        let m = &self.metrics;
        let st = |s: &str| StateLabels { state: s.into() };
        m.buckets
            .get_or_create(&st("active"))
            .set(i64::from(snap.stats.active_buckets));
        m.buckets
            .get_or_create(&st("degraded"))
            .set(i64::from(snap.stats.degraded_buckets));
        m.buckets
            .get_or_create(&st("expired"))
            .set(i64::try_from(snap.stats.expired_buckets).unwrap_or(i64::MAX));
        m.functions
            .get_or_create(&st("active"))
            .set(i64::from(snap.stats.active_functions));
        m.functions
            .get_or_create(&st("degraded"))
            .set(i64::from(snap.stats.degraded_functions));
        m.memory_bytes
            .set(i64::try_from(snap.stats.memory_bytes).unwrap_or(i64::MAX));
        m.stored_bytes
            .set(i64::try_from(snap.stats.stored_bytes).unwrap_or(i64::MAX));
        m.objects
            .set(i64::try_from(snap.stats.objects).unwrap_or(i64::MAX));
        m.bucket_functions.clear();
        for b in &snap.buckets {
            m.bucket_functions
                .get_or_create(&BucketLabels {
                    bucket: b.id.0.to_string(),
                })
                .set(i64::try_from(b.functions.len()).unwrap_or(i64::MAX));
        }
        m.occupancy.clear();
        for f in &snap.functions {
            m.occupancy
                .get_or_create(&FunctionLabels {
                    function: f.id.lambda_name(&self.prefix),
                })
                .set(f.occupancy);
        }
    }

    /// A function's memory is gone: what the policy wants done.
    pub fn function_lost(&self, f: FunctionId) {
        let now = self.now();
        let d = self.lock().function_lost(now, PolicyFunction(f));
        match d.action {
            // The fixed pool repairs lazily in the policy's model; the gateway restores at once,
            // which keeps every piece at d + p.
            LossAction::Recover { chunks } => {
                let expected = chunks.len();
                let _ = self.actions.send(Action::Recover {
                    function: f,
                    expected,
                });
            }
            LossAction::RepairOnRead { chunks_lost } => {
                let _ = self.actions.send(Action::Recover {
                    function: f,
                    expected: chunks_lost as usize,
                });
            }
            LossAction::Delegate { chunks_lost } => {
                info!(
                    function = f,
                    chunks_lost, "lost function of a degraded bucket: delegated, not recovered"
                );
                let _ = self.actions.send(Action::Abandon(f));
            }
            LossAction::Nothing => {
                let _ = self.actions.send(Action::Abandon(f));
            }
        }
        self.apply(d.effects);
    }
}

impl Placer for MemoryManager {
    fn place(
        &self,
        bucket: &str,
        key: &str,
        object: u128,
        size: u64,
        pieces: usize,
        per_piece: usize,
    ) -> Option<Vec<Vec<FunctionId>>> {
        if per_piece != self.per_piece {
            return None;
        }
        let k = policy_key(bucket, key);
        let now = self.now();
        let d = self
            .lock()
            .put(now, &k, size, u32::try_from(pieces).unwrap_or(u32::MAX));
        // The decision's evictions are of objects already there, this key's previous write
        // among them: carried out before the new write becomes the key's owner.
        self.apply(d.effects);
        match d.placement {
            Placement::Functions(layout) => {
                self.owners().insert(k, object);
                Some(
                    layout
                        .functions
                        .chunks(per_piece)
                        .map(|c| c.iter().map(|f| f.0).collect())
                        .collect(),
                )
            }
            Placement::Node | Placement::Bypass(_) => {
                self.owners().remove(&k);
                None
            }
        }
    }

    fn on_read(
        &self,
        bucket: &str,
        key: &str,
        object: u128,
        layout: &[Vec<FunctionId>],
    ) -> Vec<Relocation> {
        let k = policy_key(bucket, key);
        if self.owners().get(&k) != Some(&object) {
            return Vec::new();
        }
        let now = self.now();
        let d = self.lock().get(now, &k);
        if let Lookup::Functions { chunks, .. } = &d.lookup {
            // The policy's chunk positions (None: lost) against where the tier read from.
            let agrees = chunks.len() == layout.iter().map(Vec::len).sum::<usize>()
                && chunks
                    .iter()
                    .zip(layout.iter().flatten())
                    .all(|(p, &t)| p.is_none_or(|p| p.0 == t));
            if !agrees {
                self.mismatch("read", &k);
            }
        }
        let per_piece = self.per_piece as u32;
        let moves: Vec<Relocation> = d
            .relocation
            .iter()
            .map(|m| Relocation {
                piece: m.index / per_piece,
                chunk: m.index % per_piece,
                from: m.from.map(|f| f.0),
                to: m.to.0,
            })
            .collect();
        if !d.relocation.is_empty() {
            self.pending().insert((k, object), d.relocation);
        }
        self.apply(d.effects);
        moves
    }

    fn relocated(&self, bucket: &str, key: &str, object: u128, _moves: &[Relocation], ok: bool) {
        let k = policy_key(bucket, key);
        let Some(moves) = self.pending().remove(&(k.clone(), object)) else {
            return;
        };
        let now = self.now();
        let fx = self.lock().relocated(now, &k, &moves, ok);
        self.apply(fx);
    }

    fn chunk_counts(&self) -> Option<std::collections::BTreeMap<FunctionId, u64>> {
        Some(
            self.lock()
                .snapshot()
                .functions
                .iter()
                .filter(|f| f.chunks > 0)
                .map(|f| (f.id.0, f.chunks))
                .collect(),
        )
    }

    fn evicted(&self, bucket: &str, key: &str, object: u128) {
        let k = policy_key(bucket, key);
        self.pending().remove(&(k.clone(), object));
        {
            let mut owners = self.owners();
            if owners.get(&k) != Some(&object) {
                return;
            }
            owners.remove(&k);
        }
        let now = self.now();
        let d = self.lock().delete(now, &k);
        self.apply(d.effects);
    }
}
