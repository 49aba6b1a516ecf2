//! Step-by-step tests of the sliding window: after each event, the state of every bucket
//! (`Snapshot::describe`: `fN=MiB used`, `!` = stopped taking writes) with a comment saying why.
//!
//! A small window: d = 2, p = 1 (3 chunks per piece), buckets of 10 min, 2 active buckets,
//! 3 buckets in all, steps of 3 functions, 10 MiB of chunks per function (12 MB - 2 MB
//! reserved), writes stop above 9 MiB, warm-ups every minute (active) / 5 minutes (degraded)
//! without jitter.

use policy::*;

const MIN: u64 = 60_000;

fn mib(n: u64) -> u64 {
    n * MIB
}

fn small() -> WindowConfig {
    WindowConfig {
        pool_size: 9,
        function_memory_mb: 12,
        reserved_mb: 2,
        data_chunks: 2,
        parity_chunks: 1,
        bucket_ms: 10 * MIN,
        active_buckets: 2,
        window_buckets: 3,
        active_warmup_ms: MIN,
        active_jitter_ms: 0,
        degraded_warmup_ms: 5 * MIN,
        degraded_jitter_ms: 0,
        promote_always_age: 2,
        promote_maybe_age: 1,
        promote_probability: 0.0,
        stop_writes_occupancy: 0.9,
        scale_step: 3,
        min_object_bytes: 0,
        seed: 7,
    }
}

fn f(ids: &[u32]) -> Vec<FunctionId> {
    ids.iter().map(|&i| FunctionId(i)).collect()
}

fn warmed(fx: &Effects) -> Vec<(u32, u64)> {
    fx.warmups.iter().map(|w| (w.function.0, w.due)).collect()
}

fn layout(p: &Placement) -> Vec<FunctionId> {
    match p {
        Placement::Functions(l) => l.functions.clone(),
        other => panic!("expected a placement in functions, got {other:?}"),
    }
}

