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
    Put {
        key: usize,
        size: usize,
        seed: u64,
    },
    Get {
        key: usize,
    },
    Range {
        key: usize,
        a: usize,
        b: usize,
    },
    Head {
        key: usize,
    },
    Delete {
        key: usize,
    },
    /// ListObjectsV2 in pages of `page` (with delimiter `/` if `delimited`).
    List {
        page: i32,
        delimited: bool,
    },
    /// A multipart upload written back: one part, or a 5 MiB part and a `last` one.
    Multipart {
        key: usize,
        last: Option<usize>,
        seed: u64,
    },
}

/// The keys ops work on: two at the top, two under `d/` (so delimited listings roll them up).
fn name(key: usize) -> String {
    match key {
        0 | 1 => format!("k{key}"),
        _ => format!("d/k{key}"),
    }
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
        1 => key.clone().prop_map(|key| Op::Delete { key }),
        1 => (1i32..4, any::<bool>()).prop_map(|(page, delimited)| Op::List { page, delimited }),
        1 => (key.clone(), proptest::option::of(1usize..70_000), any::<u64>())
            .prop_map(|(key, last, seed)| Op::Multipart { key, last, seed }),
    ]
}

/// A whole listing through the gateway, page by page: (key, size, ETag) and common prefixes.
async fn list_all(
    c: &Client,
    bucket: &str,
    page: i32,
    delimiter: Option<&str>,
) -> (Vec<(String, i64, String)>, Vec<String>) {
    let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
    let mut token: Option<String> = None;
    loop {
        let out = c
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(page)
            .set_delimiter(delimiter.map(str::to_owned))
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap_or_else(|e| panic!("list: {e:?}"));
        for o in out.contents() {
            keys.push((
                o.key().unwrap_or_default().to_owned(),
                o.size().unwrap_or(-1),
                o.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
            ));
        }
        prefixes.extend(
            out.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
        assert!(
            out.contents().len() + out.common_prefixes().len() <= page as usize,
            "a page holds at most max-keys"
        );
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => return (keys, prefixes),
        }
    }
}

async fn run_ops(c: &Client, bucket: &str, ops: &[Op]) -> HashMap<String, Vec<u8>> {
    let mut model: HashMap<String, Vec<u8>> = HashMap::new();
    // The ETag each key's current version has (MD5, or the multipart ETag).
    let mut etags: HashMap<String, String> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put { key, size, seed } => {
                let k = name(*key);
                let data = payload(*size, *seed);
                let etag = put(c, bucket, &k, &data)
                    .await
                    .unwrap_or_else(|e| panic!("op {i} {op:?}: {e}"));
                assert_eq!(
                    etag.trim_matches('"'),
                    md5_hex(&data),
                    "op {i} {op:?}: etag"
                );
                etags.insert(k.clone(), md5_hex(&data));
                model.insert(k, data);
            }
            Op::Multipart { key, last, seed } => {
                let k = name(*key);
                // One part of any size, or a 5 MiB part and a last one.
                let sizes: Vec<usize> = match last {
                    Some(n) => vec![5 << 20, *n],
                    None => vec![3000],
                };
                let (id, parts, data) = upload_parts(c, bucket, &k, &sizes, *seed).await;
                let etag = complete(c, bucket, &k, &id, &parts)
                    .await
                    .unwrap_or_else(|e| panic!("op {i} {op:?}: {e}"));
                assert!(
                    etag.ends_with(&format!("-{}", sizes.len())),
                    "op {i} {op:?}: {etag}"
                );
                etags.insert(k.clone(), etag);
                model.insert(k, data);
            }
            Op::Get { key } => {
                let k = name(*key);
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
                let k = name(*key);
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
                let k = name(*key);
                let h = c.head_object().bucket(bucket).key(&k).send().await;
                match model.get(&k) {
                    Some(want) => {
                        let h = h.unwrap_or_else(|e| panic!("op {i} {op:?}: {e:?}"));
                        assert_eq!(h.content_length, Some(want.len() as i64), "op {i} {op:?}");
                        assert_eq!(
                            h.e_tag.as_deref().map(|e| e.trim_matches('"').to_owned()),
                            etags.get(&k).cloned()
                        );
                    }
                    None => assert!(h.is_err(), "op {i} {op:?}: deleted key answered HEAD"),
                }
            }
            Op::Delete { key } => {
                let k = name(*key);
                c.delete_object()
                    .bucket(bucket)
                    .key(&k)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("op {i} {op:?}: {e:?}"));
                model.remove(&k);
                etags.remove(&k);
            }
            Op::List { page, delimited } => {
                // Writes just acknowledged are listed at once (not yet in the bucket, most of
                // them), deletes hidden.
                let delimiter = delimited.then_some("/");
                let mut got = list_all(c, bucket, *page, delimiter).await;
                // The embedded store (s3s-fs) lists no ETags; the tier's entries have theirs.
                for (k, _, etag) in &mut got.0 {
                    if etag.is_empty() {
                        etag.clone_from(&etags.get(k).cloned().unwrap_or_default());
                    }
                }
                let mut want_keys: Vec<(String, i64, String)> = model
                    .iter()
                    .filter(|(k, _)| !delimited || !k.contains('/'))
                    .map(|(k, v)| (k.clone(), v.len() as i64, etags[k].clone()))
                    .collect();
                want_keys.sort();
                let want_prefixes: Vec<String> =
                    if *delimited && model.keys().any(|k| k.starts_with("d/")) {
                        vec!["d/".to_owned()]
                    } else {
                        vec![]
                    };
                assert_eq!(got, (want_keys, want_prefixes), "op {i} {op:?}: listing");
            }
        }
    }
    model
}

