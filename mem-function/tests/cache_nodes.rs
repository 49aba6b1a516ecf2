//! Cache nodes under the emulator, invoked through the Lambda Invoke API with the real
//! `aws_sdk_lambda` client: chunk traffic, multiplexing, memory limits, corruption.

mod common;

use bytes::Bytes;
use common::*;
use futures::future::join_all;
use mem_function::callback::{CallError, Fault};
use mem_function::invocation::Outcome;
use mem_function::wire::{ByteRange, ChunkId, Command, NodeState, ViewCheck};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_functions_round_trip_chunks_of_1k_to_64m() {
    let names: Vec<String> = (0..12).map(|i| format!("node-{i}")).collect();
    let mut h = Harness::start(Setup {
        names: names.clone(),
        memory_mb: 256,
        overhead_mb: 64,
        ..Setup::default()
    })
    .await;

    let started = Instant::now();
    let mut calls = Vec::new();
    for n in &names {
        calls.push((
            n.clone(),
            h.invoke(n, &h.payload(n, Command::Serve, NodeState::EMPTY)),
        ));
    }
    let mut conns = Vec::new();
    for n in &names {
        let c = h.conn(n).await;
        assert_eq!(c.hello().view, ViewCheck::Fresh);
        assert_eq!(c.hello().command, Command::Serve);
        assert_eq!(c.hello().stats.capacity_bytes, 192 * 1024 * 1024);
        conns.push(c);
    }
    eprintln!("12 cold starts + dial-backs in {:?}", started.elapsed());
    assert_eq!(h.emu.instances().len(), 12);

    // Sizes from 1 KiB to 64 MiB, odd sizes included; chunk i goes to node i % 12.
    let sizes: Vec<usize> = vec![
        1024,
        4096 + 7,
        64 * 1024,
        256 * 1024 + 3,
        1024 * 1024,
        3 * 1024 * 1024 + 1,
        8 * 1024 * 1024,
        16 * 1024 * 1024,
        64 * 1024 * 1024,
        1024,
        100_000,
        2 * 1024 * 1024,
    ];
    let chunks: Vec<(usize, ChunkId, Bytes)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            (
                i % 12,
                ChunkId::for_object(0xC0FFEE, 0, i as u16),
                random_bytes(len),
            )
        })
        .collect();
    let t = Instant::now();
    let puts = join_all(
        chunks
            .iter()
            .map(|(n, id, data)| conns[*n].put_chunk(id, data.clone())),
    )
    .await;
    for (r, (n, _, data)) in puts.into_iter().zip(&chunks) {
        let ack = r.unwrap_or_else(|e| panic!("put of {} bytes on node-{n}: {e}", data.len()));
        assert!(ack.stats.used_bytes >= data.len() as u64);
        assert_eq!(ack.state.term, 1);
    }
    eprintln!(
        "puts of {} MiB in {:?}",
        sizes.iter().sum::<usize>() >> 20,
        t.elapsed()
    );

    let gets = join_all(chunks.iter().map(|(n, id, _)| conns[*n].get_chunk(id))).await;
    for (r, (_, id, data)) in gets.into_iter().zip(&chunks) {
        let got = r.unwrap();
        assert_eq!(got.len(), data.len(), "{id}");
        assert!(got == *data, "bytes of {id} differ");
    }
    // Ranges: head, middle, tail, past-the-end cut short, empty at the end.
    for (n, id, data) in &chunks {
        let len = data.len() as u64;
        for range in [
            ByteRange {
                offset: 0,
                length: Some(100),
            },
            ByteRange {
                offset: len / 3,
                length: Some(len / 3),
            },
            ByteRange {
                offset: len - 10,
                length: None,
            },
            ByteRange {
                offset: len - 5,
                length: Some(1000),
            },
            ByteRange {
                offset: len,
                length: None,
            },
        ] {
            let r = conns[*n].get_chunk_range(id, range).await.unwrap();
            let (s, e) = range.resolve(len).unwrap();
            assert_eq!(r.chunk_len, len);
            assert_eq!(&r.data[..], &data[s as usize..e as usize], "{id} {range:?}");
        }
    }
    let err = conns[0]
        .get_chunk_range(
            &chunks[0].1,
            ByteRange {
                offset: 1 << 40,
                length: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Rejected { .. }), "{err:?}");
    let err = conns[0]
        .get_chunk(&ChunkId::for_object(1, 2, 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::NotFound) && err.fault() == Fault::Function && !err.is_retryable()
    );

    // Listing and stat, for recovery.
    let listed = conns[0].list_all().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].len, 1024);
    assert_eq!(listed[0].crc32c, crc32c::crc32c(&chunks[0].2));
    let st = conns[8].stat(&chunks[8].1).await.unwrap();
    assert_eq!(st.len, 64 * 1024 * 1024);
    assert!(conns[3].ping().await.unwrap() < Duration::from_secs(5));

    // Delete, then the state moves on.
    assert!(conns[1].delete_chunk(&chunks[1].1).await.unwrap());
    assert!(!conns[1].delete_chunk(&chunks[1].1).await.unwrap());
    assert_eq!(conns[1].stats().await.unwrap().state.term, 2);

    // End every session; each invocation returns with the state the gateway last saw.
    let byes = join_all(conns.iter().map(|c| c.bye())).await;
    for (r, c) in byes.into_iter().zip(&conns) {
        assert_eq!(r.unwrap().state, c.last_ack().state);
    }
    for (n, call) in calls {
        let resp = call.await.unwrap().response();
        assert_eq!(resp.outcome, Outcome::Bye, "{n}");
        assert_eq!(resp.view, ViewCheck::Fresh);
        assert_eq!(resp.invocations, 1);
        assert_eq!(resp.node_id, n);
        assert_eq!(resp.function_name, n);
        let c = conns.iter().find(|c| c.node_id() == n).unwrap();
        assert_eq!(resp.state, c.last_ack().state);
        assert_eq!(resp.instance_id, c.instance_id());
    }
    eprintln!("test body took {:?}", started.elapsed());
}

