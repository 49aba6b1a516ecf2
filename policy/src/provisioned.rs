//! Provisioned cache baseline (ElastiCache-like): a fixed cluster of nodes billed per
//! node-hour, whole objects, LRU eviction. It holds no functions: placements are
//! [`Placement::Node`], there is nothing to warm and nothing the provider reclaims.
//!
//! How big a cluster is a question of sizing, answered outside the policy by
//! [`ProvisionedConfig::sized_for`]: the cheapest cluster of one node type from a catalogue whose
//! usable memory holds a given working set (the simulator passes the trace's peak working set,
//! see `policy::trace::working_set`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ensure};
use crate::types::*;

/// Policy name.
pub const NAME: &str = "provisioned";

/// Share of a node's memory available for data. ElastiCache for Redis OSS reserves 25% of
/// node memory by default (`reserved-memory-percent`, AWS ElastiCache user guide, "Managing
/// reserved memory").
pub const DEFAULT_USABLE_FRACTION: f64 = 0.75;

/// A node type with its memory and on-demand price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeType {
    /// AWS name, e.g. `cache.r6g.large`.
    pub name: String,
    /// Node memory, GiB (AWS ElastiCache supported node types table).
    pub memory_gib: f64,
    /// On-demand price per node-hour, USD (us-east-1, Redis OSS).
    pub hourly_usd: f64,
}

impl NodeType {
    fn new(name: &str, memory_gib: f64, hourly_usd: f64) -> Self {
        NodeType {
            name: name.into(),
            memory_gib,
            hourly_usd,
        }
    }

    /// Node memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_gib * GIB as f64) as u64
    }
}

/// Node types considered by [`ProvisionedConfig::sized_for`]. Prices: ElastiCache on-demand,
/// us-east-1 (see `trace-dal09.md`); memory: AWS "Supported node types" table.
pub fn default_catalogue() -> Vec<NodeType> {
    vec![
        NodeType::new("cache.r6g.large", 13.07, 0.206),
        NodeType::new("cache.r6g.xlarge", 26.32, 0.411),
        NodeType::new("cache.r5.large", 13.07, 0.216),
        NodeType::new("cache.r5.xlarge", 26.32, 0.431),
        NodeType::new("cache.r5.24xlarge", 635.61, 10.368),
    ]
}

/// Configuration of [`Provisioned`]. The default is InfiniCache's ElastiCache baseline: one
/// `cache.r5.24xlarge` ($10.368/h, $518.4 over 50 h).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionedConfig {
    /// Node type.
    pub node: NodeType,
    /// Nodes in the cluster.
    pub nodes: u32,
    /// Share of node memory that holds data.
    pub usable_fraction: f64,
    /// Smaller objects bypass the cache (0: cache everything).
    pub min_object_bytes: u64,
}

impl Default for ProvisionedConfig {
    fn default() -> Self {
        ProvisionedConfig {
            node: NodeType::new("cache.r5.24xlarge", 635.61, 10.368),
            nodes: 1,
            usable_fraction: DEFAULT_USABLE_FRACTION,
            min_object_bytes: 0,
        }
    }
}