#[test]
fn buckets_rotate_degrade_promote_and_expire() {
    let mut w = SlidingWindow::new(small()).unwrap();

    // t=0: the first event opens bucket 0 with a step of 3 functions (lowest ids), warmed at
    // once. A 4 MiB object is one piece of 2 + 1 chunks of 2 MiB: chunk i on position i.
    let put = w.put(0, "a", mib(4), 1);
    assert_eq!(layout(&put.placement), f(&[0, 1, 2]));
    assert_eq!(put.effects.opened[0].functions, f(&[0, 1, 2]));
    assert_eq!(warmed(&put.effects), vec![(0, 0), (1, 0), (2, 0)]);
    assert_eq!(w.snapshot().describe(), "b0 active: f0=2 f1=2 f2=2 | 1 obj");
    assert_eq!(w.next_wakeup(), Some(MIN));

    // t=1 min: active functions are warmed every minute after they were last invoked.
    let fx = w.tick(MIN);
    assert_eq!(warmed(&fx), vec![(0, MIN), (1, MIN), (2, MIN)]);

    // t=10 min: bucket 1 opens and takes the writes; bucket 0 stays active (age 1 < 2).
    let fx = w.tick(10 * MIN);
    assert_eq!(fx.opened[0].bucket, BucketId(1));
    // New functions warmed at once, then bucket 0's warm-ups, overdue since 2 min (nobody
    // ticked in between): `due` says when they were due.
    assert_eq!(
        warmed(&fx),
        vec![
            (3, 10 * MIN),
            (4, 10 * MIN),
            (5, 10 * MIN),
            (0, 2 * MIN),
            (1, 2 * MIN),
            (2, 2 * MIN)
        ]
    );
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=2 f1=2 f2=2 | 1 obj\n\
         b1 active: f3=0 f4=0 f5=0 | 0 obj"
    );

    // t=20 min: bucket 2 opens, bucket 0 (age 2) leaves the active window: read-only, warmed
    // every 5 min from its last warm-up at 10 min (due 15 min, sent now). Bucket 1's functions
    // hold nothing and are no longer the write target: not worth warming.
    let fx = w.tick(20 * MIN);
    assert_eq!(fx.degraded, vec![BucketId(0)]);
    assert_eq!(fx.opened[0].functions, f(&[6, 7, 8]));
    assert_eq!(
        warmed(&fx),
        vec![
            (6, 20 * MIN),
            (7, 20 * MIN),
            (8, 20 * MIN),
            (0, 15 * MIN),
            (1, 15 * MIN),
            (2, 15 * MIN)
        ]
    );
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded: f0=2 f1=2 f2=2 | 1 obj\n\
         b1 active: f3=0 f4=0 f5=0 | 0 obj\n\
         b2 active: f6=0 f7=0 f8=0 | 0 obj"
    );
    // Degraded functions are next due 5 minutes after this warm-up.
    assert_eq!(w.tick(24 * MIN).warmups.len(), 3); // only bucket 2's, due each minute
    assert!(w.tick(24 * MIN + 1).warmups.is_empty());

    // t=21 min: a GET of "a" (age 2 >= 2) reads the old chunks and promotes them into the
    // current bucket.
    let get = w.get(21 * MIN, "a");
    assert_eq!(
        get.lookup,
        Lookup::Functions {
            chunk_size: mib(2),
            chunks_per_piece: 3,
            data_chunks: 2,
            chunks: vec![
                Some(FunctionId(0)),
                Some(FunctionId(1)),
                Some(FunctionId(2))
            ],
        }
    );
    let moves: Vec<(u32, Option<u32>, u32)> = get
        .relocation
        .iter()
        .map(|m| (m.index, m.from.map(|f| f.0), m.to.0))
        .collect();
    assert_eq!(
        moves,
        vec![(0, Some(0), 6), (1, Some(1), 7), (2, Some(2), 8)]
    );
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded: f0=0 f1=0 f2=0 | 0 obj\n\
         b1 active: f3=0 f4=0 f5=0 | 0 obj\n\
         b2 active: f6=2 f7=2 f8=2 | 1 obj"
    );

    // t=30 min: bucket 0 (age 3) expires, its functions return to the pool, and bucket 3
    // draws them again (the pool of 9 was empty). Bucket 1 degrades.
    let fx = w.tick(30 * MIN);
    assert_eq!(fx.expired, vec![BucketId(0)]);
    assert_eq!(fx.returned, f(&[0, 1, 2]));
    assert!(fx.evicted.is_empty()); // "a" was promoted out of bucket 0
    assert_eq!(fx.degraded, vec![BucketId(1)]);
    assert_eq!(fx.opened[0].functions, f(&[0, 1, 2]));
    assert_eq!(
        w.snapshot().describe(),
        "b1 degraded: f3=0 f4=0 f5=0 | 0 obj\n\
         b2 active: f6=2 f7=2 f8=2 | 1 obj\n\
         b3 active: f0=0 f1=0 f2=0 | 0 obj"
    );

    // t=31 min: new writes go to the current bucket.
    assert_eq!(
        layout(&w.put(31 * MIN, "b", mib(4), 1).placement),
        f(&[0, 1, 2])
    );

    // t=50 min: buckets 1 and 2 expire on the way (bucket 4 reused f3-f5, bucket 5 gets
    // f6-f8); "a" expired with bucket 2 and is evicted from memory (it remains in S3).
    w.tick(40 * MIN);
    let fx = w.tick(50 * MIN);
    assert_eq!(fx.expired, vec![BucketId(2)]);
    assert_eq!(fx.evicted, vec!["a".to_string()]);
    assert_eq!(
        w.snapshot().describe(),
        "b3 degraded: f0=2 f1=2 f2=2 | 1 obj\n\
         b4 active: f3=0 f4=0 f5=0 | 0 obj\n\
         b5 active: f6=0 f7=0 f8=0 | 0 obj"
    );
    assert!(!w.contains("a"));
    assert_eq!(w.get(50 * MIN, "a").lookup, Lookup::Miss);
    let s = w.stats();
    assert_eq!(
        (s.active_buckets, s.degraded_buckets, s.expired_buckets),
        (2, 1, 3)
    );
}

#[test]
fn full_functions_stop_writes_and_the_bucket_grows() {
    let mut w = SlidingWindow::new(small()).unwrap();
    // Two objects of 10 MiB: chunks of 5 MiB; after the second, f0-f2 hold 10 MiB > 9 MiB:
    // they stop taking writes and the bucket grows by a step at once.
    w.put(0, "x", mib(10), 1);
    let put = w.put(1, "y", mib(10), 1);
    assert_eq!(layout(&put.placement), f(&[0, 1, 2]));
    assert_eq!(put.effects.stopped_writes, f(&[0, 1, 2]));
    assert_eq!(put.effects.scaled_out[0].functions, f(&[3, 4, 5]));
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=10! f1=10! f2=10! f3=0 f4=0 f5=0 | 2 obj"
    );
    // Chunk i goes to position i, i + 3, ...: the first with room.
    assert_eq!(layout(&w.put(2, "z", mib(4), 1).placement), f(&[3, 4, 5]));
    // Three pieces: the chunks of one piece are on distinct functions; pieces may share.
    let big = layout(&w.put(3, "big", mib(12), 3).placement);
    assert_eq!(big, f(&[3, 4, 5, 3, 4, 5, 3, 4, 5]));
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=10! f1=10! f2=10! f3=8 f4=8 f5=8 | 4 obj"
    );
    // A chunk that does not fit in what is left (8 + 4 > 10) grows the bucket again.
    let put = w.put(4, "w", mib(8), 1);
    assert_eq!(layout(&put.placement), f(&[6, 7, 8]));
    assert_eq!(put.effects.scaled_out[0].functions, f(&[6, 7, 8]));
    // The pool (9) is now exhausted: the next step cannot be drawn, the object stays in S3.
    let put = w.put(5, "v", mib(18), 1);
    assert_eq!(
        put.placement,
        Placement::Bypass(BypassReason::PoolExhausted)
    );
    assert!(!w.contains("v"));
}

