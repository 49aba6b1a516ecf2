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

fn inherited(fx: &Effects) -> Vec<(u64, u64, Vec<FunctionId>)> {
    fx.inherited
        .iter()
        .map(|i| (i.from.0, i.to.0, i.functions.clone()))
        .collect()
}

#[test]
fn rotation_carries_functions_that_take_writes_into_the_new_bucket() {
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

    // t=10 min: bucket 1 opens. f0-f2 still take writes: they move into it with their chunks
    // (bucket inheritance); nothing is drawn from the pool. "a" stays an object of bucket 0.
    // Their warm-ups, overdue since 2 min (nobody ticked in between), are sent now.
    let fx = w.tick(10 * MIN);
    assert_eq!(inherited(&fx), vec![(0, 1, f(&[0, 1, 2]))]);
    assert!(fx.opened.is_empty() && fx.scaled_out.is_empty());
    assert_eq!(warmed(&fx), vec![(0, 2 * MIN), (1, 2 * MIN), (2, 2 * MIN)]);
    assert_eq!(
        w.snapshot().describe(),
        "b0 active:  | 1 obj\n\
         b1 active: f0=2 f1=2 f2=2 | 0 obj"
    );

    // t=11 min: new writes go to the current bucket, on the same functions.
    assert_eq!(
        layout(&w.put(11 * MIN, "b", mib(4), 1).placement),
        f(&[0, 1, 2])
    );
    // "a" (1 bucket old, promotion probability 0) is read where it is.
    let get = w.get(11 * MIN, "a");
    assert!(get.lookup.is_hit() && get.relocation.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b0 active:  | 1 obj\n\
         b1 active: f0=4 f1=4 f2=4 | 1 obj"
    );

    // t=20 min: bucket 2 opens and inherits f0-f2; bucket 0 (age 2) leaves the active window.
    // It has no functions left to warm less often: its object is on functions of bucket 2.
    let fx = w.tick(20 * MIN);
    assert_eq!(fx.degraded, vec![BucketId(0)]);
    assert_eq!(inherited(&fx), vec![(1, 2, f(&[0, 1, 2]))]);
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded:  | 1 obj\n\
         b1 active:  | 1 obj\n\
         b2 active: f0=4 f1=4 f2=4 | 0 obj"
    );

    // t=21 min: a GET of "a" (age 2 >= 2) promotes it. Its chunks already are on functions
    // of the current bucket: nothing moves, "a" becomes an object of bucket 2.
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
    assert!(get.relocation.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded:  | 0 obj\n\
         b1 active:  | 1 obj\n\
         b2 active: f0=4 f1=4 f2=4 | 1 obj"
    );

    // t=30 min: bucket 0 (age 3) expires: no function to return, no object left in it ("a"
    // was promoted). Bucket 1 degrades; bucket 3 inherits f0-f2.
    let fx = w.tick(30 * MIN);
    assert_eq!(fx.expired, vec![BucketId(0)]);
    assert!(fx.returned.is_empty() && fx.evicted.is_empty());
    assert_eq!(fx.degraded, vec![BucketId(1)]);
    assert_eq!(inherited(&fx), vec![(2, 3, f(&[0, 1, 2]))]);

    // t=40 min: bucket 1 expires and "b" with it: its chunks are freed on f0-f2, which now
    // serve bucket 4. "b" remains in S3.
    let fx = w.tick(40 * MIN);
    assert_eq!(fx.expired, vec![BucketId(1)]);
    assert_eq!(fx.evicted, vec!["b".to_string()]);
    assert!(fx.returned.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b2 degraded:  | 1 obj\n\
         b3 active:  | 0 obj\n\
         b4 active: f0=2 f1=2 f2=2 | 0 obj"
    );
    assert!(!w.contains("b") && w.contains("a"));
    assert_eq!(w.get(40 * MIN, "b").lookup, Lookup::Miss);
    // Three functions served five buckets; the other six never left the pool.
    let s = w.stats();
    assert_eq!(s.functions_held, 3);
    assert_eq!(
        (s.active_buckets, s.degraded_buckets, s.expired_buckets),
        (2, 1, 2)
    );
}

