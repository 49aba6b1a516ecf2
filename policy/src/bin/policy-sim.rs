//! `policy-sim`: replays a trace (the real dal09 trace, or a calibrated synthetic one) against
//! every policy and prints one cost table. Thin: the logic is in `policy::{sim, trace, io}`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow_free::Result;
use clap::{Parser, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use policy::sim::{self, SimConfig, SimReport};
use policy::trace::stats::TraceStats;
use policy::trace::synth::{self, SynthConfig};
use policy::trace::working_set::peak_working_set;
use policy::{PolicyConfig, PolicyKind};

/// `main` returns errors as boxed trait objects (no anyhow in this crate).
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

const AFTER_HELP: &str = "\
Replay convention: an object's first access is a PUT, later accesses are GETs, a GET miss
re-fills. Hit ratios are over GETs.

Provisioned cache sizing: the cluster is the cheapest single-node-type ElastiCache cluster
(cache.r6g/r5 large and xlarge, r5.24xlarge) whose usable memory (75% of node memory;
ElastiCache reserves 25% by default) holds the trace's peak working set: the largest total size
of distinct objects accessed within any window of the sliding window's horizon (18 x 10 min =
180 min). Under LRU such a cache hits every re-access that comes within 180 min, i.e. at least
what the sliding window keeps, as the papers sized their ElastiCache clusters to the workload.

Without --trace, the trace is synthetic: Zipf popularity, per-object reuse gaps drawn from the
dal09 reuse-time quantiles, sizes from its size quantiles, first accesses weighted by its
hour-of-day multipliers (see --check-stats).";

/// Simulate the sliding window, an InfiniCache-style pool and a provisioned cache on one trace.
#[derive(Parser, Debug)]
#[command(name = "policy-sim", version, after_help = AFTER_HELP)]
struct Args {
    /// Trace to replay: the dal09 CSV, a .csv.gz, or the .tar.gz it ships in. Omit for the
    /// calibrated synthetic default.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Seed for the synthetic trace, the policies' RNGs and the failure injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write cost.png and window.png into this directory (created if needed).
    #[arg(long, value_name = "DIR")]
    plot_dir: Option<PathBuf>,
    /// Print the trace's statistics next to the published dal09 ones, then exit.
    #[arg(long)]
    check_stats: bool,
    /// Policies to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PolicyKind::ALL)]
    policies: Vec<PolicyKind>,
    /// Synthetic trace: length in hours.
    #[arg(long, default_value_t = SynthConfig::default().duration_h)]
    duration_h: f64,
    /// Synthetic trace: mean requests per hour.
    #[arg(long, default_value_t = SynthConfig::default().requests_per_hour)]
    rate: f64,
    /// Synthetic trace: objects the popularity law ranges over.
    #[arg(long, default_value_t = SynthConfig::default().universe)]
    objects: u32,
    /// Synthetic trace: Zipf exponent outside the hot set.
    #[arg(long, default_value_t = SynthConfig::default().zipf_s)]
    zipf: f64,
    /// Synthetic trace: share of requests to the 5 hottest objects (roll-outs).
    #[arg(long, default_value_t = SynthConfig::default().hot_share)]
    hot_share: f64,
    /// Synthetic trace: share of small objects (< 10 MiB; dal09 has none).
    #[arg(long, default_value_t = 0.0)]
    small_share: f64,
    /// Provider reclaims per function-hour (functions holding data).
    #[arg(long, default_value_t = SimConfig::default().reclaim_per_function_hour)]
    reclaim_rate: f64,
    /// Billed duration of a warm-up invocation, ms.
    #[arg(long, default_value_t = sim::FunctionModel::default().warmup_ms)]
    warmup_ms: u64,
    /// A function stays invoked this long after its last request, ms.
    #[arg(long, default_value_t = sim::FunctionModel::default().tail_ms)]
    tail_ms: u64,
    /// Bytes per second a function moves, in MB/s.
    #[arg(long, default_value_t = sim::FunctionModel::default().bytes_per_sec as f64 / 1e6)]
    bandwidth_mbps: f64,
    /// InfiniCache-style pool size (functions).
    #[arg(long, default_value_t = 400)]
    infinicache_functions: u32,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (trace, label) = match &args.trace {
        Some(path) => (
            policy::io::read_trace(path)?,
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
        ),
        None => {
            let cfg = SynthConfig {
                seed: args.seed,
                duration_h: args.duration_h,
                requests_per_hour: args.rate,
                universe: args.objects,
                zipf_s: args.zipf,
                hot_share: args.hot_share,
                small_share: args.small_share,
                ..SynthConfig::default()
            };
            (
                synth::generate(&cfg)?,
                format!("synthetic, seed {}", args.seed),
            )
        }
    };

