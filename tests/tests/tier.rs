//! The write-back tier through the S3 API: a model-based test against an in-memory model, reads
//! while the provider reclaims functions, kill -9 of everything after acknowledged writes, and
//! a backing store that goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use integration_tests::{
    Backend, GatewayOptions, GatewayProc, LambdaEmulator, Seaweed, free_port, get_bytes, md5_hex,
    payload, put_bytes, s3_client, small_tier_config, tool_or_skip, unique_bucket, weed_bin,
};
use proptest::prelude::*;

/// Small pieces (4 x 4 KiB data chunks + 2 parity) so that test objects span many pieces.
fn tier_config(extra: &str) -> String {
    small_tier_config("4KiB", &format!("min_object_size = \"1KiB\"\n{extra}"), "")
}

async fn wait_persisted(gw: &GatewayProc, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while gw.metric("gateway_tier_dirty_objects") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "writes not persisted within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(c: &Client, bucket: &str, key: &str, data: &[u8]) -> Result<String, String> {
    put_bytes(c, bucket, key, data).await
}

#[derive(Debug, Clone)]
enum Op {
    Put { key: usize, size: usize, seed: u64 },
    Get { key: usize },
    Range { key: usize, a: usize, b: usize },
    Head { key: usize },
    Delete { key: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0usize..4;
    let size = prop_oneof![
        Just(0usize),
        Just(700),
        1024usize..5000,
        15_000usize..70_000
    ];
    prop_oneof![
        3 => (key.clone(), size, any::<u64>()).prop_map(|(key, size, seed)| Op::Put { key, size, seed }),
        3 => key.clone().prop_map(|key| Op::Get { key }),
        2 => (key.clone(), any::<usize>(), any::<usize>()).prop_map(|(key, a, b)| Op::Range { key, a, b }),
        1 => key.clone().prop_map(|key| Op::Head { key }),
        1 => key.prop_map(|key| Op::Delete { key }),
    ]
}

async fn run_ops(c: &Client, bucket: &str, ops: &[Op]) -> HashMap<String, Vec<u8>> {
    let mut model: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put { key, size, seed } => {
                let k = format!("k{key}");
                let data = payload(*size, *seed);
                let etag = put(c, bucket, &k, &data)
                    .await
                    .unwrap_or_else(|e| panic!("op {i} {op:?}: {e}"));
                assert_eq!(
                    etag.trim_matches('"'),
                    md5_hex(&data),
                    "op {i} {op:?}: etag"
                );
                model.insert(k, data);
            }
            Op::Get { key } => {
                let k = format!("k{key}");
                let got = get_bytes(c, bucket, &k).await;
                match model.get(&k) {
                    Some(want) => assert!(
                        got.as_ref().is_ok_and(|g| g == want),
                        "op {i} {op:?}: bytes differ"
                    ),
                    None => assert_eq!(got, Err("NoSuchKey".to_owned()), "op {i} {op:?}"),
                }
            }
            Op::Range { key, a, b } => {
                let k = format!("k{key}");
                match model.get(&k) {
                    Some(want) if !want.is_empty() => {
                        let start = a % want.len();
                        let end = start + b % (want.len() - start);
                        let r = c
                            .get_object()
                            .bucket(bucket)
                            .key(&k)
                            .range(format!("bytes={start}-{end}"))
                            .send()
                            .await
                            .unwrap_or_else(|e| panic!("op {i} {op:?}: {e:?}"));
                        assert_eq!(
                            r.content_range.as_deref(),
                            Some(format!("bytes {start}-{end}/{}", want.len()).as_str()),
                            "op {i} {op:?}"
                        );
                        let got = r.body.collect().await.unwrap().into_bytes();
                        assert!(
                            got.as_ref() == &want[start..=end],
                            "op {i} {op:?}: range bytes differ"
                        );
                    }
                    Some(_) => {}
                    None => assert_eq!(get_bytes(c, bucket, &k).await, Err("NoSuchKey".to_owned())),
                }
            }
            Op::Head { key } => {
                let k = format!("k{key}");
                let h = c.head_object().bucket(bucket).key(&k).send().await;
                match model.get(&k) {
                    Some(want) => {
                        let h = h.unwrap_or_else(|e| panic!("op {i} {op:?}: {e:?}"));
                        assert_eq!(h.content_length, Some(want.len() as i64), "op {i} {op:?}");
                        assert_eq!(
                            h.e_tag.as_deref().map(|e| e.trim_matches('"').to_owned()),
                            Some(md5_hex(want))
                        );
                    }
                    None => assert!(h.is_err(), "op {i} {op:?}: deleted key answered HEAD"),
                }
            }
            Op::Delete { key } => {
                let k = format!("k{key}");
                c.delete_object()
                    .bucket(bucket)
                    .key(&k)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("op {i} {op:?}: {e:?}"));
                model.remove(&k);
            }
        }
    }
    model
}