#[test]
fn full_functions_stay_behind_degrade_and_expire() {
    let mut w = SlidingWindow::new(small()).unwrap();
    // Two objects of 10 MiB (chunks of 5 MiB) fill f0-f2 (10 MiB > 9 MiB): they stop taking
    // writes and bucket 0 grows by a step. A third object goes to the new functions.
    w.put(0, "x", mib(10), 1);
    w.put(1, "y", mib(10), 1);
    assert_eq!(layout(&w.put(2, "z", mib(4), 1).placement), f(&[3, 4, 5]));
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=10! f1=10! f2=10! f3=2 f4=2 f5=2 | 3 obj"
    );

    // t=10 min: bucket 1 inherits f3-f5, which still take writes; bucket 0 keeps its full
    // functions (read-only from now on) and its three objects, "z" included.
    let fx = w.tick(10 * MIN);
    assert_eq!(inherited(&fx), vec![(0, 1, f(&[3, 4, 5]))]);
    assert!(fx.opened.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=10! f1=10! f2=10! | 3 obj\n\
         b1 active: f3=2 f4=2 f5=2 | 0 obj"
    );

    // t=20 min: bucket 0 degrades: its functions are warmed every 5 minutes from their
    // warm-up now; the current bucket's every minute.
    let fx = w.tick(20 * MIN);
    assert_eq!(fx.degraded, vec![BucketId(0)]);
    assert_eq!(inherited(&fx), vec![(1, 2, f(&[3, 4, 5]))]);
    let warmed_at = |fx: &Effects| -> Vec<u32> {
        let mut v: Vec<u32> = fx.warmups.iter().map(|w| w.function.0).collect();
        v.sort();
        v
    };
    assert_eq!(warmed_at(&fx), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(warmed_at(&w.tick(24 * MIN)), vec![3, 4, 5]);
    assert_eq!(warmed_at(&w.tick(25 * MIN)), vec![0, 1, 2, 3, 4, 5]);

    // t=25 min: a GET of "x" (age 2) promotes it: its chunks are on bucket 0's functions, so
    // all three move to the current bucket (position i first).
    let get = w.get(25 * MIN, "x");
    let moves: Vec<(u32, Option<u32>, u32)> = get
        .relocation
        .iter()
        .map(|m| (m.index, m.from.map(|f| f.0), m.to.0))
        .collect();
    assert_eq!(
        moves,
        vec![(0, Some(0), 3), (1, Some(1), 4), (2, Some(2), 5)]
    );
    // The move counts once the gateway reports it done.
    w.relocated(25 * MIN, "x", &get.relocation, true);
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded: f0=5! f1=5! f2=5! | 2 obj\n\
         b1 active:  | 0 obj\n\
         b2 active: f3=7 f4=7 f5=7 | 1 obj"
    );

    // t=30 min: bucket 0 expires: "y" (on f0-f2) and "z" (on f3-f5, now bucket 3's) are
    // evicted, f0-f2 return to the pool. Bucket 3 inherits f3-f5.
    let fx = w.tick(30 * MIN);
    assert_eq!(fx.expired, vec![BucketId(0)]);
    assert_eq!(fx.returned, f(&[0, 1, 2]));
    assert_eq!(fx.evicted, vec!["y".to_string(), "z".to_string()]);
    assert_eq!(inherited(&fx), vec![(2, 3, f(&[3, 4, 5]))]);
    assert_eq!(
        w.snapshot().describe(),
        "b1 degraded:  | 0 obj\n\
         b2 active:  | 1 obj\n\
         b3 active: f3=5 f4=5 f5=5 | 0 obj"
    );
    assert!(w.contains("x") && !w.contains("y") && !w.contains("z"));
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
    // The pool (9) is now exhausted and there is no older bucket to expire: the current
    // bucket's oldest objects are evicted until the chunks (9 MiB) fit.
    let put = w.put(5, "v", mib(18), 1);
    assert_eq!(layout(&put.placement), f(&[0, 1, 2]));
    assert_eq!(put.effects.evicted, vec!["x".to_string(), "y".to_string()]);
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=9 f1=9 f2=9 f3=8 f4=8 f5=8 f6=4 f7=4 f8=4 | 4 obj"
    );
    // An object that would not fit even in the empty pool (9 pieces of 4 MiB chunks: 3 per
    // function, 12 MiB > 10) bypasses memory at once, evicting nothing.
    let put = w.put(6, "huge", mib(72), 9);
    assert_eq!(put.placement, Placement::Bypass(BypassReason::TooLarge));
    assert!(put.effects.evicted.is_empty());
}

