//! Function faults through the S3 API: after a burst of kill -9 of function processes, idle
//! warm-ups find every function as the gateway left it (no further reclaim or recovery); and
//! fill/delete cycles keep every function process under its memory size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use integration_tests::{
    Backend, GatewayOptions, GatewayProc, Proc, bin, descendants_of, free_port, log_dir, payload,
    unique_bucket,
};

const MIB: u64 = 1024 * 1024;
const SECRET: &str = "function-faults-secret-0123456789";

/// The function processes below `pid` (the gateway's embedded emulator, or an emulator):
/// those the emulator started with a Lambda environment.
fn function_pids(pid: u32) -> Vec<i32> {
    descendants_of(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(b"AWS_LAMBDA_FUNCTION_NAME="))
            })
        })
        .collect()
}

/// A `VmRSS:` / `VmHWM:` field of /proc/PID/status, bytes (`None` once the process is gone).
fn status_bytes(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Writers putting objects of 100–600 KiB (chunks of 25–150 KiB with 4 + 2) under `keys`
/// keys until `stop`; returns the PUTs acknowledged.
fn writers(
    c: &Client,
    bucket: &str,
    n: usize,
    keys: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..n)
        .map(|w| {
            let (c, bucket, stop) = (c.clone(), bucket.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let len = 100_000 + (i * 7_919) % 500_000;
                    let put = c
                        .put_object()
                        .bucket(&bucket)
                        .key(format!("k{}", i % keys))
                        .body(ByteStream::from(payload(len, i as u64)))
                        .send()
                        .await;
                    ok += usize::from(put.is_ok());
                    i += n;
                }
                ok
            })
        })
        .collect()
}