    if args.check_stats {
        let stats = TraceStats::of(&trace);
        match args.format {
            Format::Table => print!(
                "{}",
                stats.compare(&TraceStats::published_dal09(), "this trace")
            ),
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "trace": stats,
                    "dal09_published": TraceStats::published_dal09(),
                }))?
            ),
        }
        return Ok(());
    }

    let sim_cfg = SimConfig {
        seed: args.seed,
        reclaim_per_function_hour: args.reclaim_rate,
        function: sim::FunctionModel {
            bytes_per_sec: (args.bandwidth_mbps * 1e6) as u64,
            tail_ms: args.tail_ms,
            warmup_ms: args.warmup_ms,
            ..sim::FunctionModel::default()
        },
        ..SimConfig::default()
    };
    let contenders: Vec<PolicyConfig> = sim::default_contenders(&trace, args.seed)
        .into_iter()
        .filter(|c| args.policies.contains(&c.kind()))
        .map(|c| match c {
            PolicyConfig::Infinicache(mut ic) => {
                ic.functions = args.infinicache_functions;
                PolicyConfig::Infinicache(ic)
            }
            other => other,
        })
        .collect();

    let show = !args.no_progress && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix:>15} [{bar:40}] {pos}/{len} requests {eta}")?
        .progress_chars("=> ");
    let total = trace.requests.len() as u64;
    let reports: Vec<SimReport> = std::thread::scope(|s| {
        let handles: Vec<_> = contenders
            .iter()
            .map(|c| {
                let bar = multi.add(ProgressBar::new(total));
                bar.set_style(style.clone());
                bar.set_prefix(c.kind().name());
                let (trace, sim_cfg) = (&trace, &sim_cfg);
                s.spawn(move || {
                    let r = sim::run(trace, c, sim_cfg, &mut |done, _| bar.set_position(done));
                    bar.finish();
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread panicked"))
            .collect::<std::result::Result<Vec<_>, _>>()
    })?;
    multi.clear()?;

    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir)?;
        let files = policy::io::plot::write_plots(dir, &reports, &label)?;
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }

    match args.format {
        Format::Json => {
            let map: serde_json::Map<String, serde_json::Value> = reports
                .iter()
                .map(|r| Ok((r.policy.clone(), serde_json::to_value(r)?)))
                .collect::<std::result::Result<_, serde_json::Error>>()?;
            println!("{}", serde_json::to_string_pretty(&map)?);
        }
        Format::Table => {
            let window = policy::WindowConfig::default();
            let horizon = window.bucket_ms * u64::from(window.window_buckets);
            let (ws, at) = peak_working_set(&trace, horizon);
            println!(
                "trace: {label}: {} requests, {} objects, {:.1} h; peak {}-min working set {:.1} GB at {:.1} h",
                trace.requests.len(),
                trace.objects(),
                trace.duration_ms as f64 / 3.6e6,
                horizon / 60_000,
                ws as f64 / 1e9,
                at as f64 / 3.6e6,
            );
            print!("{}", sim::report::table(&reports));
            print!("{}", sim::report::ratios(&reports));
            print!("{}", sim::report::details(&reports));
        }
    }
    Ok(())
}