#[test]
fn occupancy_reports_stop_writes() {
    let mut w = SlidingWindow::new(small()).unwrap();
    w.put(0, "a", mib(4), 1);
    // f1 reports 9.5 MiB used (the runtime's view): above 90%, it stops taking writes; chunk
    // position 1 has no writable function left, so the bucket grows.
    let fx = w.occupancy(1, FunctionId(1), mib(9) + MIB / 2);
    assert_eq!(fx.stopped_writes, f(&[1]));
    assert_eq!(fx.scaled_out[0].functions, f(&[3, 4, 5]));
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=2 f1=2! f2=2 f3=0 f4=0 f5=0 | 1 obj"
    );
    assert_eq!(layout(&w.put(2, "b", mib(4), 1).placement), f(&[0, 4, 2]));
    // Reports for functions outside any bucket change nothing.
    assert!(w.occupancy(3, FunctionId(8), mib(10)).is_empty());
}

#[test]
fn lost_functions_are_recovered_delegated_or_ignored() {
    let mut w = SlidingWindow::new(WindowConfig {
        pool_size: 12,
        ..small()
    })
    .unwrap();
    w.put(0, "a", mib(4), 1); // b0: f0 f1 f2
    w.put(1, "c", mib(4), 1); // b0: f0 f1 f2
    w.tick(10 * MIN); // b1 = f3-f5
    w.tick(20 * MIN); // b0 degraded, b2 = f6-f8
    w.put(20 * MIN, "b", mib(4), 1); // b2: f6 f7 f8

    // Active bucket: recover now, from S3, the chunks it held (index 2 is parity).
    let loss = w.function_lost(20 * MIN, FunctionId(8));
    assert_eq!(
        loss.action,
        LossAction::Recover {
            chunks: vec![ChunkRef {
                key: "b".into(),
                index: 2,
                chunk_size: mib(2),
                parity: true,
            }]
        }
    );
    assert!(w.contains("b"));

    // Degraded bucket: no recovery. "a" and "c" lose chunk 0 but still have d = 2 chunks.
    let loss = w.function_lost(21 * MIN, FunctionId(0));
    assert_eq!(loss.action, LossAction::Delegate { chunks_lost: 2 });
    assert!(loss.effects.evicted.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded: f0=0 f1=4 f2=4 | 2 obj\n\
         b1 active: f3=0 f4=0 f5=0 | 0 obj\n\
         b2 active: f6=2 f7=2 f8=2 | 1 obj"
    );
    // A GET of "a" decodes without chunk 0 and promotes the object; the lost chunk is
    // rewritten from the decoded data (from = None).
    let get = w.get(22 * MIN, "a");
    match &get.lookup {
        Lookup::Functions { chunks, .. } => assert_eq!(chunks[0], None),
        other => panic!("{other:?}"),
    }
    assert_eq!(get.relocation[0].from, None);
    // Losing f1 as well leaves "c" with 1 chunk < d: evicted (it remains in S3).
    let loss = w.function_lost(23 * MIN, FunctionId(1));
    assert_eq!(loss.action, LossAction::Delegate { chunks_lost: 1 });
    assert_eq!(loss.effects.evicted, vec!["c".to_string()]);
    assert!(!w.contains("c"));
    assert_eq!(w.get(23 * MIN, "c").lookup, Lookup::Miss);

    // A function in the pool (never drawn) or unknown: nothing to do.
    assert_eq!(
        w.function_lost(24 * MIN, FunctionId(11)).action,
        LossAction::Nothing
    );
    assert_eq!(
        w.function_lost(24 * MIN, FunctionId(500)).action,
        LossAction::Nothing
    );
}