/// The drill of issue 15: kill -9 of two function processes every 400 ms under writes, then
/// idle. Once the real losses are found and recovered, warm-up after warm-up finds every
/// function's memory as the gateway left it: no reclaim, no recovery. (Before the fix every
/// warm-up after a serving session reported `Diverged`, and the gateway recovered the
/// function again, forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_warm_ups_after_a_kill_burst_recover_nothing() {
    let gw = GatewayProc::start_with(
        "function_faults_kill_burst",
        &Backend::Embedded,
        GatewayOptions {
            config: Some(String::from(
                "[tier]\nmin_object_size = \"1KiB\"\nchunk_size = \"256KiB\"\ndata_chunks = 4\n\
                 parity_chunks = 2\nrecovery_parallelism = 4\n\n[functions]\ncount = 6\n\
                 memory_mb = 192\nidle_tail = \"300ms\"\n\n[policy.window]\nactive_warmup = \"1s\"\n",
            )),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("kills");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(&c, &bucket, 4, 40, &stop);
    let killed = Arc::new(AtomicUsize::new(0));
    let burst_end = Instant::now() + Duration::from_secs(4);
    let mut turn = 0usize;
    while Instant::now() < burst_end {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let pids = function_pids(gw.proc.pid());
        for k in 0..2 {
            if let Some(p) = pids.get((turn * 3 + k * 5) % pids.len().max(1)) {
                kill9(*p);
                killed.fetch_add(1, Ordering::Relaxed);
            }
        }
        turn += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut puts = 0;
    for t in tasks {
        puts += t.await.unwrap();
    }
    assert!(puts > 10, "writes went on during the burst ({puts})");
    let killed = killed.load(Ordering::Relaxed);

    // Settle: every killed function found (its next warm-up) and recovered.
    let reclaims = |gw: &GatewayProc| gw.metric("gateway_function_reclaims_total");
    let settle_by = Instant::now() + Duration::from_secs(25);
    let mut last = (reclaims(&gw), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = reclaims(&gw);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let quiet = last.1.elapsed() > Duration::from_secs(3);
        if (quiet && gw.metric("gateway_pieces_below_redundancy") == 0.0)
            || Instant::now() > settle_by
        {
            break;
        }
    }
    let (r0, s0) = (
        reclaims(&gw),
        gw.metric("gateway_recoveries_total{phase=\"started\"}"),
    );
    let w0 = gw.metric("gateway_function_warmups_total");
    eprintln!("{killed} kills, {puts} puts: {r0} reclaims, {s0} recoveries, then idle");
    assert!(r0 >= 1.0, "the kills were noticed");

    // Idle: five warm-up intervals.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (r1, s1) = (
        reclaims(&gw),
        gw.metric("gateway_recoveries_total{phase=\"started\"}"),
    );
    let w1 = gw.metric("gateway_function_warmups_total");
    assert!(
        w1 >= w0 + 12.0,
        "warm-ups went on while idle ({w0} -> {w1})"
    );
    assert_eq!(
        (r1, s1),
        (r0, s0),
        "idle warm-ups reported functions lost: reclaims {r0} -> {r1}, recoveries {s0} -> {s1}"
    );
}

/// Fill/delete cycles through the S3 API on functions with little reserve (64 MB, 24 MB
/// overhead): no function process's resident set ever passes its memory size (VmHWM), and
/// what deletes free goes back to the operating system. (End to end, the policy's 90% stop
/// keeps the functions from filling up, so this passed before the fix too; the soak that
/// fills functions to FULL is `mem-function/tests/memory.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fill_and_delete_cycles_keep_every_function_under_its_memory_size() {
    let logs = log_dir("function_faults_memory");
    let port = free_port();
    let mut cmd = std::process::Command::new(bin("lambda-emulator"));
    cmd.arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--memory-mb")
        .arg("64")
        .arg("--env")
        .arg(format!("MEMFN_SECRET={SECRET}"))
        .arg("--env")
        .arg("MEMFN_OVERHEAD_MB=24")
        .arg("--env")
        .arg(format!("MEMFN_MAX_CHUNK={}", 4 * MIB))
        .arg("--no-reclaim")
        .arg("--log-dir")
        .arg(logs.join("functions"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(logs.join("emulator.stdout.log")).unwrap())
        .stderr(std::fs::File::create(logs.join("emulator.stderr.log")).unwrap());
    std::fs::create_dir_all(logs.join("functions")).unwrap();
    let emu = Proc::spawn(cmd, "lambda-emulator (function_faults_memory)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "lambda-emulator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let gw = GatewayProc::start_with(
        "function_faults_memory",
        &Backend::Embedded,
        GatewayOptions {
            env: vec![
                (
                    "GATEWAY_LAMBDA_ENDPOINT".into(),
                    format!("http://127.0.0.1:{port}"),
                ),
                ("GATEWAY_FUNCTION_SECRET".into(), SECRET.into()),
            ],
            config: Some(String::from(
                "[tier]\nmin_object_size = \"1KiB\"\nchunk_size = \"256KiB\"\ndata_chunks = 4\n\
                 parity_chunks = 2\n\n[functions]\ncount = 6\nmemory_mb = 64\nidle_tail = \"1s\"\n\n\
                 [policy.window]\nreserved_mb = 24\n",
            )),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("fill");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let limit = 64 * MIB;
    let mut next = 0usize;
    let mut held: Vec<String> = Vec::new();
    for cycle in 0..2 {
        // About 1.2 x what the six functions hold (40 MiB each): the last puts find them full.
        let mut bytes = 0usize;
        while bytes < 6 * 48 * MIB as usize {
            let puts = (0..4).map(|_| {
                next += 1;
                let len = 100_000 + (next * 7_919 * (cycle + 1)) % 900_000;
                bytes += len * 6 / 4;
                let key = format!("o{next}");
                let c = c.clone();
                let bucket = bucket.clone();
                held.push(key.clone());
                async move {
                    c.put_object()
                        .bucket(&bucket)
                        .key(&key)
                        .body(ByteStream::from(payload(len, next as u64)))
                        .send()
                        .await
                        .unwrap();
                }
            });
            futures::future::join_all(puts).await;
        }
        // Delete 60% (their chunks leave the functions).
        let keep = held.len() * 2 / 5;
        for key in held.drain(keep..) {
            c.delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
        }
        let pids = function_pids(emu.pid());
        assert_eq!(pids.len(), 6, "six function processes");
        for p in pids {
            let hwm = status_bytes(p, "VmHWM:").unwrap_or(0);
            let rss = status_bytes(p, "VmRSS:").unwrap_or(0);
            eprintln!(
                "cycle {cycle}: function {p} rss {} MiB, peak {} MiB",
                rss / MIB,
                hwm / MIB
            );
            assert!(
                hwm < limit,
                "cycle {cycle}: function process {p} reached {} MiB, over its {} MiB",
                hwm / MIB,
                limit / MIB
            );
        }
    }
    // Everything deleted: the memory goes back.
    for key in held.drain(..) {
        c.delete_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in function_pids(emu.pid()) {
        let rss = status_bytes(p, "VmRSS:").unwrap_or(0);
        assert!(
            rss < 24 * MIB,
            "function process {p} keeps {} MiB resident holding nothing",
            rss / MIB
        );
    }
    drop(gw);
    drop(emu);
}
