//! Step-by-step tests of the two baselines, showing the state after each event.

use policy::*;

fn mib(n: u64) -> u64 {
    n * MIB
}

/// 4 functions of 10 MiB for chunks, d = 2, p = 1, warmed every minute without jitter.
fn small_pool() -> InfiniCacheConfig {
    InfiniCacheConfig {
        functions: 4,
        function_memory_mb: 12,
        reserved_mb: 2,
        data_chunks: 2,
        parity_chunks: 1,
        warmup_ms: 60_000,
        jitter_ms: 0,
        min_object_bytes: 0,
        seed: 3,
    }
}

fn functions(p: &Placement) -> Vec<u32> {
    match p {
        Placement::Functions(l) => l.functions.iter().map(|f| f.0).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn infinicache_pool_places_randomly_and_evicts_lru_objects() {
    let mut p = InfiniCache::new(small_pool()).unwrap();
    // The whole pool is warmed from the first event on, every minute.
    assert_eq!(p.tick(0).warmups.len(), 4);
    assert_eq!(p.next_wakeup(), Some(60_000));

    // 8 MiB objects: one piece of 3 chunks of 4 MiB on 3 distinct functions picked at random
    // (seeded) among those with room; at most 2 such chunks fit in a function (10 MiB).
    assert_eq!(
        functions(&p.put(1, "a", mib(8), 1).placement),
        vec![0, 2, 3]
    );
    assert_eq!(p.snapshot().describe(), "pool: f0=4 f2=4 f3=4 | 1 obj");
    assert_eq!(
        functions(&p.put(2, "b", mib(8), 1).placement),
        vec![0, 3, 2]
    );
    assert_eq!(p.snapshot().describe(), "pool: f0=8 f2=8 f3=8 | 2 obj");
    // "a" is read: it becomes the most recently used.
    assert!(p.get(3, "a").lookup.is_hit());
    // "c" needs 3 functions with 4 MiB free: only f1 has it. The least recently used object,
    // "b", is evicted whole, and "c" lands on 3 of the 4 functions.
    let put = p.put(4, "c", mib(8), 1);
    assert_eq!(put.effects.evicted, vec!["b".to_string()]);
    assert_eq!(functions(&put.placement), vec![3, 1, 0]);
    assert_eq!(p.snapshot().describe(), "pool: f0=8 f1=4 f2=4 f3=8 | 2 obj");
    assert_eq!(p.get(5, "b").lookup, Lookup::Miss);

    // A reclaimed function loses its chunks (chunk 0 of "a", chunk 2 of "c"); both keep d = 2
    // of 3 and stay readable.
    let loss = p.function_lost(6, FunctionId(0));
    assert_eq!(loss.action, LossAction::RepairOnRead { chunks_lost: 2 });
    assert!(loss.effects.evicted.is_empty());
    assert_eq!(p.snapshot().describe(), "pool: f1=4 f2=4 f3=8 | 2 obj");
    // The next GET decodes without the lost chunk and rewrites it on a function that holds no
    // other chunk of the piece (f1: "a" is on f2 and f3).
    let get = p.get(7, "a");
    match &get.lookup {
        Lookup::Functions { chunks, .. } => {
            assert_eq!(
                chunks,
                &vec![None, Some(FunctionId(2)), Some(FunctionId(3))]
            )
        }
        other => panic!("{other:?}"),
    }
    let moves: Vec<(u32, Option<FunctionId>, u32)> = get
        .relocation
        .iter()
        .map(|m| (m.index, m.from, m.to.0))
        .collect();
    assert_eq!(moves, vec![(0, None, 1)]);
    // Nothing moves until the gateway reports the repair done; a failed one changes nothing.
    assert_eq!(p.snapshot().describe(), "pool: f1=4 f2=4 f3=8 | 2 obj");
    p.relocated(7, "a", &get.relocation, false);
    assert_eq!(p.snapshot().describe(), "pool: f1=4 f2=4 f3=8 | 2 obj");
    p.relocated(7, "a", &get.relocation, true);
    assert_eq!(p.snapshot().describe(), "pool: f1=8 f2=4 f3=8 | 2 obj");
    // Losing f1 takes a second chunk of "c" (never read, so never repaired): 1 < d chunks
    // left, evicted (it remains in S3). Losing f2 then does the same to "a".
    let loss = p.function_lost(8, FunctionId(1));
    assert_eq!(loss.effects.evicted, vec!["c".to_string()]);
    let loss = p.function_lost(8, FunctionId(2));
    assert_eq!(loss.effects.evicted, vec!["a".to_string()]);
    assert_eq!(p.snapshot().describe(), "pool:  | 0 obj");
    assert!(!p.contains("a") && !p.contains("c"));

    // Warm-ups: every function is warmed a minute after it was last invoked: f0 restarted at
    // 6 ms, f3 served "a" at 7 ms, f1 and f2 restarted at 8 ms.
    assert!(p.tick(60_000).warmups.is_empty());
    let fx = p.tick(61_000);
    let warmed: Vec<(u32, u64)> = fx.warmups.iter().map(|w| (w.function.0, w.due)).collect();
    assert_eq!(
        warmed,
        vec![(0, 60_006), (3, 60_007), (1, 60_008), (2, 60_008)]
    );
}

#[test]
fn provisioned_cluster_is_lru_of_whole_objects() {
    // One node with 10 MiB of usable memory.
    let node = NodeType {
        name: "test.node".into(),
        memory_gib: 10.0 / 1024.0,
        hourly_usd: 1.0,
    };
    let mut p = Provisioned::new(ProvisionedConfig {
        node,
        nodes: 1,
        usable_fraction: 1.0,
        min_object_bytes: 0,
    })
    .unwrap();
    assert_eq!(p.put(0, "a", mib(4), 1).placement, Placement::Node);
    assert_eq!(p.put(1, "b", mib(4), 1).placement, Placement::Node);
    assert_eq!(p.snapshot().describe(), "nodes: 8 MiB | 2 obj");
    assert_eq!(p.get(2, "a").lookup, Lookup::Node); // a is now the most recent
    // c does not fit beside a and b: b (least recently used) goes.
    let put = p.put(3, "c", mib(4), 1);
    assert_eq!(put.effects.evicted, vec!["b".to_string()]);
    assert_eq!(p.snapshot().describe(), "nodes: 8 MiB | 2 obj");
    assert_eq!(p.get(4, "b").lookup, Lookup::Miss);
    assert_eq!(
        p.put(5, "huge", mib(11), 1).placement,
        Placement::Bypass(BypassReason::TooLarge)
    );
    // Nothing to warm, nothing to lose.
    assert_eq!(p.next_wakeup(), None);
    assert_eq!(
        p.function_lost(6, FunctionId(0)).action,
        LossAction::Nothing
    );
}

#[test]
fn provisioned_sizing_picks_the_cheapest_cluster() {
    let cat = provisioned::default_catalogue();
    // 100 GB = 93.1 GiB at 75% usable: r6g.xlarge holds 26.32 x 0.75 = 19.74 GiB -> 5 nodes,
    // $2.055/h; r6g.large would need 10 ($2.06/h), the r5s cost more, the 24xlarge $10.368/h.
    let c = ProvisionedConfig::sized_for(100_000_000_000, &cat, 0.75);
    assert_eq!((c.node.name.as_str(), c.nodes), ("cache.r6g.xlarge", 5));
    assert!((c.hourly_usd() - 2.055).abs() < 1e-9);
    // A small working set still needs one node.
    let c = ProvisionedConfig::sized_for(1, &cat, 0.75);
    assert_eq!((c.node.name.as_str(), c.nodes), ("cache.r6g.large", 1));
    // The default cluster is InfiniCache's ElastiCache baseline: $10.368/h, $518.4 for 50 h.
    let d = ProvisionedConfig::default();
    assert!((d.hourly_usd() * 50.0 - 518.4).abs() < 1e-9);
}
