//! Correctness under faults (issue 15): the write acknowledged last is the one the bucket
//! keeps; a write the bucket refuses becomes a dead letter that blocks nothing; what the
//! bucket is known to refuse is refused before it is acknowledged; a declared length holds no
//! journal space its bytes have not filled, and a stalled body is cut; a frozen bucket gives
//! 503 within the backing client's timeout. Each test reads the bucket directly and asserts
//! on `/metrics`, not only on what the client got back.

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use integration_tests::raw::{self, SlowPut};
use integration_tests::{
    ACCESS_KEY, BACKEND_ACCESS_KEY, BACKEND_SECRET_KEY, Backend, GatewayOptions, GatewayProc,
    SECRET_KEY, Seaweed, blocking, error_code, get_bytes, payload, put_bytes, small_tier_config,
    tool_or_skip, unique_bucket, weed_bin,
};

/// Pieces of 4 x 64 KiB + 2 parity chunks on 6 small functions.
fn config(extra_tier: &str, extra: &str) -> String {
    small_tier_config("64KiB", extra_tier, extra)
}

async fn put(c: &Client, bucket: &str, key: &str, data: &[u8]) -> Result<(), String> {
    put_bytes(c, bucket, key, data).await.map(|_| ())
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn seaweed_or_skip() -> bool {
    tool_or_skip(weed_bin(), "SeaweedFS `weed`").is_some()
}

/// Issue 15.1: PUT A starts, sends part of its body and pauses; PUT B of the same key is sent
/// and acknowledged while the bucket hangs (so B is not persisted yet); A completes and is
/// acknowledged. A committed last, so A is the key's version: served by the gateway, and the
/// one the bucket holds once everything is persisted. (Before the fix the sequence number was
/// taken at the start of a PUT: the gateway served B while the bucket got A.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_acknowledged_last_is_the_one_the_bucket_keeps() {
    if !seaweed_or_skip() {
        return;
    }
    let weed = Seaweed::start("faults_order").await;
    let gw = GatewayProc::start_with(
        "faults_order",
        &Backend::External(weed.s3_url.clone()),
        GatewayOptions {
            config: Some(config("persist_retry_max = \"1s\"", "")),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("order");
    c.create_bucket().bucket(&bucket).send().await.unwrap();

    let a = payload(4 << 20, 1);
    let b = payload(6 << 20, 2);
    let url = format!("{}/{bucket}/k", gw.endpoint);
    let (first, rest) = a.split_at(1 << 20);
    let slow = {
        let (url, first) = (url.clone(), first.to_vec());
        blocking(move || SlowPut::start(&url, 4 << 20, &first, ACCESS_KEY, SECRET_KEY)).await
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    weed.freeze();
    put(&c, &bucket, "k", &b)
        .await
        .expect("B is acknowledged (write-back)");
    let rest = rest.to_vec();
    let resp = blocking(move || {
        let mut slow = slow;
        slow.send(&rest).expect("rest of A");
        slow.finish()
    })
    .await;
    assert_eq!(resp.status, 200, "A acknowledged: {}", resp.text());
    let which = |got: Result<Vec<u8>, String>| match got {
        Ok(v) if v == a => "A".to_owned(),
        Ok(v) if v == b => "B".to_owned(),
        other => format!("{:?}", other.map(|v| v.len())),
    };
    assert_eq!(
        which(get_bytes(&c, &bucket, "k").await),
        "A",
        "the gateway serves A, acknowledged last"
    );
    weed.thaw();
    wait_until("persisted", Duration::from_secs(60), || {
        gw.metric("gateway_tier_dirty_objects") == 0.0
    })
    .await;
    assert_eq!(
        which(get_bytes(&weed.client(), &bucket, "k").await),
        "A",
        "the bucket holds A, the write acknowledged last"
    );
    assert_eq!(
        which(get_bytes(&c, &bucket, "k").await),
        "A",
        "and the gateway still serves it"
    );
}

/// Issue 15.2: writes to a bucket the gateway may read but not write (an IAM policy that
/// denies it) are acknowledged, then refused by the bucket for good (AccessDenied). They become
/// dead letters: served, listed on the admin API, counted, surviving a restart, never retried on
/// their own and never holding a persistence worker, so writes to other buckets persist and
/// listings answer at once. Retried once the permission is granted, they persist; discarded,
/// they are gone. (Before the fix, each refused write held one of the `persist_concurrency`
/// workers forever, in its backoff sleep: nothing else was persisted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_are_dead_letters_that_block_nothing() {
    if !seaweed_or_skip() {
        return;
    }
    let (good, doomed) = ("good", "doomed");
    let mut weed =
        Seaweed::start_with("faults_dead", &["Read", "List", "Tagging", "Write:good"]).await;
    let admin = weed.admin_client();
    for b in [good, doomed] {
        admin.create_bucket().bucket(b).send().await.unwrap();
    }
    let data_dir = tempfile::tempdir().unwrap();
    let opts = || GatewayOptions {
        config: Some(config(
            "min_object_size = \"64KiB\"\npersist_concurrency = 2\npersist_retry_max = \"1s\"\nflush_timeout = \"10s\"",
            "",
        )),
        data_dir: Some(data_dir.path().to_owned()),
        ..Default::default()
    };
    let mut gw = GatewayProc::start_with(
        "faults_dead",
        &Backend::External(weed.s3_url.clone()),
        opts(),
    );
    let c = gw.client();
    let refused: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("r{i}"), payload(200_000, 10 + i)))
        .collect();
    for (k, v) in &refused {
        put(&c, doomed, k, v)
            .await
            .expect("acknowledged: the gateway may read the bucket");
    }
    let fine: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("g{i}"), payload(150_000, 20 + i)))
        .collect();
    for (k, v) in &fine {
        put(&c, good, k, v).await.unwrap();
    }
    wait_until("other writes persisted", Duration::from_secs(20), || {
        gw.metric("gateway_tier_dirty_objects") == 0.0
            && gw.metric("gateway_tier_dead_letters") == 3.0
    })
    .await;
    for (k, v) in &fine {
        assert!(
            get_bytes(&admin, good, k).await.ok().as_ref() == Some(v),
            "{k} is in the bucket"
        );
    }
    let started = Instant::now();
    let listed = c.list_objects_v2().bucket(good).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(5));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a listing does not wait for dead letters"
    );
    for (k, v) in &refused {
        assert!(
            get_bytes(&c, doomed, k).await.ok().as_ref() == Some(v),
            "dead letter {k} is still served"
        );
    }
    let (status, body) = gw.admin_get("/admin/dead-letters");
    assert_eq!(status, 200);
    let dead: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dead.as_array().map(Vec::len), Some(3), "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
    assert_eq!(gw.metric("gateway_tier_dead_lettered_total"), 3.0);

    // A restart keeps them as dead letters (not retried on their own).
    gw.proc.terminate(Duration::from_secs(30));
    gw = GatewayProc::start_with(
        "faults_dead",
        &Backend::External(weed.s3_url.clone()),
        opts(),
    );
    let c = gw.client();
    assert_eq!(
        gw.metric("gateway_tier_dead_letters"),
        3.0,
        "after a restart"
    );
    assert_eq!(gw.metric("gateway_tier_dirty_objects"), 0.0);
    assert!(
        get_bytes(&c, doomed, "r0").await.ok().as_ref() == Some(&refused[0].1),
        "served after a restart"
    );

    // Discard one; grant the permission and retry the others.
    let post = |path: String| {
        let url = format!("{}{path}", gw.admin);
        async move {
            blocking(move || {
                let (host, path) = raw::split_url(&url);
                let head = format!(
                    "POST {path} HTTP/1.1\nHost: {host}\nContent-Length: 0\nConnection: close\n"
                );
                raw::exchange(&host, &head, &[], false)
            })
            .await
        }
    };
    let r = post(format!(
        "/admin/dead-letters/discard?bucket={doomed}&key=r0"
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("true"), "{}", r.text());
    weed.set_gateway_actions(integration_tests::ALL_ACTIONS);
    weed.stop();
    weed.restart().await;
    let r = post(format!("/admin/dead-letters/retry?bucket={doomed}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"retried\":2"), "{}", r.text());
    wait_until(
        "retried dead letters persisted",
        Duration::from_secs(30),
        || {
            gw.metric("gateway_tier_dead_letters") == 0.0
                && gw.metric("gateway_tier_dirty_objects") == 0.0
        },
    )
    .await;
    let admin = weed.admin_client();
    for (k, v) in &refused[1..] {
        assert!(
            get_bytes(&admin, doomed, k).await.ok().as_ref() == Some(v),
            "{k} persisted after the retry"
        );
    }
    assert_eq!(
        get_bytes(&c, doomed, "r0").await,
        Err("NoSuchKey".to_owned()),
        "the discarded write is gone"
    );
}

