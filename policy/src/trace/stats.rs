//! Trace statistics, computed the way `trace-dal09.md` reports them, and the published
//! numbers for the dal09 trace to compare against.

use std::fmt::Write as _;

use serde::Serialize;

use super::Trace;
use crate::types::MIB;

/// Quantile levels of the object-size table.
pub const SIZE_QUANTILES: [f64; 16] = [
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0,
];
/// Published dal09 object sizes (MiB) at [`SIZE_QUANTILES`].
pub const DAL09_SIZE_MIB: [f64; 16] = [
    10.0, 13.3, 17.1, 21.7, 29.1, 40.4, 51.9, 59.3, 84.7, 128.2, 190.3, 385.2, 572.3, 1006.0,
    2542.0, 8094.0,
];
/// Quantile levels of the reuse-time table.
pub const REUSE_QUANTILES: [f64; 14] = [
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
];
/// Published dal09 reuse times (s) at [`REUSE_QUANTILES`].
pub const DAL09_REUSE_S: [f64; 14] = [
    0.5, 3.0, 7.0, 19.0, 33.0, 42.0, 73.0, 114.0, 201.0, 617.0, 2967.0, 9363.0, 76692.0, 170000.0,
];
/// Published dal09 hour-of-day request-rate multipliers (UTC 0..23).
pub const DAL09_HOUR_MULT: [f64; 24] = [
    0.63, 0.71, 0.52, 0.65, 0.75, 0.78, 0.81, 0.85, 0.90, 1.47, 1.23, 1.33, 1.47, 1.21, 1.56, 1.54,
    1.31, 0.98, 1.09, 1.02, 0.86, 0.89, 0.81, 0.63,
];

