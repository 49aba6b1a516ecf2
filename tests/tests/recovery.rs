//! Parallel recovery when the provider reclaims functions: under a GET load nothing fails and
//! every byte is exact, and every piece returns to `d + p` chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use integration_tests::{
    Backend, GatewayOptions, GatewayProc, LambdaEmulator, Seaweed, get_bytes, payload,
    tool_or_skip, unique_bucket, weed_bin,
};

const SECRET: &str = "recovery-test-secret-0123456789";

/// 4 + 2 chunks of at most 4 KiB on 6 functions: every piece has one chunk on each function.
fn config(extra_tier: &str) -> String {
    format!(
        r#"
[tier]
min_object_size = "1KiB"
chunk_size = "4KiB"
data_chunks = 4
parity_chunks = 2
recovery_parallelism = 4
{extra_tier}

[functions]
count = 6
memory_mb = 256
idle_tail = "3s"
"#
    )
}

fn start(name: &str, emu: &LambdaEmulator, backend: &Backend, extra_tier: &str) -> GatewayProc {
    GatewayProc::start_with(
        name,
        backend,
        GatewayOptions {
            env: vec![
                ("GATEWAY_LAMBDA_ENDPOINT".into(), emu.endpoint.clone()),
                ("GATEWAY_FUNCTION_SECRET".into(), SECRET.into()),
            ],
            config: Some(config(extra_tier)),
            ..Default::default()
        },
    )
}

async fn reclaim(emu: &LambdaEmulator, name: &str) {
    let endpoint = emu.endpoint.clone();
    let name = name.to_owned();
    let status = tokio::task::spawn_blocking(move || integration_tests::reclaim(&endpoint, &name))
        .await
        .unwrap();
    assert!((200..300).contains(&status), "reclaim: {status}");
}

/// Runs GET readers until `stop`; panics on any failed or wrong GET; returns the count.
fn readers(
    c: &Client,
    bucket: &str,
    objects: &Arc<Vec<(String, Vec<u8>)>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..4)
        .map(|r| {
            let (c, bucket, objects, stop) =
                (c.clone(), bucket.to_owned(), objects.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (k, v) = &objects[(n * 7 + r) % objects.len()];
                    let got = get_bytes(&c, &bucket, k).await;
                    assert!(
                        got.as_ref().is_ok_and(|g| g == v),
                        "GET {k} failed or differs: {:?}",
                        got.err()
                    );
                    n += 1;
                }
                n
            })
        })
        .collect()
}

async fn wait_recovered(gw: &GatewayProc, recoveries: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let finished = gw.metric("gateway_recoveries_total{phase=\"finished\"}");
        let below = gw.metric("gateway_pieces_below_redundancy");
        if finished >= recoveries && below == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "recovery not finished: {finished} finished, {below} pieces below redundancy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn load(c: &Client, bucket: &str, n: usize) -> Arc<Vec<(String, Vec<u8>)>> {
    c.create_bucket().bucket(bucket).send().await.unwrap();
    let objects: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("o/{i}"), payload(40_000 + i * 3_001, i as u64)))
        .collect();
    for (k, v) in &objects {
        c.put_object()
            .bucket(bucket)
            .key(k)
            .body(ByteStream::from(v.clone()))
            .send()
            .await
            .unwrap();
    }
    Arc::new(objects)
}

