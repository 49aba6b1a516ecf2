//! `make soak`: a correctness soak under faults. N clients write and read through the gateway
//! (SeaweedFS as the bucket, the embedded Lambda emulator's functions) while function processes
//! are killed with SIGKILL at a fixed interval; then the writes drain and every key is checked
//! through the gateway and in the bucket directly.
//!
//! Each client owns its keys (so the latest acknowledged version of each is known exactly) and
//! also writes a few keys shared by all clients (there the bucket must hold one of the
//! acknowledged versions, the same one the gateway serves). Reported: acknowledged writes,
//! failed writes by S3 code, stale reads, lost writes (the bucket or the gateway does not hold
//! the latest acknowledged version after the drain), stuck writes (not persisted after the
//! drain, dead letters included), and the peak RSS of the gateway and of each function.
//!
//! `soak [--minutes M] [--clients N] [--kill-every SECS] [--kill-count K] [--out DIR]`

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use integration_tests::{
    Backend, GatewayOptions, GatewayProc, Seaweed, descendants_of, get_bytes, md5_hex, payload,
};
use rand::{Rng, SeedableRng};

const MIB: usize = 1 << 20;
/// Keys each client owns.
const OWNED: usize = 8;
/// Keys every client writes.
const SHARED: usize = 16;
/// Longest time one request may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(120);

