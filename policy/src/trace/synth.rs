//! Synthetic traces calibrated to the dal09 statistics (`trace-dal09.md`).
//!
//! 1. Popularity: `R = rate x duration` requests; a share `hot_share` (34%) goes to the
//!    `hot_objects` (5) hottest objects (the registry's image roll-outs), the rest picks an
//!    object by a Zipf law over the others. `trace-dal09.md` suggests s = 1.0 over 120,000
//!    objects, but a pure Zipf law cannot give the 5 hottest 34% (it gives them ~19%); with the
//!    hot set, s = 0.92 over 110,000 objects reproduces all published shares (12.5 K distinct
//!    objects, 77% requested once, top 1% 50%, top 10% 65%, 5 hottest 34%).
//! 2. Per object, a first-access time and then its later accesses as gaps drawn from the
//!    reuse-time quantiles, in "activity time"; all times are then mapped to wall-clock time
//!    through the hour-of-day multipliers (busy hours get proportionally more requests of
//!    every kind, and their gaps are proportionally shorter). Drawing request times independently
//!    would stretch the median reuse time to ~1,100 s, which favours fixed pools.
//!    An object with many accesses cannot fit them all in the trace with gaps from the full
//!    distribution (its mean gap is ~45 min), so its gaps are drawn from the distribution cut
//!    at the quantile where `(n - 1) x mean gap <= 0.95 x duration`; the objects with few accesses
//!    then draw from a compensating distribution that puts back the mass the cut removed, so
//!    the reuse times of all re-accesses together follow the published quantiles.
//! 3. Sizes from the size quantile table (log-linear interpolation). Popular objects (>= 11
//!    requests) draw below the table's 0.9 quantile: in dal09 only 3% of them are above it (10%
//!    of all objects), and without this the few hottest objects' sizes swing the requested
//!    volume far above the published 2,252 GB. A `small_share` of objects instead draws from a
//!    rough small-object table (45% of all objects < 10 KB, 66% < 1 MB in the unfiltered trace).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::stats::{
    DAL09_HOUR_MULT, DAL09_REUSE_S, DAL09_SIZE_MIB, REUSE_QUANTILES, SIZE_QUANTILES,
};
use super::{Request, Trace, quantile_log_linear};
use crate::error::{ConfigError, ensure};
use crate::types::{MIB, Millis};

/// Object sizes below 10 MiB for the small-object share (bytes, log-linear): 45/80 of them
/// under 10 KB, 66/80 under 1 MB (from the 21-minute sample of the unfiltered trace; rough).
pub const SMALL_SIZE_TABLE: [(f64, f64); 4] = [
    (0.0, 100.0),
    (0.5625, 10_000.0),
    (0.825, 1_000_000.0),
    (1.0, 10.0 * MIB as f64),
];

/// Bins of the reuse-time distribution used for calibration.
const BINS: usize = 1000;

/// Knobs of the generator. Defaults reproduce the dal09 trace's scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// RNG seed.
    pub seed: u64,
    /// Length of the trace, hours.
    pub duration_h: f64,
    /// Mean requests per hour (dal09: 37,474 in 50 h).
    pub requests_per_hour: f64,
    /// Objects the popularity law ranges over (not all are drawn).
    pub universe: u32,
    /// Zipf exponent of the objects outside the hot set.
    pub zipf_s: f64,
    /// Objects in the hot set (roll-outs).
    pub hot_objects: u32,
    /// Share of requests that go to the hot set (Zipf-weighted within it).
    pub hot_share: f64,
    /// Objects with at least [`SynthConfig::popular_min_requests`] requests draw their size
    /// below this quantile of the size table (1.0: no cap).
    pub popular_size_cap_quantile: f64,
    /// See [`SynthConfig::popular_size_cap_quantile`].
    pub popular_min_requests: u32,
    /// Share of objects drawn from the small-object size table instead (0 = dal09, which is
    /// filtered to >= 10 MiB).
    pub small_share: f64,
    /// UTC hour at time 0.
    pub start_hour_utc: u32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 1,
            duration_h: 50.0,
            requests_per_hour: 37_474.0 / 50.0,
            universe: 110_000,
            zipf_s: 0.92,
            hot_objects: 5,
            hot_share: 0.34,
            popular_size_cap_quantile: 0.9,
            popular_min_requests: 11,
            small_share: 0.0,
            start_hour_utc: 0,
        }
    }
}

