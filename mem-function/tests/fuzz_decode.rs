//! Runs the cargo-fuzz body (`wire::fuzz_decode`) over random and mutated inputs for a few
//! seconds, so the decoder is fuzzed in CI without nightly. `MEMFN_FUZZ_SECS` (default 3) sets
//! the budget, `MEMFN_FUZZ_SEED` replays a run, and `MEMFN_FUZZ_SEED_DIR=dir` writes the valid
//! seed frames into `dir` as a starting corpus for `cargo fuzz run decode` (libFuzzer gets
//! through the magic and length checks much faster from valid frames).

use bytes::Bytes;
use mem_function::wire::{
    self, Ack, ByteRange, ChunkId, ChunkInfo, Command, ErrorBody, ErrorCode, Hello, InstanceId,
    NodeState, Opcode, Request, Response, StoreStats, ViewCheck,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::time::{Duration, Instant};

fn seeds() -> Vec<Vec<u8>> {
    let id = ChunkId::for_object(1, 2, 3);
    let ack = Ack {
        state: NodeState::EMPTY.advance(wire::Mutation::Put, &id, 7, 9),
        stats: StoreStats::default(),
    };
    let mut frames = vec![
        Request::Put {
            id: id.clone(),
            crc32c: 5,
            data: Bytes::from_static(b"abc"),
        }
        .into_frame(1),
        Request::Get {
            id: id.clone(),
            range: ByteRange {
                offset: 3,
                length: Some(4),
            },
        }
        .into_frame(2),
        Request::Delete { id: id.clone() }.into_frame(3),
        Request::List {
            after: Some(id.clone()),
            limit: 10,
        }
        .into_frame(4),
        Request::Ping {
            payload: Bytes::from_static(b"p"),
        }
        .into_frame(5),
        Request::Bye.into_frame(6),
        Response::Put(ack).into_frame(Opcode::PutChunk, 1),
        Response::Get {
            chunk_len: 10,
            offset: 2,
            crc32c: 1,
            data: Bytes::from_static(b"xy"),
        }
        .into_frame(Opcode::GetChunk, 2),
        Response::List {
            entries: vec![ChunkInfo {
                id: id.clone(),
                len: 3,
                crc32c: 4,
            }],
            more: true,
        }
        .into_frame(Opcode::List, 4),
        Response::Error(ErrorBody::new(ErrorCode::Full, "full")).into_frame(Opcode::PutChunk, 9),
        Response::bye_notice(ack),
        wire::challenge_frame(&[1; 32]),
        wire::welcome_frame(),
    ];
    let hello = Hello {
        node_id: "node-1".into(),
        instance_id: InstanceId([3; 16]),
        token: Bytes::from_static(b"tok"),
        command: Command::Serve,
        view: ViewCheck::Match,
        state: ack.state,
        stats: ack.stats,
        invocation_id: "id".into(),
        deadline_unix_ms: 5,
    };
    frames.push(hello.into_frame(b"secret", &[1; 32]).unwrap());
    let mut out: Vec<Vec<u8>> = frames.iter().map(|f| f.to_bytes().to_vec()).collect();
    // A stream of several frames back to back.
    out.push(frames.iter().flat_map(|f| f.to_bytes().to_vec()).collect());
    out
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..6) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            2 if !v.is_empty() => v.truncate(rng.random_range(0..v.len())),
            3 => {
                let i = rng.random_range(0..=v.len());
                let extra: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                v.splice(i..i, extra);
            }
            4 if v.len() >= 20 => {
                // Rewrite a header length field with an interesting value.
                let val: u32 = *[0, 1, 0xFFFF, 0x7FFF_FFFF, u32::MAX, v.len() as u32]
                    .get(rng.random_range(0..6))
                    .unwrap();
                if rng.random() {
                    v[16..20].copy_from_slice(&val.to_be_bytes());
                } else {
                    v[6..8].copy_from_slice(&(val as u16).to_be_bytes());
                }
            }
            _ => v.extend_from_slice(base),
        }
    }
    v
}

#[test]
fn fuzz_body_over_random_and_mutated_inputs() {
    let secs: u64 = std::env::var("MEMFN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("MEMFN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fuzzing the wire decoder for {secs}s, MEMFN_FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = seeds();
    if let Some(dir) = std::env::var_os("MEMFN_FUZZ_SEED_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i:02}")), s).unwrap();
        }
    }
    for s in &seeds {
        wire::fuzz_decode(s);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            let input = if rng.random_bool(0.3) {
                let mut v = vec![0u8; rng.random_range(0..512)];
                rng.fill_bytes(&mut v);
                if v.len() >= 4 && rng.random_bool(0.5) {
                    v[..3].copy_from_slice(&[0x4D, 0x46, 0x01]); // get past magic and version
                }
                v
            } else {
                let base = &seeds[rng.random_range(0..seeds.len())];
                mutate(&mut rng, base)
            };
            wire::fuzz_decode(&input);
            runs += 1;
        }
    }
    eprintln!("{runs} inputs, no panic");
    assert!(runs > 1000 || secs == 0);
}