/// Random sequences of PUT/GET/Range/HEAD/DELETE/overwrite through the S3 API, compared with
/// a plain in-memory model; after each sequence the bucket itself (read directly from the
/// backing store) holds exactly the model.
#[test]
fn model_based_operations_match_an_in_memory_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend_port = free_port();
    let gw = GatewayProc::start_with(
        "tier_model",
        &Backend::Embedded,
        GatewayOptions {
            env: vec![(
                "GATEWAY_EMBEDDED_LISTEN".into(),
                format!("127.0.0.1:{backend_port}"),
            )],
            config: Some(tier_config("")),
            ..Default::default()
        },
    );
    let client = gw.client();
    let direct = s3_client(
        &format!("http://127.0.0.1:{backend_port}"),
        integration_tests::BACKEND_ACCESS_KEY,
        integration_tests::BACKEND_SECRET_KEY,
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..30), |ops| {
        rt.block_on(async {
            let bucket = unique_bucket("model");
            client.create_bucket().bucket(&bucket).send().await.unwrap();
            let model = run_ops(&client, &bucket, &ops).await;
            wait_persisted(&gw, Duration::from_secs(30)).await;
            let listed = direct
                .list_objects_v2()
                .bucket(&bucket)
                .send()
                .await
                .unwrap();
            let mut keys: Vec<_> = listed
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            keys.sort();
            let mut want: Vec<_> = model.keys().cloned().collect();
            want.sort();
            assert_eq!(keys, want, "bucket keys after persistence");
            for (k, v) in &model {
                let got = get_bytes(&direct, &bucket, k).await;
                assert!(
                    got.as_ref().is_ok_and(|g| g == v),
                    "bucket copy of {k} differs"
                );
            }
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        gw.metric("gateway_tier_hits_total") > 0.0,
        "some reads came from function memory"
    );
    assert!(gw.metric("gateway_tier_admitted_total") > 0.0);
    assert_eq!(gw.metric("gateway_tier_admission_failures_total"), 0.0);
}

/// The provider reclaims `p` functions holding chunks of every piece while clients read:
/// every GET still returns the exact bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_survive_p_reclaimed_functions() {
    let secret = "test-secret-0123456789abcdef";
    let emu = LambdaEmulator::start("tier_reclaim", secret);
    let gw = GatewayProc::start_with(
        "tier_reclaim",
        &Backend::Embedded,
        GatewayOptions {
            env: vec![
                ("GATEWAY_LAMBDA_ENDPOINT".into(), emu.endpoint.clone()),
                ("GATEWAY_FUNCTION_SECRET".into(), secret.into()),
            ],
            config: Some(tier_config("")),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("reclaim");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let objects: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("obj{i}"), payload(150_000 + i * 7_777, i as u64)))
        .collect();
    for (k, v) in &objects {
        put(&c, &bucket, k, v).await.unwrap();
    }
    let objects = Arc::new(objects);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (c, bucket, objects, stop) = (c.clone(), bucket.clone(), objects.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (k, v) = &objects[(n + r) % objects.len()];
                let got = get_bytes(&c, &bucket, k).await;
                assert!(
                    got.as_ref().is_ok_and(|g| g == v),
                    "GET {k} failed or differs: {:?}",
                    got.err()
                );
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // With 6 functions for 4 + 2 chunks, every piece has a chunk on each: reclaim two.
    for name in ["memfn-1", "memfn-4"] {
        let status = tokio::task::spawn_blocking({
            let endpoint = emu.endpoint.clone();
            let name = name.to_owned();
            move || integration_tests::reclaim(&endpoint, &name)
        })
        .await
        .unwrap();
        assert!((200..300).contains(&status), "reclaim {name}: {status}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for r in readers {
        total += r.await.expect("reader");
    }
    assert!(total > 8, "readers made progress ({total} GETs)");
    assert!(
        gw.metric("gateway_tier_decodes_total") > 0.0,
        "pieces were rebuilt from parity"
    );
    assert!(
        gw.metric("gateway_function_reclaims_total") >= 1.0,
        "the reclaims were detected"
    );
    drop(emu);
}

/// PUTs are acknowledged while the bucket hangs; then the gateway and every function process
/// are killed with SIGKILL. Restarted on the same data directory, the gateway persists every
/// acknowledged object, byte-exact, to the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_everything() {
    if tool_or_skip(weed_bin(), "SeaweedFS `weed`").is_none() {
        return;
    }
    let weed = Seaweed::start("tier_kill9").await;
    let data = tempfile::tempdir().unwrap();
    let opts = || GatewayOptions {
        data_dir: Some(data.path().to_owned()),
        config: Some(tier_config("")),
        ..Default::default()
    };
    let mut gw = GatewayProc::start_with(
        "tier_kill9",
        &Backend::External(weed.s3_url.clone()),
        opts(),
    );
    let c = gw.client();
    let bucket = unique_bucket("kill9");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    // The bucket hangs: nothing can be persisted.
    weed.freeze();
    let objects: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("acked/{i}"),
                payload(20_000 + i * 30_000, 100 + i as u64),
            )
        })
        .collect();
    for (k, v) in &objects {
        put(&c, &bucket, k, v)
            .await
            .unwrap_or_else(|e| panic!("PUT {k}: {e}"));
    }
    assert_eq!(
        gw.metric("gateway_tier_dirty_objects"),
        5.0,
        "acknowledged, not yet in the bucket"
    );
    let functions = integration_tests::children_of(gw.proc.pid());
    assert!(!functions.is_empty(), "function processes were started");
    gw.kill_all();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for p in &functions {
        assert!(
            !integration_tests::alive(*p),
            "function process {p} survived"
        );
    }
    weed.thaw();

    let gw = GatewayProc::start_with(
        "tier_kill9_restart",
        &Backend::External(weed.s3_url.clone()),
        opts(),
    );
    wait_persisted(&gw, Duration::from_secs(60)).await;
    let direct = weed.client();
    for (k, v) in &objects {
        let got = get_bytes(&direct, &bucket, k).await;
        assert!(
            got.as_ref().is_ok_and(|g| g == v),
            "{k} in the bucket: {:?}",
            got.err()
        );
    }
    // And through the gateway.
    for (k, v) in &objects {
        assert!(
            get_bytes(&gw.client(), &bucket, k)
                .await
                .is_ok_and(|g| &g == v)
        );
    }
}