#[test]
fn a_pool_of_one_step_keeps_caching_through_rotations() {
    // The gateway's default shape (issue 15): pool = scale step = d + p.
    let mut w = SlidingWindow::new(WindowConfig {
        pool_size: 3,
        ..small()
    })
    .unwrap();
    w.put(0, "a", mib(4), 1);
    // t=10 min: bucket 1 inherits all three functions, so it can take writes at once.
    let fx = w.tick(10 * MIN);
    assert_eq!(inherited(&fx), vec![(0, 1, f(&[0, 1, 2]))]);
    assert_eq!(
        layout(&w.put(11 * MIN, "b", mib(10), 1).placement),
        f(&[0, 1, 2])
    );
    w.put(12 * MIN, "c", mib(4), 1);
    assert_eq!(
        w.snapshot().describe(),
        "b0 active:  | 1 obj\n\
         b1 active: f0=9 f1=9 f2=9 | 2 obj"
    );
    // t=13 min: 9 + 2 > 10, the pool is empty: bucket 0 expires early ("a" is evicted, which
    // frees 2 MiB on each function) and "d" fits.
    let put = w.put(13 * MIN, "d", mib(4), 1);
    assert_eq!(layout(&put.placement), f(&[0, 1, 2]));
    assert_eq!(put.effects.expired, vec![BucketId(0)]);
    assert_eq!(put.effects.evicted, vec!["a".to_string()]);
    assert_eq!(w.snapshot().describe(), "b1 active: f0=9 f1=9 f2=9 | 3 obj");

    // t=20 min: bucket 2 inherits them (9 MiB is not above the threshold). A 10 MiB object
    // needs 5 MiB per function: bucket 1 (active, the oldest) expires early.
    w.tick(20 * MIN);
    let put = w.put(21 * MIN, "e", mib(10), 1);
    assert_eq!(layout(&put.placement), f(&[0, 1, 2]));
    assert_eq!(put.effects.expired, vec![BucketId(1)]);
    assert_eq!(
        put.effects.evicted,
        vec!["b".to_string(), "c".to_string(), "d".to_string()]
    );
    // Another one fills them: they stop taking writes, and there is nothing to draw.
    let put = w.put(22 * MIN, "f", mib(10), 1);
    assert_eq!(put.effects.stopped_writes, f(&[0, 1, 2]));
    assert_eq!(
        w.snapshot().describe(),
        "b2 active: f0=10! f1=10! f2=10! | 2 obj"
    );
    // Only the current bucket is left: its oldest object makes room.
    let put = w.put(23 * MIN, "g", mib(4), 1);
    assert_eq!(layout(&put.placement), f(&[0, 1, 2]));
    assert_eq!(put.effects.evicted, vec!["e".to_string()]);
    assert_eq!(w.snapshot().describe(), "b2 active: f0=7 f1=7 f2=7 | 2 obj");

    // t=30 min: bucket 3 inherits them; "h" fills them. At 40 min they stay behind, full, in
    // bucket 3: bucket 4 has no function and the pool is empty. Nothing is expired yet.
    w.tick(30 * MIN);
    w.put(31 * MIN, "h", mib(6), 1);
    let fx = w.tick(40 * MIN);
    assert!(fx.inherited.is_empty() && fx.expired.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b2 degraded:  | 2 obj\n\
         b3 active: f0=10! f1=10! f2=10! | 1 obj\n\
         b4 active:  | 0 obj"
    );
    // The next write expires the oldest buckets until their functions come back: bucket 2
    // (degraded) frees memory but no function, bucket 3 (active) returns f0-f2, and bucket 4
    // opens with them.
    let put = w.put(41 * MIN, "i", mib(4), 1);
    assert_eq!(layout(&put.placement), f(&[0, 1, 2]));
    assert_eq!(put.effects.expired, vec![BucketId(2), BucketId(3)]);
    assert_eq!(
        put.effects.evicted,
        vec!["f".to_string(), "g".to_string(), "h".to_string()]
    );
    assert_eq!(put.effects.returned, f(&[0, 1, 2]));
    assert_eq!(put.effects.opened[0].bucket, BucketId(4));
    assert_eq!(w.snapshot().describe(), "b4 active: f0=2 f1=2 f2=2 | 1 obj");
}

