//! A function's resident memory under fill/evict cycles: it stays under the configured memory
//! size, and what evictions free goes back to the operating system.
//!
//! `MEMFN_SOAK_BINARY=path` runs another `mem-function` build (to compare allocators);
//! `MEMFN_SOAK_ENV='K=V K=V'` adds to its environment; `--nocapture` prints the numbers.

mod common;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use mem_function::callback::{CallError, FunctionConn};
use mem_function::wire::{ChunkId, Command, NodeState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// VmRSS of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Chunk sizes as the tier produces them: mostly pieces of 1–10 MiB objects cut into ten
/// (100 KiB – 1 MiB), some small ones, a few large ones; odd lengths. The mix shifts from
/// cycle to cycle (the workload's object sizes do), so the holes evictions leave are often
/// the wrong size for the next chunks.
fn tier_chunk_len(rng: &mut StdRng, cycle: usize) -> usize {
    match (rng.random_range(0..10), cycle % 3) {
        (0 | 1, _) => rng.random_range(1_000..64 * 1024),
        (2, _) => rng.random_range(1 << 20..3 << 20),
        (_, 0) => rng.random_range(100 * 1024..300 * 1024),
        (_, 1) => rng.random_range(600 * 1024..1 << 20),
        _ => rng.random_range(100 * 1024..1 << 20),
    }
}

/// Small chunks only (a tier configured with small chunks), alternating between two size
/// ranges: all on the heap, where evictions leave holes of the wrong size.
fn small_chunk_len(rng: &mut StdRng, cycle: usize) -> usize {
    if cycle.is_multiple_of(2) {
        rng.random_range(1_000..8_000)
    } else {
        rng.random_range(20_000..60_000)
    }
}

type ChunkLen = fn(&mut StdRng, usize) -> usize;

/// Puts chunks until the function answers FULL; returns the ids stored.
/// Reads of held chunks go on meanwhile, as a cache's would.
async fn fill(
    conn: &FunctionConn,
    rng: &mut StdRng,
    chunk_len: ChunkLen,
    cycle: usize,
    pool: &Bytes,
    next: &mut u128,
    held: &[ChunkId],
) -> Vec<ChunkId> {
    let mut stored = Vec::new();
    let mut full = false;
    while !full {
        let reads: Vec<ChunkId> = if held.is_empty() {
            Vec::new()
        } else {
            (0..4)
                .map(|_| held[rng.random_range(0..held.len())].clone())
                .collect()
        };
        let gets = futures::future::join_all(reads.iter().map(|id| conn.get_chunk(id)));
        let mut puts: FuturesUnordered<_> = (0..8)
            .map(|_| {
                let len = chunk_len(rng, cycle);
                let off = rng.random_range(0..pool.len() - len);
                let id = ChunkId::for_object(*next, 0, 0);
                *next += 1;
                let data = pool.slice(off..off + len);
                async move { (id.clone(), conn.put_chunk(&id, data).await) }
            })
            .collect();
        let (got, ()) = futures::join!(gets, async {
            while let Some((id, r)) = puts.next().await {
                match r {
                    Ok(_) => stored.push(id),
                    Err(CallError::Full { .. }) => full = true,
                    Err(e) => panic!("put: {e}"),
                }
            }
        });
        for g in got {
            g.expect("get");
        }
    }
    stored
}

async fn delete_fraction(
    conn: &FunctionConn,
    rng: &mut StdRng,
    held: &mut Vec<ChunkId>,
    fraction: f64,
) {
    let n = (held.len() as f64 * fraction) as usize;
    for _ in 0..n {
        let i = rng.random_range(0..held.len());
        let id = held.swap_remove(i);
        assert!(conn.delete_chunk(&id).await.unwrap());
    }
}

fn soak_setup(memory_mb: u32) -> Setup {
    let mut overrides = BTreeMap::new();
    if let Ok(extra) = std::env::var("MEMFN_SOAK_ENV") {
        let env = extra
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        overrides.insert(
            "node-0".to_owned(),
            mem_function::emulator::FunctionOverride {
                env,
                ..Default::default()
            },
        );
    }
    Setup {
        memory_mb,
        overhead_mb: 32,
        overrides,
        binary: std::env::var_os("MEMFN_SOAK_BINARY").map(Into::into),
        ..Setup::default()
    }
}

/// What a soak saw.
struct Soak {
    limit: u64,
    capacity: u64,
    /// Highest resident set seen.
    peak: u64,
    /// Bytes held (charged) when each fill ended.
    filled: Vec<u64>,
    /// Resident set and bytes held after the last, large eviction.
    end_rss: u64,
    end_used: u64,
}

/// Fill the function to FULL, evict 60% of its chunks at random, fill again, `cycles` times,
/// one invocation per cycle; then evict 95%. Checks after every fill and eviction that the
/// resident set is under the memory size.
async fn soak(memory_mb: u32, chunk_len: ChunkLen, cycles: usize) -> Soak {
    let setup = soak_setup(memory_mb);
    let limit = u64::from(setup.memory_mb) * MIB;
    let mut h = Harness::start(setup).await;
    let mut view = NodeState::EMPTY;
    let mut call = h.invoke("node-0", &h.payload("node-0", Command::Serve, view));
    let mut conn = h.conn("node-0").await;
    let pid = h.instance("node-0").expect("instance").pid;
    let capacity = conn.hello().stats.capacity_bytes;
    let mut rng = StdRng::seed_from_u64(7);
    let pool = random_bytes(8 << 20);
    let mut next = 1u128;
    let mut held = Vec::new();
    let mut peak = 0u64;
    let mut filled = Vec::new();
    let started = Instant::now();
    eprintln!(
        "limit {} MiB, capacity {} MiB, baseline rss {} MiB",
        limit / MIB,
        capacity / MIB,
        rss(pid) / MIB
    );
    for cycle in 0..cycles {
        if cycle > 0 {
            view = conn.bye().await.unwrap().state;
            call.await.unwrap().response();
            call = h.invoke("node-0", &h.payload("node-0", Command::Serve, view));
            conn = h.conn("node-0").await;
            assert_eq!(conn.hello().view, mem_function::wire::ViewCheck::Match);
        }
        let more = fill(&conn, &mut rng, chunk_len, cycle, &pool, &mut next, &held).await;
        held.extend(more);
        let used = conn.stats().await.unwrap().stats.used_bytes;
        let full_rss = rss(pid);
        delete_fraction(&conn, &mut rng, &mut held, 0.6).await;
        let after = conn.stats().await.unwrap().stats.used_bytes;
        let evicted_rss = rss(pid);
        peak = peak.max(full_rss).max(evicted_rss);
        filled.push(used);
        eprintln!(
            "cycle {cycle}: full used {:>4} MiB rss {:>4} MiB | after evicting 60%: used {:>4} MiB rss {:>4} MiB",
            used / MIB,
            full_rss / MIB,
            after / MIB,
            evicted_rss / MIB
        );
        assert!(
            full_rss < limit,
            "cycle {cycle}: rss {} MiB over the function's {} MiB (used {} MiB)",
            full_rss / MIB,
            limit / MIB,
            used / MIB
        );
    }
    delete_fraction(&conn, &mut rng, &mut held, 0.95).await;
    // Give an allocator that returns memory lazily a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let end_used = conn.stats().await.unwrap().stats.used_bytes;
    let end_rss = rss(pid);
    eprintln!(
        "after evicting 95%: used {} MiB rss {} MiB; peak rss {} MiB; {:?}",
        end_used / MIB,
        end_rss / MIB,
        peak / MIB,
        started.elapsed()
    );
    conn.bye().await.unwrap();
    call.await.unwrap().response();
    Soak {
        limit,
        capacity,
        peak,
        filled,
        end_rss,
        end_used,
    }
}

/// The tier's chunk sizes: the function fills to its capacity every cycle and stays under its
/// memory size, and what the last eviction frees goes back to the operating system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_evict_cycles_stay_under_the_memory_size_and_free_memory_returns() {
    let s = soak(256, tier_chunk_len, 8).await;
    assert!(s.peak < s.limit);
    for (cycle, used) in s.filled.iter().enumerate() {
        assert!(
            *used > s.capacity - 4 * MIB,
            "cycle {cycle}: filled only {} of {} MiB",
            used / MIB,
            s.capacity / MIB
        );
    }
    assert!(
        s.end_rss < s.end_used + 32 * MIB,
        "freed memory not returned: rss {} MiB for {} MiB held",
        s.end_rss / MIB,
        s.end_used / MIB
    );
}

/// Small chunks live on the heap, which fragments: the function refuses chunks once its
/// resident set nears its memory size (the resident limit), rather than growing past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunks_on_a_fragmented_heap_stay_under_the_memory_size() {
    let s = soak(128, small_chunk_len, 6).await;
    assert!(s.peak < s.limit, "peak {} MiB", s.peak / MIB);
}
