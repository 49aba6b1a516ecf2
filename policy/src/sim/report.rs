//! Text rendering of simulation results (pure: returns strings).

use std::fmt::Write as _;

use super::SimReport;

/// One table: total cost and its parts, hit ratios, memory, warm-ups, relocations, losses.
pub fn table(reports: &[SimReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>9} {:>8} {:>6} {:>6}",
        "policy",
        "total $",
        "cache $",
        "λ req $",
        "λ GB-s $",
        "S3 req $",
        "S3 sto $",
        "nodes $",
        "hit",
        "hit B",
        "mem GB-h",
        "warm-ups",
        "relocs",
        "lost",
        "recov",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<15} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>6.2}% {:>6.2}% {:>9.1} {:>9} {:>8} {:>6} {:>6}",
            r.policy,
            r.cost_usd,
            r.cache_tier_usd,
            r.cost.lambda_requests,
            r.cost.lambda_duration,
            r.cost.s3_requests,
            r.cost.s3_storage,
            r.cost.nodes,
            r.hit_ratio * 100.0,
            r.byte_hit_ratio * 100.0,
            r.memory_gb_hours,
            r.warmups,
            r.relocations,
            r.functions_lost,
            r.functions_recovered,
        );
    }
    out
}

/// Ratio lines: the sliding window's cost (total and memory tier) relative to each baseline.
pub fn ratios(reports: &[SimReport]) -> String {
    let mut out = String::new();
    let Some(sw) = reports.iter().find(|r| r.policy == crate::window::NAME) else {
        return out;
    };
    for r in reports.iter().filter(|r| r.policy != sw.policy) {
        let _ = writeln!(
            out,
            "sliding-window / {:<12} total {:.3}x ({:+.2}% saved), memory tier {:.3}x; hit ratio {:.2}% vs {:.2}%",
            r.policy,
            sw.cost_usd / r.cost_usd,
            (1.0 - sw.cost_usd / r.cost_usd) * 100.0,
            sw.cache_tier_usd / r.cache_tier_usd,
            sw.hit_ratio * 100.0,
            r.hit_ratio * 100.0,
        );
    }
    out
}

/// Extra details per policy (cluster size, peak functions, misses, billing counters).
pub fn details(reports: &[SimReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(
            out,
            "{:<15} puts {} gets {} hits {} refills {} bypassed {} | λ requests {} GB-s {:.0} | warm-ups billed {} | chunks moved {} | objects lost {} | evictions {} | peak functions {}{}",
            r.policy,
            r.puts,
            r.gets,
            r.hits,
            r.refills,
            r.bypassed,
            r.usage.lambda_requests,
            r.lambda_gb_seconds,
            r.warmups_billed,
            r.chunks_moved,
            r.objects_lost,
            r.evictions,
            r.peak_functions,
            r.cluster
                .as_ref()
                .map(|c| format!(" | cluster {c}"))
                .unwrap_or_default(),
        );
    }
    out
}
