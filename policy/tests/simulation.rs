//! The simulator: the cost model against hand-computed numbers, a small deterministic
//! simulation of all three policies, determinism, and the CLI's output formats.

use policy::cost::{Prices, Usage};
use policy::sim::{self, SimConfig};
use policy::trace::synth::{self, SynthConfig};
use policy::trace::{Request, Trace};
use policy::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
}

#[test]
fn cost_model_matches_hand_computed_prices() {
    let u = Usage {
        lambda_requests: 1_000_000,                  // $0.20
        lambda_mb_ms: 1024 * 1000 * 3600,            // 1 GB-hour = 3600 GB-s: $0.06000012
        s3_put_requests: 1000,                       // $0.005
        s3_get_requests: 1000,                       // $0.0004
        s3_byte_ms: (1u128 << 30) * 730 * 3_600_000, // 1 GB-month: $0.023
        node_ms: 2 * 3_600_000,                      // 2 node-hours at $0.5: $1.00
    };
    let c = u.cost(&Prices::default(), 0.5);
    assert!(close(c.lambda_requests, 0.20));
    assert!(close(c.lambda_duration, 0.060_000_12));
    assert!(close(c.s3_requests, 0.0054));
    assert!(close(c.s3_storage, 0.023));
    assert!(close(c.nodes, 1.0));
    assert!(close(c.total(), 1.288_400_12));
    assert!(close(c.cache_tier(), 1.260_000_12));
}

fn one_object_trace(size: u64, duration_ms: u64, gets_at: &[u64]) -> Trace {
    let mut requests = vec![Request { t_ms: 0, object: 0 }];
    requests.extend(gets_at.iter().map(|&t_ms| Request { t_ms, object: 0 }));
    Trace {
        requests,
        keys: vec!["obj".into()],
        sizes: vec![size],
        duration_ms,
        start_hour_utc: 0,
    }
}

#[test]
fn one_put_in_the_sliding_window_costs_what_the_hand_says() {
    // One 100 MB object written at t=0, then nothing for 10 minutes (minus 1 ms, so the
    // next bucket does not open). No jitter, no reclaims.
    let trace = one_object_trace(100_000_000, 599_999, &[]);
    let pc = PolicyConfig::SlidingWindow(WindowConfig {
        active_jitter_ms: 0,
        degraded_jitter_ms: 0,
        ..WindowConfig::default()
    });
    let cfg = SimConfig {
        reclaim_per_function_hour: 0.0,
        ..SimConfig::default()
    };
    let r = sim::run(&trace, &pc, &cfg, &mut |_, _| {}).unwrap();

    // Bucket 0 opens with 12 functions, each warmed at once (a 20 ms invocation). The object
    // is one piece (100 MB <= 10 x 10 MiB) of 12 chunks of 10 MB; each write takes
    // 2 ms + 10 MB / 40 MB/s = 252 ms, queued behind the warm-up in the same invocation:
    // busy until 272 ms, invoked until 292 ms (20 ms tail). Then a warm-up every minute,
    // at 1..9 min: 9 x 12 more invocations of 20 ms.
    let requests = 12 + 9 * 12;
    let mb_ms: u128 = (12 * 292 + 9 * 12 * 20) * 1536;
    assert_eq!(r.usage.lambda_requests, requests);
    assert_eq!(r.usage.lambda_mb_ms, mb_ms);
    assert_eq!((r.warmups, r.warmups_billed), (120, 120));
    // S3: 100 MB > 64 MiB: multipart create + 2 parts + complete.
    assert_eq!(r.usage.s3_put_requests, 4);
    assert_eq!(r.usage.s3_byte_ms, 100_000_000u128 * 599_999);
    let p = Prices::default();
    assert!(close(r.cost.lambda_requests, 120.0 * 0.2e-6));
    assert!(close(
        r.cost.lambda_duration,
        mb_ms as f64 / 1024.0 / 1000.0 * 0.000_016_666_7
    ));
    assert!(close(r.cost.s3_requests, 4.0 * 0.005 / 1000.0));
    let gb_month = 1e8 * 599_999.0 / (1u64 << 30) as f64 / (730.0 * 3_600_000.0);
    assert!(close(r.cost.s3_storage, gb_month * p.s3_per_gb_month));
    assert!(close(r.cost_usd, r.cost.total()));
    // 12 functions of 1.5 GB held for 599.999 s.
    assert!(close(
        r.memory_gb_hours,
        12.0 * 1.5 * 599_999.0 / 3_600_000.0
    ));
    assert_eq!((r.puts, r.gets, r.peak_functions), (1, 0, 12));
}