/// A current-thread runtime: all 64 calls are registered before the connection's reader task
/// gets to run, so they are provably in flight together.
#[tokio::test(flavor = "current_thread")]
async fn sixty_four_requests_in_flight_on_one_connection() {
    let mut h = Harness::start(Setup::default()).await;
    let call = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Serve, NodeState::EMPTY),
    );
    let conn = h.conn("node-0").await;

    let chunks: Vec<(ChunkId, Bytes)> = (0..64u16)
        .map(|i| {
            (
                ChunkId::for_object(7, 1, i),
                random_bytes(16 * 1024 + i as usize * 1000),
            )
        })
        .collect();
    let puts = join_all(chunks.iter().map(|(id, d)| conn.put_chunk(id, d.clone()))).await;
    assert!(puts.iter().all(|r| r.is_ok()), "{puts:?}");
    let m = conn.metrics();
    assert!(m.max_in_flight >= 64, "max in flight {}", m.max_in_flight);
    assert_eq!(m.in_flight, 0);
    assert_eq!(conn.last_ack().state.term, 64);

    // 64 reads of different chunks and ranges at once: each answer must be its own.
    let reads = join_all(chunks.iter().enumerate().map(|(i, (id, _))| {
        let c = conn.clone();
        async move {
            if i % 2 == 0 {
                c.get_chunk(id).await.map(|d| (0usize, d))
            } else {
                c.get_chunk_range(
                    id,
                    ByteRange {
                        offset: i as u64,
                        length: Some(1000 + i as u64),
                    },
                )
                .await
                .map(|r| (r.offset as usize, r.data))
            }
        }
    }))
    .await;
    for (i, (r, (id, data))) in reads.into_iter().zip(&chunks).enumerate() {
        let (off, got) = r.unwrap();
        let expect = if i % 2 == 0 {
            &data[..]
        } else {
            &data[off..off + 1000 + i]
        };
        assert_eq!(
            &got[..],
            expect,
            "answer for {id} belongs to another request"
        );
    }
    // A mix of every operation in flight together.
    let mixed = join_all((0..64usize).map(|i| {
        let c = conn.clone();
        let (id, data) = chunks[i].clone();
        async move {
            match i % 4 {
                0 => c
                    .stat(&id)
                    .await
                    .map(|s| assert_eq!(s.len, data.len() as u64)),
                1 => c.ping().await.map(|_| ()),
                2 => c.get_chunk(&id).await.map(|d| assert_eq!(d, data)),
                _ => c.stats().await.map(|a| assert_eq!(a.stats.chunks, 64)),
            }
        }
    }))
    .await;
    assert!(mixed.iter().all(|r| r.is_ok()), "{mixed:?}");
    assert!(conn.metrics().max_in_flight >= 64);

    conn.bye().await.unwrap();
    let resp = call.await.unwrap().response();
    assert_eq!(resp.outcome, Outcome::Bye);
    assert!(resp.requests > 64 * 3, "requests {}", resp.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_function_refuses_puts_with_an_explicit_error() {
    // 80 MB function, 64 MB reserved: 16 MiB of chunks.
    let mut h = Harness::start(Setup {
        memory_mb: 80,
        overhead_mb: 64,
        ..Setup::default()
    })
    .await;
    let call = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Serve, NodeState::EMPTY),
    );
    let conn = h.conn("node-0").await;
    assert_eq!(conn.hello().stats.capacity_bytes, 16 << 20);

    let six = 6 << 20;
    let a = ChunkId::for_object(1, 0, 0);
    let b = ChunkId::for_object(1, 0, 1);
    let c = ChunkId::for_object(1, 0, 2);
    conn.put_chunk(&a, random_bytes(six)).await.unwrap();
    conn.put_chunk(&b, random_bytes(six)).await.unwrap();
    let err = conn.put_chunk(&c, random_bytes(six)).await.unwrap_err();
    match &err {
        CallError::Full { needed, free } => {
            assert!(*needed >= six as u64, "needed {needed}");
            assert!(*free < six as u64, "free {free}");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(err.fault(), Fault::Function);
    assert!(
        !err.is_retryable(),
        "full: place the chunk elsewhere, do not retry here"
    );
    // The connection and the data survive the refusal.
    assert_eq!(conn.get_chunk(&a).await.unwrap().len(), six);
    conn.put_chunk(&c, random_bytes(1024)).await.unwrap();
    // Freeing space makes room.
    assert!(conn.delete_chunk(&b).await.unwrap());
    conn.put_chunk(&c, random_bytes(six)).await.unwrap();
    let ack = conn.stats().await.unwrap();
    assert!(ack.stats.used_bytes <= ack.stats.capacity_bytes);
    assert_eq!(ack.stats.chunks, 2);

    conn.bye().await.unwrap();
    let resp = call.await.unwrap().response();
    assert!(resp.counters.errors >= 1);
    assert_eq!(resp.stats.chunks, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunks_yield_an_error_never_wrong_bytes() {
    let mut h = Harness::start(Setup {
        fault_injection: true,
        ..Setup::default()
    })
    .await;
    let call = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Serve, NodeState::EMPTY),
    );
    let conn = h.conn("node-0").await;
    let id = ChunkId::for_object(5, 0, 0);
    let data = random_bytes(300_000);
    conn.put_chunk(&id, data.clone()).await.unwrap();
    assert_eq!(conn.get_chunk(&id).await.unwrap(), data);
    conn.fault_corrupt(&id).await.unwrap();
    let err = conn.get_chunk(&id).await.unwrap_err();
    assert!(matches!(err, CallError::Corrupt(_)), "{err:?}");
    assert!(!err.is_retryable());
    let err = conn
        .get_chunk_range(
            &id,
            ByteRange {
                offset: 1000,
                length: Some(10),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Corrupt(_)),
        "a range of a corrupt chunk is refused too: {err:?}"
    );
    conn.bye().await.unwrap();
    call.await.unwrap().response();
}