/// The backing store goes away: objects in the tier are still served byte-exact, PUTs are
/// acknowledged up to the journal's bound and refused with 503 SlowDown past it, and everything
/// acknowledged reaches the bucket once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backing_store_outage() {
    if tool_or_skip(weed_bin(), "SeaweedFS `weed`").is_none() {
        return;
    }
    let mut weed = Seaweed::start("tier_outage").await;
    let gw = GatewayProc::start_with(
        "tier_outage",
        &Backend::External(weed.s3_url.clone()),
        GatewayOptions {
            config: Some(tier_config(
                "journal_capacity = \"600KiB\"\njournal_wait = \"1s\"\npersist_retry_max = \"1s\"\nflush_timeout = \"2s\"",
            )),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("outage");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let a = payload(200_000, 1);
    put(&c, &bucket, "a", &a).await.unwrap();
    wait_persisted(&gw, Duration::from_secs(30)).await;

    weed.stop();
    assert_eq!(
        get_bytes(&c, &bucket, "a").await.as_ref().ok(),
        Some(&a),
        "cached object served"
    );
    let b = payload(200_000, 2);
    let d = payload(200_000, 3);
    put(&c, &bucket, "b", &b)
        .await
        .expect("acknowledged while the bucket is down");
    put(&c, &bucket, "d", &d)
        .await
        .expect("acknowledged while the bucket is down");
    let e = payload(300_000, 4);
    let err = put(&c, &bucket, "e", &e)
        .await
        .expect_err("past the journal bound");
    assert!(err.starts_with("SlowDown"), "{err}");
    assert_eq!(
        get_bytes(&c, &bucket, "b").await.as_ref().ok(),
        Some(&b),
        "unpersisted object served"
    );
    let list = c.list_objects_v2().bucket(&bucket).send().await;
    assert!(list.is_err(), "a listing needs the bucket");

    weed.restart().await;
    wait_persisted(&gw, Duration::from_secs(60)).await;
    let direct = weed.client();
    for (k, v) in [("a", &a), ("b", &b), ("d", &d)] {
        let got = get_bytes(&direct, &bucket, k).await;
        assert!(
            got.as_ref().is_ok_and(|g| g == v),
            "{k} in the bucket: {:?}",
            got.err()
        );
    }
    assert_eq!(
        get_bytes(&direct, &bucket, "e").await,
        Err("NoSuchKey".to_owned())
    );
}