#[test]
fn occupancy_reports_stop_writes() {
    let mut w = SlidingWindow::new(small()).unwrap();
    w.put(0, "a", mib(4), 1);
    // f1 reports 9.5 MiB used (the runtime's view): above 90%, it stops taking writes; fewer
    // than d + p = 3 functions of the current bucket take writes, so the bucket grows.
    let fx = w.occupancy(1, FunctionId(1), mib(9) + MIB / 2);
    assert_eq!(fx.stopped_writes, f(&[1]));
    assert_eq!(fx.scaled_out[0].functions, f(&[3, 4, 5]));
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=2 f1=2! f2=2 f3=0 f4=0 f5=0 | 1 obj"
    );
    assert_eq!(layout(&w.put(2, "b", mib(4), 1).placement), f(&[0, 4, 2]));
    // A later report at or below the threshold lets it take writes again.
    assert!(w.occupancy(3, FunctionId(1), mib(2)).is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b0 active: f0=4 f1=2 f2=4 f3=0 f4=2 f5=0 | 2 obj"
    );
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
    w.put(0, "a", mib(10), 1); // b0: f0 f1 f2
    w.put(1, "c", mib(10), 1); // b0: f0 f1 f2, now full: b0 grows by f3-f5
    w.put(2, "o", mib(4), 1); // b0: f3 f4 f5
    w.tick(10 * MIN); // b1 inherits f3-f5
    w.tick(20 * MIN); // b0 degraded, b2 inherits f3-f5
    w.put(20 * MIN, "b", mib(4), 1); // b2: f3 f4 f5
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded: f0=10! f1=10! f2=10! | 3 obj\n\
         b1 active:  | 0 obj\n\
         b2 active: f3=4 f4=4 f5=4 | 1 obj"
    );

    // A function of an active bucket: recover now, from S3, every chunk it holds (index 2
    // is parity), whatever their objects' buckets: "o" belongs to degraded bucket 0, but
    // its chunk is on f5, which serves the current bucket.
    let loss = w.function_lost(20 * MIN, FunctionId(5));
    let chunk = |key: &str| ChunkRef {
        key: key.into(),
        index: 2,
        chunk_size: mib(2),
        parity: true,
    };
    assert_eq!(
        loss.action,
        LossAction::Recover {
            chunks: vec![chunk("o"), chunk("b")]
        }
    );
    assert!(w.contains("b") && w.contains("o"));

    // Degraded bucket: no recovery. "a" and "c" lose chunk 0 but still have d = 2 chunks.
    let loss = w.function_lost(21 * MIN, FunctionId(0));
    assert_eq!(loss.action, LossAction::Delegate { chunks_lost: 2 });
    assert!(loss.effects.evicted.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded: f0=0! f1=10! f2=10! | 3 obj\n\
         b1 active:  | 0 obj\n\
         b2 active: f3=4 f4=4 f5=4 | 1 obj"
    );
    // A GET of "a" decodes without chunk 0 and promotes the object; the lost chunk is
    // rewritten from the decoded data (from = None).
    let get = w.get(22 * MIN, "a");
    match &get.lookup {
        Lookup::Functions { chunks, .. } => assert_eq!(chunks[0], None),
        other => panic!("{other:?}"),
    }
    assert_eq!(get.relocation[0].from, None);
    w.relocated(22 * MIN, "a", &get.relocation, true);
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
        // "a" and "x" fill f0-f2, which stay behind in bucket 0 at the rotation.
        w.put(0, "a", mib(10), 1);
        w.put(0, "x", mib(10), 1);
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
    // An object whose chunks are on inherited functions is promoted without moving data.
    w.tick(10 * MIN);
    assert!(w.get(10 * MIN + 1, "a").relocation.is_empty());
    assert_eq!(
        w.snapshot().describe(),
        "b0 active:  | 0 obj\n\
         b1 active: f0=2 f1=2 f2=2 | 1 obj"
    );
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
    // The enum picks the policy at run time, e.g. from a TOML/JSON config; the pool and the
    // code are the deployment's, not read from it.
    let cfg: PolicyConfig =
        serde_json::from_str(r#"{"kind": "sliding-window", "bucket": "5m"}"#).unwrap();
    let p = cfg.build().unwrap();
    assert_eq!(p.name(), "sliding-window");
    assert!(
        serde_json::from_str::<PolicyConfig>(r#"{"kind": "infinicache", "functions": 3}"#).is_err()
    );
    let bad: PolicyConfig =
        serde_json::from_str(r#"{"kind": "infinicache", "warmup": 0}"#).unwrap();
    assert!(bad.build().is_err());
}

#[test]
fn an_idle_gateway_catches_up_without_drawing_functions_for_skipped_buckets() {
    let mut w = SlidingWindow::new(small()).unwrap();
    w.put(0, "a", mib(4), 1);
    // Nobody ticked for 25 minutes: buckets 1 and 2 are created on the way, but only the
    // current one (2) gets functions: it inherits bucket 0's, which still take writes;
    // bucket 0 is degraded.
    let fx = w.tick(25 * MIN);
    assert!(fx.opened.is_empty());
    assert_eq!(inherited(&fx), vec![(0, 2, f(&[0, 1, 2]))]);
    assert_eq!(
        w.snapshot().describe(),
        "b0 degraded:  | 1 obj\n\
         b1 active:  | 0 obj\n\
         b2 active: f0=2 f1=2 f2=2 | 0 obj"
    );
    // Hours later: everything expired; of the skipped buckets only those still inside the
    // window exist (empty). Bucket 2 expired too, so there is nothing to inherit: the current
    // one draws from the pool.
    let fx = w.tick(300 * MIN);
    assert_eq!(fx.expired, vec![BucketId(0), BucketId(1), BucketId(2)]);
    assert_eq!(fx.evicted, vec!["a".to_string()]);
    assert_eq!(fx.returned, f(&[0, 1, 2]));
    assert!(fx.inherited.is_empty());
    assert_eq!(fx.opened[0].bucket, BucketId(30));
    assert_eq!(
        w.snapshot().describe(),
        "b28 degraded:  | 0 obj\n\
         b29 active:  | 0 obj\n\
         b30 active: f0=0 f1=0 f2=0 | 0 obj"
    );
}