impl SynthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let n = "synth";
        ensure(self.duration_h > 0.0, n, "duration_h", || {
            "must be > 0".into()
        })?;
        ensure(self.requests_per_hour > 0.0, n, "requests_per_hour", || {
            "must be > 0".into()
        })?;
        ensure(self.universe >= 1, n, "universe", || "must be >= 1".into())?;
        ensure(self.zipf_s >= 0.0, n, "zipf_s", || "must be >= 0".into())?;
        ensure(self.hot_objects < self.universe, n, "hot_objects", || {
            "must be below universe".into()
        })?;
        ensure(
            (0.0..=1.0).contains(&self.hot_share),
            n,
            "hot_share",
            || "must be within 0..=1".into(),
        )?;
        ensure(
            self.popular_size_cap_quantile > 0.0 && self.popular_size_cap_quantile <= 1.0,
            n,
            "popular_size_cap_quantile",
            || "must be within (0, 1]".into(),
        )?;
        ensure(
            (0.0..=1.0).contains(&self.small_share),
            n,
            "small_share",
            || "must be within 0..=1".into(),
        )?;
        ensure(self.start_hour_utc < 24, n, "start_hour_utc", || {
            "must be < 24".into()
        })?;
        Ok(())
    }
}

/// Maps activity time (uniform rate) to wall-clock time whose rate follows the hour-of-day
/// multipliers: `wall(tau)` inverts `tau(t) = integral of the normalised multiplier`.
struct Warp {
    /// Activity time at the start of every wall-clock hour (and at the end).
    cum: Vec<f64>,
    duration_s: f64,
}

impl Warp {
    fn new(duration_s: f64, start_hour_utc: u32) -> Self {
        let hours = (duration_s / 3600.0).ceil().max(1.0) as usize;
        let len = |h: usize| (duration_s - h as f64 * 3600.0).clamp(0.0, 3600.0);
        let weight = |h: usize| DAL09_HOUR_MULT[(h + start_hour_utc as usize) % 24] * len(h);
        let total: f64 = (0..hours).map(weight).sum();
        let mut cum = vec![0.0];
        for h in 0..hours {
            cum.push(cum[h] + weight(h) * duration_s / total);
        }
        Warp { cum, duration_s }
    }

    fn wall(&self, tau: f64) -> f64 {
        let h = self
            .cum
            .partition_point(|&c| c <= tau)
            .clamp(1, self.cum.len() - 1)
            - 1;
        let width = self.cum[h + 1] - self.cum[h];
        let len = (self.duration_s - h as f64 * 3600.0).clamp(0.0, 3600.0);
        let frac = if width > 0.0 {
            (tau - self.cum[h]) / width
        } else {
            0.0
        };
        (h as f64 * 3600.0 + frac.clamp(0.0, 1.0) * len).min(self.duration_s)
    }
}