/// Random sequences of PUT/multipart upload/GET/Range/HEAD/DELETE/overwrite/paged listing through
/// the S3 API,
/// compared with a plain in-memory model (listings without waiting for persistence); after each
/// sequence the bucket itself (read directly from the backing store) holds exactly the model.
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
                    "bucket copy of {k} differs: {:?} bytes, {} expected",
                    got.as_ref().map(Vec::len),
                    v.len()
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
    // A multipart upload completed (kill -9 right after Complete), and one whose parts are
    // all in but not completed (kill -9 between the last UploadPart and Complete).
    let (done_data, done_etag) = {
        let (id, parts, data) = upload_parts(&c, &bucket, "mp/done", &[5 << 20, 1 << 20], 7).await;
        let out = complete(&c, &bucket, "mp/done", &id, &parts)
            .await
            .expect("completed without the bucket");
        (data, out)
    };
    let (open_id, open_parts, open_data) =
        upload_parts(&c, &bucket, "mp/open", &[5 << 20, 300_000], 8).await;
    assert_eq!(
        gw.metric("gateway_tier_dirty_objects"),
        6.0,
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
    let h = direct
        .head_object()
        .bucket(&bucket)
        .key("mp/done")
        .send()
        .await
        .expect("the completed upload is in the bucket");
    assert_eq!(
        h.e_tag.as_deref().map(|e| e.trim_matches('"')),
        Some(done_etag.as_str())
    );
    assert!(get_bytes(&direct, &bucket, "mp/done").await.ok() == Some(done_data));
    // The open upload is still there, with its parts, and can be completed.
    let c = gw.client();
    assert_eq!(
        open_uploads(&c, &bucket).await,
        [("mp/open".to_owned(), open_id.clone())]
    );
    assert_eq!(
        part_sizes(&c, &bucket, "mp/open", &open_id).await,
        [(1, 5 << 20), (2, 300_000)]
    );
    let etag = complete(&c, &bucket, "mp/open", &open_id, &open_parts)
        .await
        .expect("completed after the restart");
    wait_persisted(&gw, Duration::from_secs(60)).await;
    let h = direct
        .head_object()
        .bucket(&bucket)
        .key("mp/open")
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.e_tag.as_deref().map(|e| e.trim_matches('"')),
        Some(etag.as_str())
    );
    assert!(get_bytes(&direct, &bucket, "mp/open").await.ok() == Some(open_data));
}

/// Creates a multipart upload of `key` and uploads parts of `sizes`: (upload id, parts as
/// Complete names them, the object's bytes).
async fn upload_parts(
    c: &Client,
    bucket: &str,
    key: &str,
    sizes: &[usize],
    seed: u64,
) -> (String, Vec<aws_sdk_s3::types::CompletedPart>, Vec<u8>) {
    let id = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    let mut parts = Vec::new();
    let mut all = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let n = i as i32 + 1;
        let data = payload(*size, seed.wrapping_mul(100).wrapping_add(i as u64));
        let out = c
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(aws_sdk_s3::primitives::ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("part {n}: {e:?}"));
        assert_eq!(
            out.e_tag().map(|e| e.trim_matches('"').to_owned()),
            Some(md5_hex(&data))
        );
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag)
                .build(),
        );
        all.extend_from_slice(&data);
    }
    (id, parts, all)
}