struct Args {
    minutes: f64,
    clients: usize,
    kill_every: Duration,
    kill_count: usize,
    out: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 10.0,
        clients: 32,
        kill_every: Duration::from_secs(10),
        kill_count: 2,
        out: PathBuf::from("target/soak"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag").clone();
        match flag.as_str() {
            "--minutes" => a.minutes = value().parse().expect("minutes"),
            "--clients" => a.clients = value().parse().expect("clients"),
            "--kill-every" => a.kill_every = Duration::from_secs(value().parse().expect("secs")),
            "--kill-count" => a.kill_count = value().parse().expect("count"),
            "--out" => a.out = PathBuf::from(value()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// What the clients saw, shared.
#[derive(Default)]
struct Ledger {
    /// Owned key -> md5 of its latest acknowledged version (None: deleted).
    owned: HashMap<String, String>,
    /// Shared key -> md5s of every acknowledged version.
    shared: HashMap<String, HashSet<String>>,
    failures: HashMap<String, u64>,
}

/// Peak RSS in KiB: the gateway, each function by name, the sum of the functions.
type Peaks = (u64, HashMap<String, u64>, u64);

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    reads: AtomicU64,
    stale_reads: AtomicU64,
    kills: AtomicU64,
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The function name of a process the emulator started (its AWS_LAMBDA_FUNCTION_NAME).
fn function_name(pid: i32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        std::str::from_utf8(kv)
            .ok()?
            .strip_prefix("AWS_LAMBDA_FUNCTION_NAME=")
            .map(str::to_owned)
    })
}

fn functions_of(gateway: u32) -> Vec<(i32, String)> {
    descendants_of(gateway)
        .into_iter()
        .filter_map(|p| function_name(p).map(|n| (p, n)))
        .collect()
}

async fn put(c: &Client, bucket: &str, key: &str, data: Vec<u8>) -> Result<(), String> {
    let fut = c
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send();
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.code().unwrap_or("dispatch").to_owned()),
        Err(_) => Err("client timeout".into()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    id: usize,
    c: Client,
    bucket: String,
    until: Instant,
    ledger: Arc<Mutex<Ledger>>,
    counters: Arc<Counters>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64);
    let lock = || {
        ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    while Instant::now() < until {
        let roll: f64 = rng.random();
        if roll < 0.6 {
            let size = if rng.random_bool(0.7) {
                rng.random_range(MIB..8 * MIB)
            } else {
                rng.random_range(64 << 10..512 << 10)
            };
            let shared = rng.random_bool(0.1);
            let key = if shared {
                format!("shared-{}", rng.random_range(0..SHARED))
            } else {
                format!("c{id}-{}", rng.random_range(0..OWNED))
            };
            let data = payload(size, rng.random());
            let md5 = md5_hex(&data);
            match put(&c, &bucket, &key, data).await {
                Ok(()) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    counters
                        .acked_bytes
                        .fetch_add(size as u64, Ordering::Relaxed);
                    let mut l = lock();
                    if shared {
                        l.shared.entry(key).or_default().insert(md5);
                    } else {
                        l.owned.insert(key, md5);
                    }
                }
                Err(code) => *lock().failures.entry(code).or_default() += 1,
            }
        } else {
            let key = format!("c{id}-{}", rng.random_range(0..OWNED));
            let Some(want) = lock().owned.get(&key).cloned() else {
                continue;
            };
            let got = tokio::time::timeout(OP_TIMEOUT, get_bytes(&c, &bucket, &key)).await;
            counters.reads.fetch_add(1, Ordering::Relaxed);
            match got {
                Ok(Ok(v)) if md5_hex(&v) == want => {}
                Ok(Ok(_)) => {
                    counters.stale_reads.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: STALE read of {key}");
                }
                Ok(Err(code)) => *lock().failures.entry(format!("GET {code}")).or_default() += 1,
                Err(_) => {
                    *lock()
                        .failures
                        .entry("GET client timeout".into())
                        .or_default() += 1
                }
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let a = args();
    std::fs::create_dir_all(&a.out).expect("out dir");
    let weed = Seaweed::start("soak").await;
    let gw = GatewayProc::start_with(
        "soak",
        &Backend::External(weed.s3_url.clone()),
        GatewayOptions {
            config: Some(
                "[functions]\ncount = 12\nmemory_mb = 512\n[policy.window]\nbucket = \"2m\"\n"
                    .into(),
            ),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = "soak".to_owned();
    c.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(a.minutes * 60.0);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let gateway_pid = gw.proc.pid();

    // RSS sampler: the gateway, each function (by name: a killed one comes back as a new pid).
    let peaks: Arc<Mutex<Peaks>> = Arc::default();
    let sampler = {
        let (peaks, stop) = (peaks.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                {
                    let mut p = peaks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(g) = vm_rss_kib(i32::try_from(gateway_pid).unwrap_or(0)) {
                        p.0 = p.0.max(g);
                    }
                    let mut sum = 0;
                    for (pid, name) in functions_of(gateway_pid) {
                        if let Some(r) = vm_rss_kib(pid) {
                            sum += r;
                            let e = p.1.entry(name).or_default();
                            *e = (*e).max(r);
                        }
                    }
                    p.2 = p.2.max(sum);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // Killer: SIGKILL `kill_count` function processes every `kill_every`.
    let killer = {
        let (stop, counters) = (stop.clone(), counters.clone());
        let (every, count) = (a.kill_every, a.kill_count);
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            loop {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut fns = functions_of(gateway_pid);
                for _ in 0..count.min(fns.len()) {
                    let (pid, name) = fns.swap_remove(rng.random_range(0..fns.len()));
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    counters.kills.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: killed {name} (pid {pid})");
                }
            }
        })
    };
    let clients: Vec<_> = (0..a.clients)
        .map(|i| {
            tokio::spawn(client_loop(
                i,
                c.clone(),
                bucket.clone(),
                until,
                ledger.clone(),
                counters.clone(),
            ))
        })
        .collect();
    for t in clients {
        t.await.expect("client");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = killer.await;
    let load_secs = started.elapsed().as_secs_f64();

    // Drain, then check every key through the gateway and in the bucket.
    let drain_start = Instant::now();
    while gw.metric("gateway_tier_dirty_objects") > 0.0
        && drain_start.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained_in = drain_start.elapsed().as_secs_f64();
    let stuck = gw.metric("gateway_tier_dirty_objects") + gw.metric("gateway_tier_dead_letters");
    let direct = weed.client();
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("clients done")
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lost = Vec::new();
    for (k, want) in &ledger.owned {
        let via_gw = get_bytes(&c, &bucket, k).await.map(|v| md5_hex(&v));
        let in_bucket = get_bytes(&direct, &bucket, k).await.map(|v| md5_hex(&v));
        if via_gw.as_ref() != Ok(want) || in_bucket.as_ref() != Ok(want) {
            lost.push(format!(
                "{k}: latest acknowledged {want}, gateway {via_gw:?}, bucket {in_bucket:?}"
            ));
        }
    }
    for (k, acked) in &ledger.shared {
        let via_gw = get_bytes(&c, &bucket, k).await.map(|v| md5_hex(&v));
        let in_bucket = get_bytes(&direct, &bucket, k).await.map(|v| md5_hex(&v));
        let ok = matches!((&via_gw, &in_bucket), (Ok(g), Ok(b)) if g == b && acked.contains(b));
        if !ok {
            lost.push(format!(
                "{k} (shared): gateway {via_gw:?}, bucket {in_bucket:?}, not the same acknowledged version"
            ));
        }
    }
    let (gw_peak, fn_peaks, fn_sum_peak) = peaks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let lost_count = lost.len();
    let stale = counters.stale_reads.load(Ordering::Relaxed);
    let mut fn_peaks: Vec<(String, u64)> = fn_peaks.into_iter().collect();
    fn_peaks.sort();
    let report = serde_json::json!({
        "minutes": a.minutes,
        "clients": a.clients,
        "kill_every_s": a.kill_every.as_secs(),
        "kill_count": a.kill_count,
        "load_seconds": load_secs,
        "acknowledged_writes": counters.acked.load(Ordering::Relaxed),
        "acknowledged_bytes": counters.acked_bytes.load(Ordering::Relaxed),
        "failed_operations": ledger.failures,
        "reads": counters.reads.load(Ordering::Relaxed),
        "stale_reads": counters.stale_reads.load(Ordering::Relaxed),
        "function_kills": counters.kills.load(Ordering::Relaxed),
        "keys_checked": ledger.owned.len() + ledger.shared.len(),
        "lost_writes": lost.len(),
        "lost": lost,
        "stuck_writes": stuck,
        "drained_in_seconds": drained_in,
        "peak_rss_mib": {
            "gateway": gw_peak / 1024,
            "functions_sum": fn_sum_peak / 1024,
            "function_memory_mb": 512,
            "per_function": fn_peaks.iter().map(|(n, k)| (n.clone(), k / 1024)).collect::<HashMap<_, _>>(),
        },
        "metrics": {
            "reclaims": gw.metric("gateway_function_reclaims_total"),
            "recoveries_started": gw.metric("gateway_recoveries_total{phase=\"started\"}"),
            "admitted": gw.metric("gateway_tier_admitted_total"),
            "admission_failures": gw.metric("gateway_tier_admission_failures_total"),
            "hits": gw.metric("gateway_tier_hits_total"),
            "decodes": gw.metric("gateway_tier_decodes_total"),
            "persisted": gw.metric("gateway_tier_persisted_total"),
            "persist_failures": gw.metric("gateway_tier_persist_failures_total"),
            "dead_lettered": gw.metric("gateway_tier_dead_lettered_total"),
            "slowdowns": gw.metric("gateway_tier_slowdowns_total"),
        },
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    std::fs::write(a.out.join("soak.json"), &text).expect("write report");
    println!("{text}");
    if lost_count > 0 || stuck > 0.0 || stale > 0 {
        std::process::exit(1);
    }
}