impl ProvisionedConfig {
    /// The cheapest cluster of a single node type from `catalogue` whose usable memory
    /// (`nodes * memory * usable_fraction`) holds `working_set_bytes`. Ties go to the earlier
    /// entry. Panics if `catalogue` is empty.
    pub fn sized_for(working_set_bytes: u64, catalogue: &[NodeType], usable_fraction: f64) -> Self {
        let best = catalogue
            .iter()
            .map(|t| {
                let usable = (t.memory_bytes() as f64 * usable_fraction).max(1.0);
                let n = ((working_set_bytes as f64 / usable).ceil() as u32).max(1);
                (n as f64 * t.hourly_usd, n, t)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("non-empty catalogue");
        ProvisionedConfig {
            node: best.2.clone(),
            nodes: best.1,
            usable_fraction,
            min_object_bytes: 0,
        }
    }

    /// Bytes of objects the cluster holds.
    pub fn capacity_bytes(&self) -> u64 {
        (self.node.memory_bytes() as f64 * self.usable_fraction) as u64 * u64::from(self.nodes)
    }

    /// Cluster price per hour.
    pub fn hourly_usd(&self) -> f64 {
        self.node.hourly_usd * f64::from(self.nodes)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let n = NAME;
        ensure(self.nodes >= 1, n, "nodes", || "must be >= 1".into())?;
        ensure(self.node.memory_gib > 0.0, n, "node.memory_gib", || {
            "must be > 0".into()
        })?;
        ensure(self.node.hourly_usd >= 0.0, n, "node.hourly_usd", || {
            "must be >= 0".into()
        })?;
        ensure(
            self.usable_fraction > 0.0 && self.usable_fraction <= 1.0,
            n,
            "usable_fraction",
            || "must be within (0, 1]".into(),
        )?;
        Ok(())
    }
}

/// The provisioned LRU cache. See the module docs.
#[derive(Clone, Debug)]
pub struct Provisioned {
    cfg: ProvisionedConfig,
    capacity: u64,
    used: u64,
    objects: HashMap<Box<str>, (u64, u64)>,
    lru: BTreeMap<u64, Box<str>>,
    stamp: u64,
}

impl Provisioned {
    /// Validates `cfg` and builds an empty cluster.
    pub fn new(cfg: ProvisionedConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Provisioned {
            capacity: cfg.capacity_bytes(),
            cfg,
            used: 0,
            objects: HashMap::new(),
            lru: BTreeMap::new(),
            stamp: 0,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProvisionedConfig {
        &self.cfg
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.objects.remove(key) {
            Some((size, stamp)) => {
                self.used -= size;
                self.lru.remove(&stamp);
                true
            }
            None => false,
        }
    }
}

impl Policy for Provisioned {
    fn name(&self) -> &'static str {
        NAME
    }

    fn put(&mut self, _now: Millis, key: &str, size: u64, _pieces: u32) -> PutDecision {
        let mut fx = Effects::default();
        self.remove(key);
        let placement = if size < self.cfg.min_object_bytes {
            Placement::Bypass(BypassReason::TooSmall)
        } else if size > self.capacity {
            Placement::Bypass(BypassReason::TooLarge)
        } else {
            while self.used + size > self.capacity {
                let (_, victim) = self.lru.pop_first().expect("used > 0 => an object");
                let (vsize, _) = self.objects.remove(&victim).expect("indexed");
                self.used -= vsize;
                fx.evicted.push(victim.into());
            }
            self.stamp += 1;
            self.objects.insert(key.into(), (size, self.stamp));
            self.lru.insert(self.stamp, key.into());
            self.used += size;
            Placement::Node
        };
        PutDecision {
            placement,
            stale: Vec::new(),
            effects: fx,
        }
    }

    fn get(&mut self, _now: Millis, key: &str) -> GetDecision {
        let lookup = match self.objects.get_mut(key) {
            Some((_, stamp)) => {
                self.lru.remove(stamp);
                self.stamp += 1;
                *stamp = self.stamp;
                self.lru.insert(self.stamp, key.into());
                Lookup::Node
            }
            None => Lookup::Miss,
        };
        GetDecision {
            lookup,
            relocation: Vec::new(),
            effects: Effects::default(),
        }
    }

    fn relocated(&mut self, _now: Millis, _key: &str, _moves: &[ChunkMove], _ok: bool) -> Effects {
        // Whole objects on nodes: nothing is ever relocated.
        Effects::default()
    }

    fn delete(&mut self, _now: Millis, key: &str) -> DeleteDecision {
        DeleteDecision {
            chunks: Vec::new(),
            was_cached: self.remove(key),
            effects: Effects::default(),
        }
    }

    fn tick(&mut self, _now: Millis) -> Effects {
        Effects::default()
    }

    fn function_lost(&mut self, _now: Millis, _function: FunctionId) -> LossDecision {
        LossDecision {
            action: LossAction::Nothing,
            effects: Effects::default(),
        }
    }

    fn occupancy(&mut self, _now: Millis, _function: FunctionId, _bytes_used: u64) -> Effects {
        Effects::default()
    }

    fn next_wakeup(&self) -> Option<Millis> {
        None
    }

    fn contains(&self, key: &str) -> bool {
        self.objects.contains_key(key)
    }

    fn stats(&self) -> Stats {
        Stats {
            memory_bytes: self.cfg.node.memory_bytes() * u64::from(self.cfg.nodes),
            stored_bytes: self.used,
            objects: self.objects.len() as u64,
            ..Stats::default()
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            policy: NAME,
            buckets: Vec::new(),
            functions: Vec::new(),
            stats: self.stats(),
        }
    }
}