/// ListMultipartUploads: (key, upload id) of each.
async fn open_uploads(c: &Client, bucket: &str) -> Vec<(String, String)> {
    let out = c
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    out.uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap_or_default().to_owned(),
                u.upload_id().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// ListParts: (number, size) of each part.
async fn part_sizes(c: &Client, bucket: &str, key: &str, id: &str) -> Vec<(i32, i64)> {
    let out = c
        .list_parts()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .send()
        .await
        .unwrap();
    out.parts()
        .iter()
        .map(|p| (p.part_number().unwrap_or(0), p.size().unwrap_or(-1)))
        .collect()
}

/// Completes an upload: its ETag, or the S3 error code.
async fn complete(
    c: &Client,
    bucket: &str,
    key: &str,
    id: &str,
    parts: &[aws_sdk_s3::types::CompletedPart],
) -> Result<String, String> {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    c.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts.to_vec()))
                .build(),
        )
        .send()
        .await
        .map(|o| o.e_tag.unwrap_or_default().trim_matches('"').to_owned())
        .map_err(|e| e.code().unwrap_or("?").to_owned())
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

/// Listings and copies do not wait for persistence. The bucket refuses every write of the
/// gateway (its identity may read and list only), so what the gateway acknowledged never
/// reaches it; v1 and v2 listings through the gateway, paged, with and without a delimiter,
/// show the acknowledged writes, hide the acknowledged delete (and the common prefix it
/// emptied), and show the new versions of overwritten keys — while the bucket, read directly,
/// still holds the old state. CopyObject and UploadPartCopy of such a source are made from the
/// tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_acknowledged_writes_the_bucket_does_not_have() {
    if tool_or_skip(weed_bin(), "SeaweedFS `weed`").is_none() {
        return;
    }
    let weed = Seaweed::start_with("tier_listing", &["Read", "List", "Tagging"]).await;
    let admin = weed.admin_client();
    let bucket = unique_bucket("listing");
    admin.create_bucket().bucket(&bucket).send().await.unwrap();
    for k in ["top", "dir/x", "keep/a"] {
        put(&admin, &bucket, k, &payload(100_000, 1)).await.unwrap();
    }
    let gw = GatewayProc::start_with(
        "tier_listing",
        &Backend::External(weed.s3_url.clone()),
        GatewayOptions {
            config: Some(tier_config("persist_retry_max = \"1s\"")),
            ..Default::default()
        },
    );
    let c = gw.client();
    let keep = payload(200_000, 2);
    put(&c, &bucket, "keep/a", &keep).await.unwrap();
    c.put_object()
        .bucket(&bucket)
        .key("new/n")
        .content_type("application/x-test")
        .body(aws_sdk_s3::primitives::ByteStream::from(payload(
            300_000, 3,
        )))
        .send()
        .await
        .unwrap();
    put(&c, &bucket, "dir/x", &payload(150_000, 4))
        .await
        .unwrap();
    c.delete_object()
        .bucket(&bucket)
        .key("dir/x")
        .send()
        .await
        .unwrap();
    put(&c, &bucket, "top2", &payload(120_000, 5))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.metric("gateway_tier_dead_letters") < 4.0 {
        assert!(Instant::now() < deadline, "the bucket refused them");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let want = vec![
        ("keep/a".to_owned(), 200_000, md5_hex(&keep)),
        ("new/n".to_owned(), 300_000, md5_hex(&payload(300_000, 3))),
        ("top".to_owned(), 100_000, md5_hex(&payload(100_000, 1))),
        ("top2".to_owned(), 120_000, md5_hex(&payload(120_000, 5))),
    ];
    let started = Instant::now();
    for page in [1, 2, 1000] {
        assert_eq!(
            list_all(&c, &bucket, page, None).await,
            (want.clone(), vec![])
        );
        assert_eq!(
            list_all(&c, &bucket, page, Some("/")).await,
            (
                want[2..].to_vec(),
                vec!["keep/".to_owned(), "new/".to_owned()]
            ),
            "delimited, pages of {page}: dir/ holds only a deleted key"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "listings do not wait for persistence"
    );
    // v1, one key per page, markers across the merge.
    let mut marker: Option<String> = None;
    let mut v1 = Vec::new();
    loop {
        let out = c
            .list_objects()
            .bucket(&bucket)
            .max_keys(1)
            .set_marker(marker.take())
            .send()
            .await
            .unwrap();
        v1.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        if out.is_truncated() != Some(true) {
            break;
        }
        marker = out.next_marker().map(str::to_owned);
        assert!(marker.is_some(), "a truncated page names its next marker");
    }
    assert_eq!(v1, ["keep/a", "new/n", "top", "top2"]);
    // The aws CLI lists the same.
    if let Some(venv) = tool_or_skip(integration_tests::venv(), "the aws CLI (E2E_VENV)") {
        let out = std::process::Command::new(venv.join("bin/aws"))
            .arg("--endpoint-url")
            .arg(&gw.endpoint)
            .args(["s3", "ls", "--recursive", &format!("s3://{bucket}/")])
            .env("AWS_ACCESS_KEY_ID", integration_tests::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", integration_tests::SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("aws");
        let ls = String::from_utf8_lossy(&out.stdout);
        let listed: Vec<(&str, &str)> = ls
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((*f.get(2)?, *f.get(3)?))
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("200000", "keep/a"),
                ("300000", "new/n"),
                ("100000", "top"),
                ("120000", "top2")
            ],
            "aws s3 ls: {ls}"
        );
    }

    let direct = list_all(&admin, &bucket, 1000, None).await;
    let direct: Vec<(String, i64)> = direct.0.into_iter().map(|(k, s, _)| (k, s)).collect();
    assert_eq!(
        direct,
        [
            ("dir/x".to_owned(), 100_000),
            ("keep/a".to_owned(), 100_000),
            ("top".to_owned(), 100_000)
        ],
        "the bucket has none of it"
    );

    // Copies of a source the bucket does not have are made from the tier, at once: CopyObject
    // (metadata copied, or replaced) and UploadPartCopy into an upload the gateway owns.
    let n = payload(300_000, 3);
    let copied = c
        .copy_object()
        .bucket(&bucket)
        .key("copies/n")
        .copy_source(format!("{bucket}/new/n"))
        .send()
        .await
        .expect("copied from the tier");
    assert_eq!(
        copied
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(|e| e.trim_matches('"').to_owned()),
        Some(md5_hex(&n))
    );
    assert!(get_bytes(&c, &bucket, "copies/n").await.ok() == Some(n.clone()));
    let h = c
        .head_object()
        .bucket(&bucket)
        .key("copies/n")
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.content_type(),
        Some("application/x-test"),
        "metadata copied"
    );
    c.copy_object()
        .bucket(&bucket)
        .key("copies/replaced")
        .copy_source(format!("{bucket}/new/n"))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .content_type("text/plain")
        .send()
        .await
        .unwrap();
    let h = c
        .head_object()
        .bucket(&bucket)
        .key("copies/replaced")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_type(), Some("text/plain"), "metadata replaced");
    let onto_itself = c
        .copy_object()
        .bucket(&bucket)
        .key("new/n")
        .copy_source(format!("{bucket}/new/n"))
        .send()
        .await;
    assert_eq!(
        onto_itself
            .err()
            .and_then(|e| e.raw_response().map(|r| r.status().as_u16())),
        Some(400)
    );
    let id = c
        .create_multipart_upload()
        .bucket(&bucket)
        .key("copies/parts")
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    let part = c
        .upload_part_copy()
        .bucket(&bucket)
        .key("copies/parts")
        .upload_id(&id)
        .part_number(1)
        .copy_source(format!("{bucket}/new/n"))
        .copy_source_range("bytes=1000-200999")
        .send()
        .await
        .expect("part copied from the tier");
    let etag = part
        .copy_part_result()
        .and_then(|r| r.e_tag())
        .map(str::to_owned);
    assert_eq!(
        etag.as_deref().map(|e| e.trim_matches('"').to_owned()),
        Some(md5_hex(&n[1000..201_000]))
    );
    complete(
        &c,
        &bucket,
        "copies/parts",
        &id,
        &[aws_sdk_s3::types::CompletedPart::builder()
            .part_number(1)
            .set_e_tag(etag)
            .build()],
    )
    .await
    .unwrap();
    assert!(
        get_bytes(&c, &bucket, "copies/parts").await.ok().as_deref() == Some(&n[1000..201_000])
    );
}

