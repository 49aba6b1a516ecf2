//! The sliding window's rotation on the live gateway (issue 15: the default configuration
//! stopped caching after the first rotation, because the new bucket drew a step of functions
//! from a pool that bucket 0 still held).
//!
//! A gateway with short buckets (2 s), small chunks and a pool of exactly `d + p` functions
//! (the default shape: pool = scale step = d + p), the embedded store and the embedded Lambda
//! emulator, driven through several rotations: every new object is admitted into function
//! memory, the current bucket has functions, and the objects of earlier buckets are still
//! served from function memory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use integration_tests::{
    Backend, GatewayOptions, GatewayProc, get_bytes, payload, small_tier_config, unique_bucket,
};

/// Length of a bucket.
const BUCKET: Duration = Duration::from_secs(2);
/// Rotations the test goes through.
const ROTATIONS: u64 = 5;

/// 4 + 2 chunks of at most 4 KiB on a pool of 6 functions (d + p; the step is clamped to the
/// pool), buckets of 2 s; every other policy setting is the default.
fn window_config() -> String {
    small_tier_config(
        "4KiB",
        "min_object_size = \"1KiB\"",
        &format!("[policy.window]\nbucket = \"{}s\"", BUCKET.as_secs()),
    )
}

/// `gateway_window_bucket_functions` by bucket id (the live buckets, oldest first).
fn bucket_functions(gw: &GatewayProc) -> BTreeMap<u64, f64> {
    let (_, text) = gw.admin_get("/metrics");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("gateway_window_bucket_functions{bucket=\"")?;
            let (id, rest) = rest.split_once('"')?;
            let value = rest.rsplit(' ').next()?;
            Some((id.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

/// The current (newest) bucket and its functions, once the metrics show a bucket `>= at_least`.
async fn wait_for_bucket(gw: &GatewayProc, at_least: u64) -> (u64, f64) {
    let deadline = Instant::now() + 4 * BUCKET;
    loop {
        if let Some((&id, &n)) = bucket_functions(gw).last_key_value()
            && id >= at_least
        {
            return (id, n);
        }
        assert!(
            Instant::now() < deadline,
            "bucket {at_least} did not open; buckets: {:?}",
            bucket_functions(gw)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_objects_are_admitted_and_old_ones_served_through_rotations() {
    let gw = GatewayProc::start_with(
        "window_rotation",
        &Backend::Embedded,
        GatewayOptions {
            config: Some(window_config()),
            ..Default::default()
        },
    );
    let c = gw.client();
    let bucket = unique_bucket("window");
    c.create_bucket().bucket(&bucket).send().await.unwrap();

    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seen = 0;
    for round in 0..=ROTATIONS {
        // One new bucket per round (the first round is bucket 0 or later).
        let (current, functions) = wait_for_bucket(&gw, seen).await;
        seen = current + 1;

        // A new object (several pieces) is admitted into function memory.
        let key = format!("round{round}");
        let data = payload(40_000 + round as usize * 1_000, round);
        let admitted = gw.metric("gateway_tier_admitted_total");
        c.put_object()
            .bucket(&bucket)
            .key(&key)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: PUT {key}: {e:?}"));
        assert_eq!(
            gw.metric("gateway_tier_admission_failures_total"),
            0.0,
            "round {round}: PUT {key} in bucket {current} was not admitted into function memory; \
             buckets: {:?}",
            bucket_functions(&gw)
        );
        assert_eq!(
            gw.metric("gateway_tier_admitted_total"),
            admitted + 1.0,
            "round {round}: PUT {key} admitted"
        );
        objects.push((key, data));

        // Every object so far, the new one and those of earlier buckets, comes from function
        // memory, byte-exact.
        let (hits, from_tier) = (
            gw.metric("gateway_tier_hits_total"),
            gw.metric("gateway_tier_bytes_from_tier_total"),
        );
        let mut bytes = 0;
        for (k, v) in &objects {
            let got = get_bytes(&c, &bucket, k).await;
            assert!(
                got.as_ref().is_ok_and(|g| g == v),
                "round {round}: GET {k}: {:?}",
                got.err()
            );
            bytes += v.len();
        }
        assert_eq!(
            gw.metric("gateway_tier_hits_total"),
            hits + objects.len() as f64,
            "round {round}: every GET served from function memory"
        );
        assert_eq!(
            gw.metric("gateway_tier_bytes_from_tier_total"),
            from_tier + bytes as f64,
            "round {round}: every byte from function memory"
        );
        assert!(
            functions > 0.0,
            "round {round}: the current bucket {current} has no functions; buckets: {:?}",
            bucket_functions(&gw)
        );
    }
    assert!(
        seen > ROTATIONS,
        "went through {ROTATIONS} rotations (last bucket {})",
        seen - 1
    );
    assert_eq!(gw.metric("gateway_tier_admission_failures_total"), 0.0);
    assert_eq!(gw.metric("gateway_tier_misses_total"), 0.0);
    // The pool was drawn once, by bucket 0; every later bucket inherited its functions.
    assert_eq!(gw.metric("gateway_window_drawn_functions_total"), 6.0);
    assert!(
        gw.metric("gateway_window_inherited_functions_total") >= 6.0 * ROTATIONS as f64,
        "inherited {}",
        gw.metric("gateway_window_inherited_functions_total")
    );
}