/// Issue 15.2, the rest: keys a backing store refuses are refused before they are
/// acknowledged (passed straight to the bucket, whose 400 the client gets), and a key S3
/// accepts but the SDK stumbles on (a single space) is stored, small or written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_bucket_refuses_are_refused_before_they_are_acknowledged() {
    if !seaweed_or_skip() {
        return;
    }
    let weed = Seaweed::start("faults_keys").await;
    let gw = GatewayProc::start_with(
        "faults_keys",
        &Backend::External(weed.s3_url.clone()),
        GatewayOptions {
            config: Some(config("min_object_size = \"4KiB\"", "")),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("keys");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let big = payload(100_000, 3);
    for key in [
        "x/../y",
        "x/./y",
        "a\u{0}b",
        &format!("s/{}", "a".repeat(300)),
    ] {
        let err = put(&c, &bucket, key, &big)
            .await
            .expect_err("the bucket refuses this key");
        assert!(
            err.starts_with("InvalidRequest") || err.starts_with("KeyTooLongError"),
            "{key:?}: {err}"
        );
    }
    assert_eq!(gw.metric("gateway_tier_dirty_objects"), 0.0, "nothing held");
    assert_eq!(gw.metric("gateway_tier_dead_letters"), 0.0);
    // The space key, small (passed through) and large (written back). The Rust SDK cannot
    // send it (it takes a blank key for a missing one): raw signed requests, as boto3 sends.
    let at_gateway = format!("{}/{bucket}/%20", gw.endpoint);
    let in_bucket = format!("{}/{bucket}/%20", weed.s3_url);
    let gateway_keys = (ACCESS_KEY, SECRET_KEY);
    let bucket_keys = (BACKEND_ACCESS_KEY, BACKEND_SECRET_KEY);
    let r = signed("PUT", &at_gateway, b"small", gateway_keys).await;
    assert_eq!(r.status, 200, "small ' ': {}", r.text());
    let r = signed("GET", &in_bucket, b"", bucket_keys).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"small"[..]));
    let r = signed("PUT", &at_gateway, &big, gateway_keys).await;
    assert_eq!(r.status, 200, "large ' ': {}", r.text());
    wait_until("' ' persisted", Duration::from_secs(20), || {
        gw.metric("gateway_tier_dirty_objects") == 0.0
    })
    .await;
    assert_eq!(gw.metric("gateway_tier_dead_letters"), 0.0);
    let r = signed("GET", &in_bucket, b"", bucket_keys).await;
    assert!(
        r.status == 200 && r.body == big,
        "the bucket holds the written-back ' ' ({})",
        r.status
    );
    let r = signed("DELETE", &at_gateway, b"", gateway_keys).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = signed("GET", &in_bucket, b"", bucket_keys).await;
    assert_eq!(r.status, 404);
}