/// An S3 error: its code and HTTP status.
fn bad<T>(code: &str, status: u16) -> Result<T, (String, Option<u16>)> {
    Err((code.to_owned(), Some(status)))
}

/// Multipart uploads the gateway owns answer bad input as S3 does — wrong part order, a part
/// not uploaded or with another ETag, a small part other than the last, an unknown upload,
/// Complete twice, a part after Abort — and lose nothing: the upload stays completable and
/// the object completed is served byte-exact, whole and by part number, from the tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_bad_input_gets_s3_errors_and_loses_nothing() {
    let gw = GatewayProc::start_with(
        "tier_multipart_errors",
        &Backend::Embedded,
        GatewayOptions {
            config: Some(tier_config("")),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("mperr");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let (id, parts, _) = upload_parts(&c, &bucket, "k", &[5 << 20, 1 << 20, 100], 3).await;
    assert!(id.starts_with("gw-"), "the gateway owns it: {id}");
    let attempt = |ps: Vec<aws_sdk_s3::types::CompletedPart>, id: String| {
        let c = c.clone();
        let bucket = bucket.clone();
        async move {
            let r = c
                .complete_multipart_upload()
                .bucket(&bucket)
                .key("k")
                .upload_id(&id)
                .multipart_upload(
                    aws_sdk_s3::types::CompletedMultipartUpload::builder()
                        .set_parts(Some(ps))
                        .build(),
                )
                .send()
                .await;
            match r {
                Ok(o) => Ok(o.e_tag.unwrap_or_default()),
                Err(e) => {
                    use aws_sdk_s3::error::ProvideErrorMetadata;
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    Err((e.code().unwrap_or("?").to_owned(), status))
                }
            }
        }
    };
    let p = |i: usize| parts[i].clone();
    assert_eq!(
        attempt(vec![p(1), p(0)], id.clone()).await,
        bad("InvalidPartOrder", 400)
    );
    let missing = aws_sdk_s3::types::CompletedPart::builder()
        .part_number(9)
        .e_tag("\"00000000000000000000000000000000\"")
        .build();
    assert_eq!(
        attempt(vec![p(0), missing], id.clone()).await,
        bad("InvalidPart", 400)
    );
    let wrong = aws_sdk_s3::types::CompletedPart::builder()
        .part_number(1)
        .e_tag("\"00000000000000000000000000000000\"")
        .build();
    assert_eq!(
        attempt(vec![wrong], id.clone()).await,
        bad("InvalidPart", 400)
    );
    assert_eq!(
        attempt(vec![p(1), p(2)], id.clone()).await,
        bad("EntityTooSmall", 400)
    );
    let unknown = format!("gw-{}", "0".repeat(32));
    assert_eq!(
        attempt(vec![p(0)], unknown.clone()).await,
        bad("NoSuchUpload", 404)
    );
    let part_to = |id: String, n: i32| {
        let c = c.clone();
        let bucket = bucket.clone();
        async move {
            use aws_sdk_s3::error::ProvideErrorMetadata;
            c.upload_part()
                .bucket(&bucket)
                .key("k")
                .upload_id(&id)
                .part_number(n)
                .body(aws_sdk_s3::primitives::ByteStream::from(vec![1u8; 10]))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    (
                        e.code().unwrap_or("?").to_owned(),
                        e.raw_response().map(|r| r.status().as_u16()),
                    )
                })
        }
    };
    assert_eq!(part_to(unknown, 1).await, bad("NoSuchUpload", 404));
    // Nothing was lost: the upload completes, once.
    let etag = attempt(vec![p(0), p(2)], id.clone())
        .await
        .expect("completes");
    assert!(etag.trim_matches('"').ends_with("-2"), "{etag}");
    assert_eq!(
        attempt(vec![p(0), p(2)], id.clone()).await,
        bad("NoSuchUpload", 404)
    );
    let mut want = payload(5 << 20, 300);
    want.extend_from_slice(&payload(100, 302));
    assert!(
        get_bytes(&c, &bucket, "k").await.ok() == Some(want.clone()),
        "served byte-exact"
    );
    // Parts by number, from the tier (its part boundaries are known).
    let from_bucket = gw.metric("gateway_tier_bytes_from_bucket_total");
    for (n, range) in [(1, 0..5 << 20), (2, (5 << 20)..want.len())] {
        let o = c
            .get_object()
            .bucket(&bucket)
            .key("k")
            .part_number(n)
            .send()
            .await
            .unwrap();
        assert_eq!(o.parts_count(), Some(2));
        assert_eq!(
            o.content_range(),
            Some(format!("bytes {}-{}/{}", range.start, range.end - 1, want.len()).as_str())
        );
        let got = o.body.collect().await.unwrap().into_bytes();
        assert!(got.as_ref() == &want[range], "part {n}");
        let h = c
            .head_object()
            .bucket(&bucket)
            .key("k")
            .part_number(n)
            .send()
            .await
            .unwrap();
        assert_eq!(h.parts_count(), Some(2));
        assert_eq!(h.content_length(), Some(if n == 1 { 5 << 20 } else { 100 }));
    }
    let past = c
        .get_object()
        .bucket(&bucket)
        .key("k")
        .part_number(3)
        .send()
        .await;
    assert_eq!(
        past.err()
            .and_then(|e| e.raw_response().map(|r| r.status().as_u16())),
        Some(416)
    );
    assert_eq!(
        gw.metric("gateway_tier_bytes_from_bucket_total"),
        from_bucket,
        "parts come from the tier"
    );
    // Abort, then a part: NoSuchUpload; a second Abort too.
    let (other, _, _) = upload_parts(&c, &bucket, "other", &[100], 4).await;
    c.abort_multipart_upload()
        .bucket(&bucket)
        .key("other")
        .upload_id(&other)
        .send()
        .await
        .unwrap();
    let again = c
        .abort_multipart_upload()
        .bucket(&bucket)
        .key("other")
        .upload_id(&other)
        .send()
        .await;
    assert!(again.is_err(), "a second Abort fails");
    let r = c
        .upload_part()
        .bucket(&bucket)
        .key("other")
        .upload_id(&other)
        .part_number(2)
        .body(aws_sdk_s3::primitives::ByteStream::from(vec![1u8; 10]))
        .send()
        .await;
    use aws_sdk_s3::error::ProvideErrorMetadata;
    assert_eq!(
        r.err().and_then(|e| e.code().map(str::to_owned)).as_deref(),
        Some("NoSuchUpload")
    );
    assert_eq!(gw.metric("gateway_tier_multipart_uploads"), 0.0);
    wait_persisted(&gw, Duration::from_secs(30)).await;
}