/// Statistics of a trace (all shares in 0..1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceStats {
    /// Requests.
    pub requests: u64,
    /// Length, hours.
    pub duration_h: f64,
    /// Distinct objects.
    pub unique_objects: u64,
    /// Bytes of distinct objects, GB (1e9).
    pub unique_gb: f64,
    /// Bytes requested, GB (1e9).
    pub requested_gb: f64,
    /// First accesses (PUTs in the cache view).
    pub puts: u64,
    /// Re-accesses (GETs).
    pub gets: u64,
    /// Object size (MiB) at [`SIZE_QUANTILES`].
    pub size_mib: Vec<f64>,
    /// Objects of 10–100 MB.
    pub share_10mb_100mb: f64,
    /// Objects of 100 MB–1 GB.
    pub share_100mb_1gb: f64,
    /// Objects above 1 GB.
    pub share_over_1gb: f64,
    /// Objects requested exactly once.
    pub once_share: f64,
    /// Requests to the top 1% of objects.
    pub top1pct_share: f64,
    /// Requests to the top 10% of objects.
    pub top10pct_share: f64,
    /// Requests to the 5 hottest objects.
    pub top5_share: f64,
    /// Mean requests per hour.
    pub rate_mean_h: f64,
    /// Fewest requests in a full hour.
    pub rate_min_h: f64,
    /// Most requests in a full hour.
    pub rate_max_h: f64,
    /// Most requests in a minute.
    pub peak_per_min: f64,
    /// Hour-of-day multipliers (requests in that UTC hour / mean).
    pub hour_mult: Vec<f64>,
    /// Reuse time (s) at [`REUSE_QUANTILES`].
    pub reuse_s: Vec<f64>,
    /// Re-accesses within 60 s.
    pub reuse_within_60s: f64,
    /// Re-accesses within 1 h.
    pub reuse_within_1h: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl TraceStats {
    /// The numbers `trace-dal09.md` publishes for the real trace.
    pub fn published_dal09() -> Self {
        TraceStats {
            requests: 37_474,
            duration_h: 50.0,
            unique_objects: 12_541,
            unique_gb: 950.0,
            requested_gb: 2252.0,
            puts: 12_541,
            gets: 24_933,
            size_mib: DAL09_SIZE_MIB.to_vec(),
            share_10mb_100mb: 0.831,
            share_100mb_1gb: 0.163,
            share_over_1gb: 0.005,
            once_share: 0.77,
            top1pct_share: 0.50,
            top10pct_share: 0.65,
            top5_share: 0.34,
            rate_mean_h: 750.0,
            rate_min_h: 343.0,
            rate_max_h: 1393.0,
            peak_per_min: 74.0,
            hour_mult: DAL09_HOUR_MULT.to_vec(),
            reuse_s: DAL09_REUSE_S.to_vec(),
            reuse_within_60s: 0.46,
            reuse_within_1h: 0.91,
        }
    }

    /// Measures `trace`.
    pub fn of(trace: &Trace) -> Self {
        let n_obj = trace.objects();
        let mut counts = vec![0u64; n_obj];
        let mut last = vec![None::<u64>; n_obj];
        let mut reuse: Vec<f64> = Vec::new();
        let mut requested = 0u128;
        let hours = (trace.duration_ms.div_ceil(3_600_000)).max(1) as usize;
        let mut per_hour = vec![0u64; hours];
        let mut per_min: std::collections::BTreeMap<u64, u64> = Default::default();
        for r in &trace.requests {
            let o = r.object as usize;
            counts[o] += 1;
            requested += u128::from(trace.sizes[o]);
            if let Some(prev) = last[o] {
                reuse.push((r.t_ms - prev) as f64 / 1000.0);
            }
            last[o] = Some(r.t_ms);
            per_hour[((r.t_ms / 3_600_000) as usize).min(hours - 1)] += 1;
            *per_min.entry(r.t_ms / 60_000).or_default() += 1;
        }
        let seen: Vec<usize> = (0..n_obj).filter(|&o| counts[o] > 0).collect();
        let unique = seen.len() as u64;
        let unique_bytes: u128 = seen.iter().map(|&o| u128::from(trace.sizes[o])).sum();
        let mut sizes: Vec<f64> = seen
            .iter()
            .map(|&o| trace.sizes[o] as f64 / MIB as f64)
            .collect();
        sizes.sort_by(f64::total_cmp);
        let share = |lo: f64, hi: f64| {
            let c = seen
                .iter()
                .filter(|&&o| {
                    let s = trace.sizes[o] as f64;
                    s >= lo && s < hi
                })
                .count();
            c as f64 / unique.max(1) as f64
        };
        let mut by_pop: Vec<u64> = seen.iter().map(|&o| counts[o]).collect();
        by_pop.sort_unstable_by(|a, b| b.cmp(a));
        let total = trace.requests.len() as f64;
        let top = |k: usize| by_pop.iter().take(k).sum::<u64>() as f64 / total.max(1.0);
        let pct = |p: f64| ((unique as f64 * p).round() as usize).max(1);
        reuse.sort_by(f64::total_cmp);
        let within =
            |s: f64| reuse.partition_point(|&x| x <= s) as f64 / (reuse.len().max(1)) as f64;
        let duration_h = trace.duration_ms as f64 / 3_600_000.0;
        let mean_h = total / duration_h.max(1e-9);
        let full_hours = (trace.duration_ms / 3_600_000) as usize;
        let full = &per_hour[..full_hours.clamp(1, hours)];
        let mut by_hod = [0f64; 24];
        let mut hod_n = [0f64; 24];
        for (h, &c) in full.iter().enumerate() {
            let hod = (h + trace.start_hour_utc as usize) % 24;
            by_hod[hod] += c as f64;
            hod_n[hod] += 1.0;
        }
        let hour_mult = (0..24)
            .map(|h| {
                if hod_n[h] > 0.0 {
                    by_hod[h] / hod_n[h] / mean_h.max(1e-9)
                } else {
                    0.0
                }
            })
            .collect();
        TraceStats {
            requests: trace.requests.len() as u64,
            duration_h,
            unique_objects: unique,
            unique_gb: unique_bytes as f64 / 1e9,
            requested_gb: requested as f64 / 1e9,
            puts: unique,
            gets: trace.requests.len() as u64 - unique,
            size_mib: SIZE_QUANTILES
                .iter()
                .map(|&q| quantile(&sizes, q))
                .collect(),
            share_10mb_100mb: share(10e6, 100e6),
            share_100mb_1gb: share(100e6, 1e9),
            share_over_1gb: share(1e9, f64::INFINITY),
            once_share: seen.iter().filter(|&&o| counts[o] == 1).count() as f64
                / unique.max(1) as f64,
            top1pct_share: top(pct(0.01)),
            top10pct_share: top(pct(0.10)),
            top5_share: top(5),
            rate_mean_h: mean_h,
            rate_min_h: full.iter().copied().min().unwrap_or(0) as f64,
            rate_max_h: full.iter().copied().max().unwrap_or(0) as f64,
            peak_per_min: per_min.values().copied().max().unwrap_or(0) as f64,
            hour_mult,
            reuse_s: REUSE_QUANTILES
                .iter()
                .map(|&q| quantile(&reuse, q))
                .collect(),
            reuse_within_60s: within(60.0),
            reuse_within_1h: within(3600.0),
        }
    }

    /// A two-column text table: `self` (measured) next to `reference` (published).
    pub fn compare(&self, reference: &TraceStats, label: &str) -> String {
        let mut out = String::new();
        let mut row = |name: &str, a: String, b: String| {
            let _ = writeln!(out, "{name:<34} {a:>14} {b:>14}");
        };
        row("statistic", label.into(), "dal09 published".into());
        row(
            "requests",
            self.requests.to_string(),
            reference.requests.to_string(),
        );
        row(
            "duration (h)",
            f1(self.duration_h),
            f1(reference.duration_h),
        );
        row(
            "unique objects",
            self.unique_objects.to_string(),
            reference.unique_objects.to_string(),
        );
        row("unique GB", f1(self.unique_gb), f1(reference.unique_gb));
        row(
            "requested GB",
            f1(self.requested_gb),
            f1(reference.requested_gb),
        );
        row(
            "PUT : GET",
            format!("{} : {}", self.puts, self.gets),
            format!("{} : {}", reference.puts, reference.gets),
        );
        for (i, q) in SIZE_QUANTILES.iter().enumerate() {
            row(
                &format!("size q{q} (MiB)"),
                f1(self.size_mib[i]),
                f1(reference.size_mib[i]),
            );
        }
        row(
            "objects 10-100 MB",
            pc(self.share_10mb_100mb),
            pc(reference.share_10mb_100mb),
        );
        row(
            "objects 100 MB-1 GB",
            pc(self.share_100mb_1gb),
            pc(reference.share_100mb_1gb),
        );
        row(
            "objects > 1 GB",
            pc(self.share_over_1gb),
            pc(reference.share_over_1gb),
        );
        row(
            "objects requested once",
            pc(self.once_share),
            pc(reference.once_share),
        );
        row(
            "requests to top 1% objects",
            pc(self.top1pct_share),
            pc(reference.top1pct_share),
        );
        row(
            "requests to top 10% objects",
            pc(self.top10pct_share),
            pc(reference.top10pct_share),
        );
        row(
            "requests to 5 hottest",
            pc(self.top5_share),
            pc(reference.top5_share),
        );
        row(
            "requests/h mean",
            f1(self.rate_mean_h),
            f1(reference.rate_mean_h),
        );
        row(
            "requests/h min (full hours)",
            f1(self.rate_min_h),
            f1(reference.rate_min_h),
        );
        row(
            "requests/h max (full hours)",
            f1(self.rate_max_h),
            f1(reference.rate_max_h),
        );
        row(
            "peak requests/min",
            f1(self.peak_per_min),
            f1(reference.peak_per_min),
        );
        for (i, q) in REUSE_QUANTILES.iter().enumerate() {
            row(
                &format!("reuse q{q} (s)"),
                f1(self.reuse_s[i]),
                f1(reference.reuse_s[i]),
            );
        }
        row(
            "re-accesses within 60 s",
            pc(self.reuse_within_60s),
            pc(reference.reuse_within_60s),
        );
        row(
            "re-accesses within 1 h",
            pc(self.reuse_within_1h),
            pc(reference.reuse_within_1h),
        );
        for h in 0..24 {
            row(
                &format!("hour-of-day multiplier {h:02}h"),
                format!("{:.2}", self.hour_mult[h]),
                format!("{:.2}", reference.hour_mult[h]),
            );
        }
        out
    }
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn pc(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}