/// A signed request (unsigned payload) of `method` to `url`, with `body`.
async fn signed(method: &str, url: &str, body: &[u8], keys: (&str, &str)) -> raw::Response {
    let (method, url, body) = (method.to_owned(), url.to_owned(), body.to_vec());
    let (access, secret) = (keys.0.to_owned(), keys.1.to_owned());
    blocking(move || raw::signed_request(&method, &url, &body, &access, &secret)).await
}

/// Issue 15.5: one PUT declaring a large length and sending 1 byte holds no journal space for
/// bytes it has not sent: other write-back PUTs go on at once; the stalled body is cut with
/// 400 RequestTimeout once it falls below `body_min_rate`. (Before the fix it reserved its
/// whole declared length, and every other write-back PUT waited `journal_wait` for 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_reserves_nothing_until_its_bytes_arrive() {
    let gw = GatewayProc::start_with(
        "faults_reserve",
        &Backend::Embedded,
        GatewayOptions {
            config: Some(format!(
                "[server]\nbody_rate_window = \"2s\"\n{}",
                config("journal_capacity = \"64MiB\"\njournal_wait = \"2s\"", "")
            )),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("reserve");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let url = format!("{}/{bucket}/stalled", gw.endpoint);
    let stalled =
        blocking(move || SlowPut::start(&url, 60 << 20, b"x", ACCESS_KEY, SECRET_KEY)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = payload(24 << 20, 7);
    // Were the stalled PUT's declared 60 MiB reserved, this one would wait `journal_wait`
    // (2 s) for space and get 503 SlowDown.
    put(&c, &bucket, "other", &data)
        .await
        .expect("another write-back PUT is not held up");
    assert_eq!(gw.metric("gateway_tier_slowdowns_total"), 0.0);
    let started = Instant::now();
    let r = blocking(move || stalled.finish()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r.text()), "RequestTimeout", "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        get_bytes(&c, &bucket, "stalled").await,
        Err("NoSuchKey".to_owned()),
        "the stalled PUT stored nothing"
    );
    assert!(get_bytes(&c, &bucket, "other").await.ok() == Some(data));
}

/// Clear S3 errors for what the drills answered wrongly: a small aws-chunked PUT with a bad
/// chunk signature is the client's fault (403, not "backing store unreachable"), and keys
/// the embedded store cannot hold get a 400 (not 500), small or large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_get_client_errors() {
    let gw = GatewayProc::start_with(
        "faults_errors",
        &Backend::Embedded,
        GatewayOptions {
            config: Some(config("", "")),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("errors");
    c.create_bucket().bucket(&bucket).send().await.unwrap();

    let data = payload(200 << 10, 5);
    let url = format!("{}/{bucket}/chunked", gw.endpoint);
    let r = blocking(move || aws_chunked_put_with_bad_signatures(&url, &data)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        error_code(&r.text()),
        "SignatureDoesNotMatch",
        "{}",
        r.text()
    );

    for size in [100usize, 2 << 20] {
        for key in [
            "k".repeat(1024),
            format!("s/{}", "a".repeat(300)),
            "a\u{0}b".to_owned(),
        ] {
            let err = put(&c, &bucket, &key, &payload(size, 1))
                .await
                .expect_err("the embedded store cannot hold it");
            assert!(
                err.starts_with("KeyTooLongError") || err.starts_with("InvalidArgument"),
                "{size} bytes, key of {} bytes: {err}",
                key.len()
            );
        }
    }
    assert_eq!(gw.metric("gateway_tier_dirty_objects"), 0.0, "nothing held");
    assert_eq!(gw.metric("gateway_tier_dead_letters"), 0.0);
}

/// A signed aws-chunked PUT (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) whose chunk signatures are
/// wrong.
fn aws_chunked_put_with_bad_signatures(url: &str, data: &[u8]) -> raw::Response {
    let (host, path) = raw::split_url(url);
    let len = data.len().to_string();
    let mut body = Vec::new();
    for chunk in data.chunks(64 << 10).chain([&[][..]]) {
        body.extend_from_slice(
            format!("{:x};chunk-signature={}\r\n", chunk.len(), "0".repeat(64)).as_bytes(),
        );
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    let total = body.len().to_string();
    let signed = raw::sign_headers(
        "PUT",
        url,
        &[
            ("host", host.as_str()),
            ("content-encoding", "aws-chunked"),
            ("content-length", total.as_str()),
            ("x-amz-decoded-content-length", len.as_str()),
        ],
        aws_sigv4::http_request::SignableBody::Precomputed(
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into(),
        ),
        ACCESS_KEY,
        SECRET_KEY,
    );
    let mut head = format!(
        "PUT {path} HTTP/1.1\nHost: {host}\nContent-Encoding: aws-chunked\nContent-Length: {total}\nx-amz-decoded-content-length: {len}\nConnection: close\n"
    );
    for (k, v) in &signed {
        head.push_str(&format!("{k}: {v}\n"));
    }
    raw::exchange(&host, &head, &body, false)
}

/// The drill's frozen bucket: listings, small pass-through PUTs and uncached GETs answer 503
/// once the backing client's first-byte timeout (5 s, 3 attempts) has passed, not after a
/// minute; objects in the tier are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_bucket_answers_503_within_its_timeout() {
    if !seaweed_or_skip() {
        return;
    }
    let weed = Seaweed::start("faults_frozen").await;
    let gw = GatewayProc::start_with(
        "faults_frozen",
        &Backend::External(weed.s3_url.clone()),
        GatewayOptions {
            config: Some(config("", "")),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("frozen");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    put(&c, &bucket, "small", b"tiny").await.unwrap();
    let cached = payload(3 << 20, 9);
    put(&c, &bucket, "cached", &cached).await.unwrap();
    wait_until("persisted", Duration::from_secs(20), || {
        gw.metric("gateway_tier_dirty_objects") == 0.0
    })
    .await;
    weed.freeze();
    let started = Instant::now();
    let (list_buckets, list, small_put, get) = tokio::join!(
        c.list_buckets().send(),
        c.list_objects_v2().bucket(&bucket).send(),
        put(&c, &bucket, "small2", b"tiny"),
        get_bytes(&c, &bucket, "small"),
    );
    let took = started.elapsed();
    assert!(
        get_bytes(&c, &bucket, "cached").await.ok() == Some(cached),
        "the tier still serves what it holds"
    );
    weed.thaw();
    let status = |r: Option<u16>| r.unwrap_or(0);
    assert_eq!(
        status(
            list_buckets
                .err()
                .and_then(|e| e.raw_response().map(|r| r.status().as_u16()))
        ),
        503
    );
    assert_eq!(
        status(
            list.err()
                .and_then(|e| e.raw_response().map(|r| r.status().as_u16()))
        ),
        503
    );
    assert!(
        small_put
            .as_ref()
            .is_err_and(|e| e.starts_with("ServiceUnavailable")),
        "{small_put:?}"
    );
    assert_eq!(get, Err("ServiceUnavailable".to_owned()));
    assert!(took < Duration::from_secs(30), "answered after {took:?}");
}