/// Reclaim one function holding a chunk of every piece while four clients read: no request
/// fails, every byte is exact, and the function's chunks are restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reclaim_under_load_restores_redundancy() {
    let emu = LambdaEmulator::start("recovery_one", SECRET);
    let gw = start("recovery_one", &emu, &Backend::Embedded, "");
    let c = gw.client();
    let bucket = unique_bucket("recovery");
    let objects = load(&c, &bucket, 24).await;
    // Persisted first, so the data chunks come back from the bucket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = readers(&c, &bucket, &objects, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    reclaim(&emu, "memfn-2").await;
    wait_recovered(&gw, 1.0, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("reader");
    }
    assert!(total > 10, "readers made progress ({total})");
    assert!(gw.metric("gateway_function_reclaims_total") >= 1.0);
    assert!(
        gw.metric("gateway_recovered_chunks_total") > 0.0,
        "chunks were restored"
    );
    assert_eq!(gw.metric("gateway_recoveries_total{phase=\"failed\"}"), 0.0);
    // Redundancy is back: lose two other functions; everything still reads from memory.
    reclaim(&emu, "memfn-0").await;
    reclaim(&emu, "memfn-5").await;
    let before = gw.metric("gateway_tier_bytes_from_bucket_total");
    for (k, v) in objects.iter() {
        assert_eq!(
            get_bytes(&c, &bucket, k).await.as_ref().ok(),
            Some(v),
            "{k} after more reclaims"
        );
    }
    assert_eq!(
        gw.metric("gateway_tier_bytes_from_bucket_total"),
        before,
        "served from memory"
    );
}

/// Reclaim `p` functions holding chunks of the same pieces, at once, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reclaim_p_functions_of_the_same_pieces() {
    let emu = LambdaEmulator::start("recovery_p", SECRET);
    let gw = start("recovery_p", &emu, &Backend::Embedded, "");
    let c = gw.client();
    let bucket = unique_bucket("recovery-p");
    let objects = load(&c, &bucket, 16).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = readers(&c, &bucket, &objects, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    reclaim(&emu, "memfn-1").await;
    reclaim(&emu, "memfn-3").await;
    wait_recovered(&gw, 2.0, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("reader");
    }
    assert_eq!(gw.metric("gateway_recoveries_total{phase=\"failed\"}"), 0.0);
}

/// Reclaim while writes are acknowledged but the bucket hangs: dirty objects are rebuilt from
/// the surviving chunks; after the bucket returns, every acknowledged object is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reclaim_during_write_back_loses_nothing() {
    if tool_or_skip(weed_bin(), "SeaweedFS `weed`").is_none() {
        return;
    }
    let weed = Seaweed::start("recovery_dirty").await;
    let emu = LambdaEmulator::start("recovery_dirty", SECRET);
    let gw = start(
        "recovery_dirty",
        &emu,
        &Backend::External(weed.s3_url.clone()),
        "",
    );
    let c = gw.client();
    let bucket = unique_bucket("recovery-dirty");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let weed_pid = nix::unistd::Pid::from_raw(weed.proc.pid() as i32);
    nix::sys::signal::killpg(weed_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let objects: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                format!("dirty/{i}"),
                payload(30_000 + i * 4_000, 50 + i as u64),
            )
        })
        .collect();
    for (k, v) in &objects {
        c.put_object()
            .bucket(&bucket)
            .key(k)
            .body(ByteStream::from(v.clone()))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(gw.metric("gateway_tier_dirty_objects"), 10.0);
    reclaim(&emu, "memfn-4").await;
    // The next reads reach the replacement instance: detected, recovered from the survivors.
    let ok = AtomicUsize::new(0);
    for (k, v) in &objects {
        assert_eq!(
            get_bytes(&c, &bucket, k).await.as_ref().ok(),
            Some(v),
            "{k} while dirty"
        );
        ok.fetch_add(1, Ordering::Relaxed);
    }
    wait_recovered(&gw, 1.0, Duration::from_secs(30)).await;
    assert_eq!(gw.metric("gateway_recoveries_total{phase=\"failed\"}"), 0.0);
    nix::sys::signal::killpg(weed_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.metric("gateway_tier_dirty_objects") > 0.0 {
        assert!(Instant::now() < deadline, "not persisted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let direct = weed.client();
    for (k, v) in &objects {
        assert_eq!(
            get_bytes(&direct, &bucket, k).await.as_ref().ok(),
            Some(v),
            "{k} in the bucket"
        );
    }
}