#[test]
fn promotion_between_the_ages_is_a_coin_flip() {
    for (p, promoted) in [(0.0, false), (1.0, true)] {
        let mut w = SlidingWindow::new(WindowConfig {
            promote_probability: p,
            ..small()
        })
        .unwrap();
        w.put(0, "a", mib(4), 1);
        w.tick(10 * MIN); // "a" is 1 bucket old: between maybe (1) and always (2)
        let get = w.get(10 * MIN + 1, "a");
        assert_eq!(!get.relocation.is_empty(), promoted, "p = {p}");
    }
    // Objects of the current bucket never move.
    let mut w = SlidingWindow::new(WindowConfig {
        promote_probability: 1.0,
        ..small()
    })
    .unwrap();
    w.put(0, "a", mib(4), 1);
    assert!(w.get(1, "a").relocation.is_empty());
}

#[test]
fn warmups_are_jittered_within_the_interval() {
    let mut w = SlidingWindow::new(WindowConfig {
        active_jitter_ms: 6_000,
        ..small()
    })
    .unwrap();
    w.put(0, "a", mib(4), 1);
    let next = w.next_wakeup().unwrap();
    assert!((54_000..=60_000).contains(&next), "{next}");
    let fx = w.tick(60_000);
    assert_eq!(fx.warmups.len(), 3);
    assert!(
        fx.warmups
            .iter()
            .all(|w| (54_000..=60_000).contains(&w.due))
    );
}

#[test]
fn small_large_and_replaced_objects() {
    let mut w = SlidingWindow::new(WindowConfig {
        min_object_bytes: MIB,
        ..small()
    })
    .unwrap();
    assert_eq!(
        w.put(0, "tiny", 1000, 1).placement,
        Placement::Bypass(BypassReason::TooSmall)
    );
    // A 30 MiB object in one piece needs 15 MiB chunks: more than a function holds.
    assert_eq!(
        w.put(0, "huge", mib(30), 1).placement,
        Placement::Bypass(BypassReason::TooLarge)
    );
    // Overwriting a key frees the old chunks (listed as stale) before placing the new ones.
    w.put(1, "k", mib(4), 1);
    let put = w.put(2, "k", mib(2), 1);
    assert_eq!(put.stale, f(&[0, 1, 2]));
    assert_eq!(w.snapshot().describe(), "b0 active: f0=1 f1=1 f2=1 | 1 obj");
    let del = w.delete(3, "k");
    assert_eq!((del.chunks, del.was_cached), (f(&[0, 1, 2]), true));
    assert_eq!(w.snapshot().describe(), "b0 active: f0=0 f1=0 f2=0 | 0 obj");
}

#[test]
fn configs_are_validated() {
    let err = SlidingWindow::new(WindowConfig {
        scale_step: 2,
        ..small()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid sliding-window config: `scale_step` must be >= d + p (3)"
    );
    assert!(
        SlidingWindow::new(WindowConfig {
            window_buckets: 1,
            ..small()
        })
        .is_err()
    );
    assert!(
        SlidingWindow::new(WindowConfig {
            promote_probability: 1.5,
            ..small()
        })
        .is_err()
    );
    assert!(SlidingWindow::new(WindowConfig::default()).is_ok());
    // The enum picks the policy at run time, e.g. from the gateway's TOML/JSON config.
    let cfg: PolicyConfig =
        serde_json::from_str(r#"{"kind": "sliding-window", "bucket_ms": 300000}"#).unwrap();
    let p = cfg.build().unwrap();
    assert_eq!(p.name(), "sliding-window");
    let bad: PolicyConfig =
        serde_json::from_str(r#"{"kind": "infinicache", "functions": 3}"#).unwrap();
    assert!(bad.build().is_err());
}

#[test]
fn an_idle_gateway_catches_up_without_drawing_functions_for_skipped_buckets() {
    let mut w = SlidingWindow::new(small()).unwrap();
    w.put(0, "a", mib(4), 1);
    // Nobody ticked for 25 minutes: buckets 1 and 2 are created on the way, but only the
    // current one (2) draws functions; bucket 0 is degraded.
    let fx = w.tick(25 * MIN);
    assert_eq!(fx.opened.len(), 1);
    assert_eq!(fx.opened[0].bucket, BucketId(2));
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded: f0=2 f1=2 f2=2 | 1 obj\n\
         b1 active:  | 0 obj\n\
         b2 active: f3=0 f4=0 f5=0 | 0 obj"
    );
    // Hours later: everything expired; of the skipped buckets only those still inside the
    // window exist (empty), and only the current one has functions.
    let fx = w.tick(300 * MIN);
    assert_eq!(fx.expired, vec![BucketId(0), BucketId(1), BucketId(2)]);
    assert_eq!(fx.evicted, vec!["a".to_string()]);
    assert_eq!(
        w.snapshot().describe(),
        "b28 degraded:  | 0 obj\n\
         b29 active:  | 0 obj\n\
         b30 active: f0=0 f1=0 f2=0 | 0 obj"
    );
}