/// An upload larger than the journal: once the journal cannot hold its next part, the upload
/// moves to the bucket (the parts journaled so far are sent there) instead of stalling; later
/// parts and the completion are the bucket's, and the object is whole in the bucket with the
/// multipart ETag; nothing is left in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_larger_than_the_journal_moves_to_the_bucket() {
    let backend_port = free_port();
    let data_dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start_with(
        "tier_multipart_forward",
        &Backend::Embedded,
        GatewayOptions {
            env: vec![(
                "GATEWAY_EMBEDDED_LISTEN".into(),
                format!("127.0.0.1:{backend_port}"),
            )],
            data_dir: Some(data_dir.path().to_owned()),
            config: Some(tier_config(
                "journal_capacity = \"12MiB\"\njournal_wait = \"500ms\"",
            )),
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("mpfwd");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let (id, parts, data) =
        upload_parts(&c, &bucket, "big", &[5 << 20, 5 << 20, 5 << 20, 1 << 20], 9).await;
    assert!(id.starts_with("gw-"));
    assert_eq!(gw.metric("gateway_tier_multipart_forwarded_total"), 1.0);
    assert_eq!(
        part_sizes(&c, &bucket, "big", &id).await.len(),
        4,
        "the bucket has every part"
    );
    assert_eq!(
        open_uploads(&c, &bucket).await,
        [("big".to_owned(), id.clone())],
        "listed once, under the gateway's id"
    );
    let etag = complete(&c, &bucket, "big", &id, &parts)
        .await
        .expect("completed by the bucket");
    assert!(etag.ends_with("-4"), "{etag}");
    assert!(get_bytes(&c, &bucket, "big").await.ok() == Some(data.clone()));
    let direct = s3_client(
        &format!("http://127.0.0.1:{backend_port}"),
        integration_tests::BACKEND_ACCESS_KEY,
        integration_tests::BACKEND_SECRET_KEY,
    );
    assert!(get_bytes(&direct, &bucket, "big").await.ok() == Some(data));
    assert_eq!(gw.metric("gateway_tier_multipart_uploads"), 0.0);
    assert_eq!(
        integration_tests::journal_records(data_dir.path()),
        0,
        "nothing left in the journal"
    );
}