/// Generates a trace. Same config, same trace.
pub fn generate(cfg: &SynthConfig) -> Result<Trace, ConfigError> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let duration_ms = (cfg.duration_h * 3_600_000.0).round() as Millis;
    let duration_s = duration_ms as f64 / 1000.0;
    let total = (cfg.requests_per_hour * cfg.duration_h).round().max(1.0) as u64;

    // 1. Popularity.
    let m = cfg.universe as usize;
    let hot = (cfg.hot_objects as usize).min(m);
    let weights: Vec<f64> = (1..=m).map(|k| 1.0 / (k as f64).powf(cfg.zipf_s)).collect();
    let cumulative = |w: &[f64]| -> Vec<f64> {
        w.iter()
            .scan(0.0, |acc, x| {
                *acc += x;
                Some(*acc)
            })
            .collect()
    };
    let hot_cdf = cumulative(&weights[..hot]);
    let tail_cdf = cumulative(&weights[hot..]);
    let mut counts = vec![0u32; m];
    let pick = |cdf: &[f64], u: f64| cdf.partition_point(|&c| c < u * cdf[cdf.len() - 1]);
    for _ in 0..total {
        let k = if hot > 0 && (hot == m || rng.random_bool(cfg.hot_share)) {
            pick(&hot_cdf, rng.random::<f64>()).min(hot - 1)
        } else {
            hot + pick(&tail_cdf, rng.random::<f64>()).min(m - hot - 1)
        };
        counts[k] += 1;
    }

    // Reuse-time distribution on BINS equal-probability bins.
    let reuse_table: Vec<(f64, f64)> = REUSE_QUANTILES
        .iter()
        .zip(DAL09_REUSE_S)
        .map(|(&q, v)| (q, v))
        .collect();
    let bin_value =
        |b: usize, frac: f64| quantile_log_linear(&reuse_table, (b as f64 + frac) / BINS as f64);
    // Mean gap of the distribution cut at bin `c` (bins 0..c).
    let mut bin_mean = vec![0.0; BINS];
    for (b, mean) in bin_mean.iter_mut().enumerate() {
        *mean = (0..8)
            .map(|i| bin_value(b, (i as f64 + 0.5) / 8.0))
            .sum::<f64>()
            / 8.0;
    }
    let mut cut_mean = vec![0.0; BINS + 1];
    for c in 1..=BINS {
        cut_mean[c] = (cut_mean[c - 1] * (c - 1) as f64 + bin_mean[c - 1]) / c as f64;
    }
    let budget = duration_s * 0.95;
    let cut_for = |n: u32| -> usize {
        let gaps = f64::from(n.saturating_sub(1)).max(1.0);
        (1..=BINS)
            .rev()
            .find(|&c| gaps * cut_mean[c] <= budget)
            .unwrap_or(1)
    };

    // Mass per bin that cut objects take, and what the others must put back.
    let mut target = vec![0.0; BINS];
    let mut taken = vec![0.0; BINS];
    for &n in counts.iter().filter(|&&n| n >= 2) {
        let g = f64::from(n - 1);
        let c = cut_for(n);
        for t in target.iter_mut() {
            *t += g / BINS as f64;
        }
        if c < BINS {
            for t in taken.iter_mut().take(c) {
                *t += g / c as f64;
            }
        }
    }
    let free_gaps: f64 = counts
        .iter()
        .filter(|&&n| n >= 2 && cut_for(n) == BINS)
        .map(|&n| f64::from(n - 1))
        .sum();
    let taken_total: f64 = taken.iter().sum();
    let mut comp_cdf = Vec::with_capacity(BINS);
    let mut c_acc = 0.0;
    for b in 0..BINS {
        // Uncut objects' share of bin b: the target minus what cut objects already put there.
        let w = if free_gaps > 0.0 && taken_total > 0.0 {
            (target[b] - taken[b]).max(0.0)
        } else {
            1.0
        };
        c_acc += w;
        comp_cdf.push(c_acc);
    }

    let size_table: Vec<(f64, f64)> = SIZE_QUANTILES
        .iter()
        .zip(DAL09_SIZE_MIB)
        .map(|(&q, v)| (q, v * MIB as f64))
        .collect();
    let warp = Warp::new(duration_s, cfg.start_hour_utc);
    // Requests cluster in busy hours, where the warp shortens gaps by the local multiplier;
    // stretching activity-time gaps by E[m^2]/E[m]^2 keeps the wall-clock reuse times on the
    // published quantiles.
    let mean_m = DAL09_HOUR_MULT.iter().sum::<f64>() / 24.0;
    let kappa = DAL09_HOUR_MULT.iter().map(|m| m * m).sum::<f64>() / 24.0 / (mean_m * mean_m);

    let mut requests = Vec::with_capacity(total as usize);
    let mut keys = Vec::new();
    let mut sizes = Vec::new();
    for (rank, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let id = keys.len() as u32;
        keys.push(format!("synth/{rank:06}"));
        let size = if rng.random_bool(cfg.small_share) {
            quantile_log_linear(&SMALL_SIZE_TABLE, rng.random::<f64>())
        } else if n >= cfg.popular_min_requests {
            let cap = cfg.popular_size_cap_quantile;
            quantile_log_linear(&size_table, rng.random::<f64>() * cap)
        } else {
            quantile_log_linear(&size_table, rng.random::<f64>())
        };
        sizes.push(size.round().max(1.0) as u64);
        // Gaps, seconds.
        let mut gaps = Vec::with_capacity(n as usize - 1);
        if n >= 2 {
            let c = cut_for(n);
            for _ in 1..n {
                let b = if c < BINS {
                    rng.random_range(0..c)
                } else {
                    let u = rng.random::<f64>() * c_acc;
                    comp_cdf.partition_point(|&x| x < u).min(BINS - 1)
                };
                gaps.push(bin_value(b, rng.random::<f64>()) * kappa);
            }
        }
        let mut span: f64 = gaps.iter().sum();
        let limit = duration_s * 0.999;
        if span > limit {
            let k = limit / span;
            gaps.iter_mut().for_each(|g| *g *= k);
            span = limit;
        }
        // The object's accesses in activity time, uniformly placed, then mapped to wall-clock
        // time through the hour-of-day rate: busy hours get more of every kind of access.
        let mut tau = rng.random::<f64>() * (duration_s - span).max(0.0);
        let mut push = |tau: f64| {
            requests.push(Request {
                t_ms: ((warp.wall(tau) * 1000.0) as Millis).min(duration_ms - 1),
                object: id,
            });
        };
        push(tau);
        for g in gaps {
            tau += g;
            push(tau);
        }
    }
    requests.sort_by_key(|r| (r.t_ms, r.object));
    Ok(Trace {
        requests,
        keys,
        sizes,
        duration_ms,
        start_hour_utc: cfg.start_hour_utc,
    })
}
