//! Bringing the tier up on a function pool: the callback listener and the pool, the policy
//! behind its adapter, the tier itself, and the loops that carry the policy's decisions out
//! and tell it about lost functions.

use crate::EvictedBy;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::Tier;
use crate::backend::BackendClients;
use crate::config::{FunctionsConfig, PolicySection, TierConfig};
use crate::error::TierError;
use crate::manager::{Action, MemoryManager};
use crate::pool::{Pool, PoolEvent, PoolStore};

/// A running tier and the function pool under it.
pub struct Running {
    /// The tier.
    pub tier: Arc<Tier>,
    /// The pool (kept alive with the tier: dropping both stops the background loops).
    pool: Arc<Pool>,
}

impl Running {
    /// Per-function connection states (`{prefix}{i}` → connected), for the admin API and tests.
    pub fn functions(&self) -> std::collections::HashMap<String, bool> {
        self.pool.snapshot()
    }
}

/// Starts the pool of `functions` (invoked through `lambda`, authenticated with `secret`),
/// the `policy` over it, and the tier in `data_dir` on `backend`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    tier: &TierConfig,
    functions: &FunctionsConfig,
    policy: &PolicySection,
    data_dir: &Path,
    backend: &BackendClients,
    lambda: aws_sdk_lambda::Client,
    secret: Vec<u8>,
    registry: &mut Registry,
) -> Result<Running, TierError> {
    let (pool, mut events) = Pool::start(functions, lambda, secret, registry).await?;
    let (manager, mut actions) = MemoryManager::new(tier, functions, policy, registry)?;
    let store = Arc::new(PoolStore(pool.clone()));
    let t = Tier::open(tier, data_dir, backend, store, manager.clone(), registry).await?;
    let occupancy_pool = Arc::downgrade(&pool);
    manager.run(Arc::new(move || {
        occupancy_pool
            .upgrade()
            .map(|p| p.occupancy())
            .unwrap_or_default()
    }));
    // The policy's decisions, carried out.
    let (weak_tier, weak_pool) = (Arc::downgrade(&t), Arc::downgrade(&pool));
    let weak_manager = Arc::downgrade(&manager);
    tokio::spawn(async move {
        while let Some(a) = actions.recv().await {
            let (Some(t), Some(p)) = (weak_tier.upgrade(), weak_pool.upgrade()) else {
                return;
            };
            match a {
                Action::Evict {
                    bucket,
                    key,
                    object,
                } => {
                    t.evict(&bucket, &key, object, EvictedBy::Policy);
                }
                Action::Warmup(f) => p.warmup(f),
                Action::Recover { function, expected } => {
                    let restoring = t.recover(function);
                    if restoring != expected
                        && let Some(m) = weak_manager.upgrade()
                    {
                        m.mismatch("recovery", &p.name(function));
                    }
                }
                Action::Abandon(f) => t.abandon(f),
                Action::Release(f) => p.release(f),
            }
        }
    });
    let weak_manager = Arc::downgrade(&manager);
    // Lost functions: the policy decides whether to recover.
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let Some(m) = weak_manager.upgrade() else {
                return;
            };
            match ev {
                PoolEvent::Lost(f) => m.function_lost(f),
            }
        }
    });
    #[cfg(debug_assertions)]
    check_placement(&t);
    Ok(Running { tier: t, pool })
}

/// Debug builds: how often the policy's accounting is compared with the tier's layout.
#[cfg(debug_assertions)]
const PLACEMENT_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Debug builds: compares the policy's accounting with the tier's layout every
/// [`PLACEMENT_CHECK`]; a disagreement seen twice in a row (not a write or relocation in
/// flight) is logged at error level.
#[cfg(debug_assertions)]
fn check_placement(t: &Arc<Tier>) {
    let weak = Arc::downgrade(t);
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            tokio::time::sleep(PLACEMENT_CHECK).await;
            let Some(t) = weak.upgrade() else { return };
            let now = t.placement_check();
            if let (Some(a), Some(b)) = (&last, &now)
                && a == b
            {
                tracing::error!(disagreement = %b, "the policy's placement accounting disagrees with the tier's layout");
            }
            last = now;
        }
    });
}