#[test]
fn a_provisioned_cluster_costs_node_hours() {
    // Two hours; the object is read back after one hour (a hit).
    let trace = one_object_trace(1_000_000, 7_200_000, &[3_600_000]);
    let pc = PolicyConfig::Provisioned(ProvisionedConfig::sized_for(
        1_000_000,
        &provisioned::default_catalogue(),
        0.75,
    ));
    let r = sim::run(&trace, &pc, &SimConfig::default(), &mut |_, _| {}).unwrap();
    assert_eq!(r.cluster.as_deref(), Some("1 x cache.r6g.large"));
    assert!(close(r.cost.nodes, 2.0 * 0.206));
    assert_eq!(r.cost.lambda_requests + r.cost.lambda_duration, 0.0);
    assert!(close(r.cost.s3_requests, 0.005 / 1000.0));
    assert_eq!((r.gets, r.hits), (1, 1));
    assert!(close(r.hit_ratio, 1.0));
    assert!(close(
        r.memory_gb_hours,
        2.0 * (13.07 * (1u64 << 30) as f64).floor() / (1u64 << 30) as f64
    ));
}

fn small_trace(seed: u64) -> Trace {
    synth::generate(&SynthConfig {
        seed,
        duration_h: 4.0,
        requests_per_hour: 250.0,
        universe: 20_000,
        ..SynthConfig::default()
    })
    .unwrap()
}

fn contenders(trace: &Trace, seed: u64) -> Vec<PolicyConfig> {
    sim::default_contenders(trace, seed)
}

fn run_all(trace: &Trace, seed: u64) -> Vec<sim::SimReport> {
    let cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    contenders(trace, seed)
        .iter()
        .map(|c| sim::run(trace, c, &cfg, &mut |_, _| {}).unwrap())
        .collect()
}

#[test]
fn small_simulation_of_all_policies() {
    let trace = small_trace(5);
    assert_eq!(trace.requests.len(), 1000);
    let mut progress = Vec::new();
    let cfg = SimConfig {
        seed: 5,
        ..SimConfig::default()
    };
    let pcs = contenders(&trace, 5);
    let sw = sim::run(&trace, &pcs[0], &cfg, &mut |d, t| progress.push((d, t))).unwrap();
    assert_eq!(progress.last(), Some(&(1000, 1000)));
    let all = run_all(&trace, 5);
    assert_eq!(all[0], sw);
    let reports = all;
    let names: Vec<&str> = reports.iter().map(|r| r.policy.as_str()).collect();
    assert_eq!(names, ["sliding-window", "infinicache", "provisioned"]);
    for r in &reports {
        assert_eq!(r.puts + r.gets, 1000, "{}", r.policy);
        assert!(r.hits <= r.gets && r.hit_bytes <= r.get_bytes);
        assert!(
            r.hit_ratio > 0.5 && r.hit_ratio <= 1.0,
            "{} {}",
            r.policy,
            r.hit_ratio
        );
        assert!(r.cost_usd > 0.0 && close(r.cost_usd, r.cost.total()));
        assert!(!r.timeline.is_empty());
        assert!(
            r.timeline
                .windows(2)
                .all(|w| w[0].cost_usd <= w[1].cost_usd + 1e-12)
        );
    }
    let (sw, ic, pr) = (&reports[0], &reports[1], &reports[2]);
    // The window warms only what holds data (and the nursery) and holds fewer functions.
    assert!(sw.warmups < ic.warmups);
    assert!(sw.memory_gb_hours < ic.memory_gb_hours);
    assert!(sw.relocations > 0);
    // The cluster is billed for every hour of the trace, nothing else of the memory tier.
    let (nodes, price) = pcs[2].node_pricing().unwrap();
    assert!(close(pr.cost.nodes, f64::from(nodes) * price * 4.0));
    assert!(pr.cost_usd > 10.0 * sw.cost_usd);
    // Text output has one row per policy and the ratio lines.
    let table = sim::report::table(&reports);
    assert_eq!(table.lines().count(), 4);
    assert!(sim::report::ratios(&reports).contains("sliding-window / infinicache"));
}

#[test]
fn same_seed_same_numbers() {
    let a = run_all(&small_trace(9), 9);
    let b = run_all(&small_trace(9), 9);
    assert_eq!(a, b);
    let c = run_all(&small_trace(10), 10);
    assert_ne!(a[0].cost_usd, c[0].cost_usd);
    assert_eq!(small_trace(9), small_trace(9));
}

#[test]
fn synthetic_default_matches_the_published_statistics() {
    let t = synth::generate(&SynthConfig::default()).unwrap();
    let s = policy::trace::stats::TraceStats::of(&t);
    let p = policy::trace::stats::TraceStats::published_dal09();
    let within = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b;
    assert_eq!(s.requests, p.requests);
    assert!(within(
        s.unique_objects as f64,
        p.unique_objects as f64,
        0.03
    ));
    assert!(within(s.unique_gb, p.unique_gb, 0.10));
    assert!(within(s.requested_gb, p.requested_gb, 0.20));
    assert!(within(s.once_share, p.once_share, 0.05));
    assert!(within(s.top1pct_share, p.top1pct_share, 0.05));
    assert!(within(s.top10pct_share, p.top10pct_share, 0.05));
    assert!(within(s.top5_share, p.top5_share, 0.05));
    assert!(within(s.reuse_within_60s, p.reuse_within_60s, 0.05));
    assert!(within(s.reuse_within_1h, p.reuse_within_1h, 0.02));
    assert!(within(s.reuse_s[6], p.reuse_s[6], 0.10)); // median
    assert!(within(s.size_mib[5], p.size_mib[5], 0.05)); // median size
}

#[cfg(feature = "sim-io")]
#[test]
fn cli_prints_json_keyed_by_policy() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_policy-sim"))
        .args([
            "--duration-h",
            "2",
            "--rate",
            "150",
            "--objects",
            "20000",
            "--infinicache-functions",
            "40",
            "--format",
            "json",
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let map = v.as_object().unwrap();
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    assert_eq!(keys, ["infinicache", "provisioned", "sliding-window"]);
    for (_, r) in map {
        assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
        let h = r["hit_ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&h));
    }
}

#[cfg(feature = "sim-io")]
#[test]
fn cli_reads_a_trace_file_and_checks_stats() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    let mut body = String::from("timestamp,http.request.uri,http.response.written\n");
    for i in 0..30 {
        body.push_str(&format!(
            "2017-06-20 00:{:02}:00.000,v2/r/i/blobs/{},{}\n",
            i,
            i % 7,
            20_000_000 + (i % 7) * 1_000_000
        ));
    }
    std::fs::write(&csv, body).unwrap();
    let bin = env!("CARGO_BIN_EXE_policy-sim");
    let out = std::process::Command::new(bin)
        .args(["--trace", csv.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("t.csv: 30 requests, 7 objects"), "{text}");
    assert!(text.contains("sliding-window / provisioned"));
    let out = std::process::Command::new(bin)
        .args(["--trace", csv.to_str().unwrap(), "--check-stats"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("unique objects"), "{text}");
    assert!(text.contains("12541"));
}
