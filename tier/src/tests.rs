//! The tier's core against in-memory fakes (`crate::testing`): reads across piece edges,
//! relocations that fail midway, recovery, the fill-vs-write race, journal replay, and the
//! policy's accounting kept in step with the tier's layout. Milliseconds each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use md5::Digest;
use prometheus_client::registry::Registry;

use crate::config::{FunctionsConfig, PolicySection};
use crate::manager::{Action, MemoryManager};
use crate::testing::{MemoryChunks, Report, ScriptedPlacer, config, tier};
use crate::{
    BodyCheck, BoxError, KeyState, KnownLength, ObjectMeta, Range, Relocation, Tier, TierError,
};

/// Checks nothing.
struct NoCheck;

impl BodyCheck for NoCheck {
    fn update(&mut self, _data: &[u8]) {}
    fn finish(self: Box<Self>, _md5: &[u8; 16]) -> Result<BTreeMap<String, String>, TierError> {
        Ok(BTreeMap::new())
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(md5::Md5::digest(b))
}

/// A body in frames of 1,000 bytes.
fn body(b: &[u8]) -> impl futures::Stream<Item = Result<Bytes, BoxError>> + Unpin + Send + use<> {
    let frames: Vec<Result<Bytes, BoxError>> = b
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(frames)
}

async fn put(t: &Arc<Tier>, key: &str, b: &[u8]) -> ObjectMeta {
    t.put(
        "b",
        key,
        b.len() as u64,
        ObjectMeta::default(),
        body(b),
        Box::new(NoCheck),
    )
    .await
    .expect("put")
}

async fn read(t: &Arc<Tier>, key: &str, start: u64, end: u64) -> Vec<u8> {
    let Some(KeyState::Object(obj)) = t.lookup("b", key) else {
        panic!("{key} is not held");
    };
    let mut out = Vec::new();
    let mut s = t.read("b", key, obj, Range { start, end });
    while let Some(part) = s.next().await {
        out.extend_from_slice(&part.expect("read"));
    }
    out
}

fn layout(t: &Tier, key: &str) -> Vec<Vec<u32>> {
    match t.lookup("b", key) {
        Some(KeyState::Object(o)) => o.layout.as_ref().expect("in memory").functions.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

/// A tier over `MemoryChunks` and a `ScriptedPlacer` of `functions` functions, its journal in a
/// temporary directory.
struct Fixture {
    /// Bind it (`_dir`, not `_`) for as long as the tier runs.
    _dir: tempfile::TempDir,
    mem: Arc<MemoryChunks>,
    placer: Arc<ScriptedPlacer>,
    t: Arc<Tier>,
}

async fn fixture(functions: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryChunks::new();
    let placer = ScriptedPlacer::new(functions);
    let t = tier(&config(), dir.path(), mem.clone(), placer.clone()).await;
    Fixture {
        _dir: dir,
        mem,
        placer,
        t,
    }
}

/// Chunk 0 of pieces 0 and 1 (of `layout`) to functions `to.0` and `to.1`.
fn move_first_chunks(layout: &[Vec<u32>], to: (u32, u32)) -> Vec<Relocation> {
    vec![
        Relocation {
            piece: 0,
            chunk: 0,
            from: Some(layout[0][0]),
            to: to.0,
        },
        Relocation {
            piece: 1,
            chunk: 0,
            from: Some(layout[1][0]),
            to: to.1,
        },
    ]
}

/// A tier on fresh fakes over the journal in `dir` (one life of the gateway: the functions
/// are new and empty).
async fn life(dir: &std::path::Path) -> Arc<Tier> {
    tier(&config(), dir, MemoryChunks::new(), ScriptedPlacer::new(8)).await
}

/// Lets the tier's background tasks (frees, relocations, recovery) finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(15)).await;
}

#[tokio::test]
async fn ranges_across_piece_edges_read_back_exactly_with_a_function_lost() {
    let Fixture { _dir, mem, t, .. } = fixture(8).await;
    // Pieces of 4 KiB (4 data chunks of 1 KiB): 10,000 bytes are pieces of 4096, 4096, 1808.
    let v = data(10_000, 1);
    let meta = put(&t, "k", &v).await;
    assert_eq!(meta.etag, md5_hex(&v));
    let ranges = [
        (0, 10_000),
        (0, 1),
        (4095, 4097),
        (4096, 8192),
        (4000, 9000),
        (8191, 8193),
        (9_999, 10_000),
    ];
    for (a, b) in ranges {
        assert_eq!(
            read(&t, "k", a, b).await,
            v[a as usize..b as usize],
            "{a}..{b}"
        );
    }
    // Function 1 holds a chunk of every piece (each piece's 6 chunks on consecutive
    // functions): lost, every read decodes from parity.
    mem.lose(1);
    for (a, b) in ranges {
        assert_eq!(
            read(&t, "k", a, b).await,
            v[a as usize..b as usize],
            "{a}..{b}"
        );
    }
    assert!(t.metrics.decodes.get() > 0, "pieces were rebuilt");
}

#[tokio::test]
async fn a_relocation_that_fails_midway_changes_nothing_and_says_so() {
    let Fixture {
        _dir,
        mem,
        placer,
        t,
    } = fixture(12).await;
    let v = data(6_000, 2);
    put(&t, "k", &v).await;
    let before = layout(&t, "k");
    // The policy moves chunk 0 of both pieces to functions 10 and 11; 11 refuses writes.
    mem.fail_puts(11);
    let moves = move_first_chunks(&before, (10, 11));
    placer.then_move(moves.clone());
    assert_eq!(read(&t, "k", 0, 6_000).await, v);
    settle().await;
    assert_eq!(layout(&t, "k"), before, "the layout did not change");
    assert_eq!(
        mem.count_on(10),
        0,
        "the chunk written before the failure was deleted"
    );
    let reports = placer.reports();
    let relocated: Vec<_> = reports
        .iter()
        .filter(|r| matches!(r, Report::Relocated { .. }))
        .collect();
    assert!(
        matches!(relocated.as_slice(), [Report::Relocated { ok: false, moves: m, .. }] if *m == moves),
        "{reports:?}"
    );
    assert_eq!(read(&t, "k", 0, 6_000).await, v);
}

#[tokio::test]
async fn a_relocation_that_succeeds_moves_the_chunks_and_says_so() {
    let Fixture {
        _dir,
        mem,
        placer,
        t,
    } = fixture(12).await;
    let v = data(6_000, 2);
    put(&t, "k", &v).await;
    let before = layout(&t, "k");
    let (old0, old1) = (mem.count_on(before[0][0]), mem.count_on(before[1][0]));
    placer.then_move(move_first_chunks(&before, (10, 11)));
    assert_eq!(read(&t, "k", 0, 6_000).await, v);
    settle().await;
    let after = layout(&t, "k");
    assert_eq!((after[0][0], after[1][0]), (10, 11));
    assert_eq!((mem.count_on(10), mem.count_on(11)), (1, 1));
    assert_eq!(
        (mem.count_on(before[0][0]), mem.count_on(before[1][0])),
        (old0 - 1, old1 - 1),
        "the old copies were deleted"
    );
    assert!(
        placer
            .reports()
            .iter()
            .any(|r| matches!(r, Report::Relocated { ok: true, .. })),
        "{:?}",
        placer.reports()
    );
    assert_eq!(read(&t, "k", 0, 6_000).await, v);
}

#[tokio::test]
async fn recovery_restores_every_chunk_of_a_lost_function() {
    let Fixture { _dir, mem, t, .. } = fixture(8).await;
    let objects: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("o{i}"), data(3_000 + i * 2_500, i as u8)))
        .collect();
    for (k, v) in &objects {
        put(&t, k, v).await;
    }
    let held = mem.count_on(3);
    assert!(held > 0);
    // Function 3 is replaced by an empty instance; recovery rebuilds its chunks (the objects
    // are not in the bucket yet: from the surviving chunks).
    mem.lose(3);
    mem.revive(3);
    assert_eq!(
        t.recover(3),
        held,
        "every chunk the layouts put on function 3"
    );
    settle().await;
    assert_eq!(mem.count_on(3), held);
    assert_eq!(t.recovery.chunks.get(), held as u64);
    // Reads need no parity now.
    let decodes = t.metrics.decodes.get();
    for (k, v) in &objects {
        assert_eq!(&read(&t, k, 0, v.len() as u64).await, v);
    }
    assert_eq!(t.metrics.decodes.get(), decodes);
}

#[tokio::test]
async fn a_fill_that_raced_a_write_of_its_key_is_discarded() {
    let Fixture {
        _dir, placer, t, ..
    } = fixture(8).await;
    // A GET miss starts reading the old version from the bucket and admitting it.
    let old = data(8_192, 3);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(8);
    let bucket_body = tokio_stream(rx);
    let mut fill = t.fill(
        "b",
        "k",
        old.len() as u64,
        ObjectMeta::default(),
        bucket_body,
        true,
    );
    tx.send(Ok(Bytes::copy_from_slice(&old[..4096])))
        .await
        .unwrap();
    assert!(fill.next().await.is_some());
    // Meanwhile a PUT of the key is acknowledged.
    let new = data(5_000, 4);
    let meta = put(&t, "k", &new).await;
    // The rest of the old version arrives; the client gets it, memory must not keep it.
    tx.send(Ok(Bytes::copy_from_slice(&old[4096..])))
        .await
        .unwrap();
    while fill.next().await.is_some() {
        if fill.remaining() == 0 {
            break;
        }
    }
    settle().await;
    match t.lookup("b", "k") {
        Some(KeyState::Object(o)) => assert_eq!(o.meta().etag, meta.etag, "the write wins"),
        other => panic!("{other:?}"),
    }
    assert_eq!(read(&t, "k", 0, new.len() as u64).await, new);
    let reports = placer.reports();
    let placed: Vec<u128> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Placed { object, .. } => Some(*object),
            _ => None,
        })
        .collect();
    assert_eq!(placed.len(), 2, "{reports:?}");
    assert!(
        reports
            .iter()
            .any(|r| matches!(r, Report::Evicted { object, .. } if *object == placed[0])),
        "the fill's object is forgotten: {reports:?}"
    );
}

/// An mpsc receiver as a stream.
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Unpin + Send {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[tokio::test]
async fn a_read_whose_journal_record_was_persisted_meanwhile_goes_to_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing placed: the object is served from its journal record.
    let placer = ScriptedPlacer::new(8);
    placer.then_place(None);
    let t = tier(&config(), dir.path(), MemoryChunks::new(), placer).await;
    let v = data(5_000, 7);
    put(&t, "k", &v).await;
    let Some(KeyState::Object(obj)) = t.lookup("b", "k") else {
        panic!()
    };
    assert_eq!(read(&t, "k", 0, 5_000).await, v, "from the journal");
    // The persister confirmed it and removed the record while a reader held the object.
    t.journal.remove(obj.journal_seq.unwrap()).await.unwrap();
    let err = t.read_span("b", "k", &obj, 0, 100).await.unwrap_err();
    assert!(
        matches!(err, TierError::Backend(_)),
        "the bucket was asked (it is unreachable here): {err:?}"
    );
}

#[test]
fn journal_replay_keeps_each_keys_newest_record() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = data(3_000, 5);
    let v2 = data(4_500, 6);
    // First life: writes and a delete, none persisted (the bucket is unreachable).
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let t = life(dir.path()).await;
            put(&t, "k", &v1).await;
            put(&t, "k", &v2).await;
            put(&t, "gone", &v1).await;
            assert!(matches!(
                t.delete("b", "gone").await.unwrap(),
                crate::Deletion::Journaled
            ));
        });
    }
    // Second life on the same journal: the newest record of each key, served from the
    // journal (the functions are new and empty).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = life(dir.path()).await;
        assert!(matches!(
            t.lookup("b", "gone"),
            Some(KeyState::Deleted { .. })
        ));
        assert_eq!(read(&t, "k", 0, v2.len() as u64).await, v2);
        let records = std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".rec")
            })
            .count();
        assert_eq!(
            records, 2,
            "superseded records are gone: k's newest, gone's delete"
        );
    });
}

/// A tier on the real policy (the sliding window behind `MemoryManager`) with short buckets,
/// so rotations, promotions and expiry happen within a test. Actions are carried out by the
/// caller ([`drive`]).
async fn with_window(
    dir: &std::path::Path,
    mem: Arc<MemoryChunks>,
) -> (
    Arc<Tier>,
    Arc<MemoryManager>,
    tokio::sync::mpsc::UnboundedReceiver<Action>,
) {
    let cfg = config();
    let functions = FunctionsConfig {
        count: 18,
        memory_mb: 128,
        ..FunctionsConfig::default()
    };
    let mut policy = PolicySection::default();
    policy.window.bucket_ms = 40;
    policy.window.active_buckets = 2;
    policy.window.window_buckets = 4;
    policy.window.promote_always_age = 1;
    policy.window.promote_maybe_age = 1;
    policy.window.reserved_mb = 100;
    let (manager, actions) =
        MemoryManager::new(&cfg, &functions, &policy, &mut Registry::default()).unwrap();
    let t = Tier::open(
        &cfg,
        dir,
        &crate::testing::unreachable_bucket(),
        mem,
        manager.clone(),
        &mut Registry::default(),
    )
    .await
    .unwrap();
    t.note_bucket("b", true);
    (t, manager, actions)
}

/// Carries out what the policy decided (evictions; warm-ups and the rest need no pool here).
fn drive(t: &Arc<Tier>, actions: &mut tokio::sync::mpsc::UnboundedReceiver<Action>) {
    while let Ok(a) = actions.try_recv() {
        if let Action::Evict {
            bucket,
            key,
            object,
        } = a
        {
            t.evict(&bucket, &key, object, crate::EvictedBy::Policy);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, usize),
    Get(u8),
    Delete(u8),
    Wait(u64),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0u8..6, 1_000usize..20_000).prop_map(|(k, n)| Op::Put(k, n)),
        4 => (0u8..6).prop_map(Op::Get),
        1 => (0u8..6).prop_map(Op::Delete),
        2 => (0u64..60).prop_map(Op::Wait),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..Default::default()
    })]

    /// After every step (writes, reads with promotions, deletes, bucket rotations and expiry),
    /// the chunks the policy counts on each function are exactly those the tier's layouts put
    /// there, and every object reads back exactly.
    #[test]
    fn the_policys_accounting_follows_the_tiers_layout(ops in proptest::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mem = MemoryChunks::new();
            let (t, _manager, mut actions) = with_window(dir.path(), mem).await;
            let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Put(k, n) => {
                        let key = format!("k{k}");
                        let v = data(*n, *k ^ (i as u8));
                        put(&t, &key, &v).await;
                        model.insert(key, v);
                    }
                    Op::Get(k) => {
                        let key = format!("k{k}");
                        if let Some(v) = model.get(&key) {
                            assert_eq!(&read(&t, &key, 0, v.len() as u64).await, v, "step {i}");
                        }
                    }
                    Op::Delete(k) => {
                        let key = format!("k{k}");
                        if model.remove(&key).is_some() {
                            t.delete("b", &key).await.unwrap();
                        }
                    }
                    Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                }
                drive(&t, &mut actions);
                settle().await;
                drive(&t, &mut actions);
                if let Some(diff) = t.placement_check() {
                    panic!("step {i} ({op:?}): {diff}");
                }
            }
        });
    }
}

/// Ranged misses start one background fill per key, at most `background_fills` at once, none
/// for a key the tier holds or an object it would not admit; a fill whose bucket read fails
/// frees its key and slot.
#[tokio::test]
async fn ranged_misses_start_one_bounded_background_fill_per_key() {
    use crate::background::NotStarted;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::config::TierConfig {
        background_fills: 2,
        ..config()
    };
    let placer = ScriptedPlacer::new(8);
    let t = tier(&cfg, dir.path(), MemoryChunks::new(), placer).await;
    let meta = ObjectMeta {
        etag: "0123456789abcdef0123456789abcdef".into(),
        ..ObjectMeta::default()
    };
    let start = |key: &str, size: u64, meta: &ObjectMeta| {
        t.start_background_fill("b", key, size, meta.clone())
    };
    // On this current-thread runtime the fills' tasks run only once the test yields.
    assert_eq!(start("k", 64 << 10, &meta), Ok(()));
    assert_eq!(start("k", 64 << 10, &meta), Err(NotStarted::Running));
    assert_eq!(start("k2", 64 << 10, &meta), Ok(()));
    assert_eq!(start("k3", 64 << 10, &meta), Err(NotStarted::Busy));
    assert_eq!(start("small", 10, &meta), Err(NotStarted::NotAdmitted));
    assert_eq!(
        start("no-etag", 64 << 10, &ObjectMeta::default()),
        Err(NotStarted::NotAdmitted)
    );
    assert_eq!(t.metrics.background_fills.get(), 2);
    assert_eq!(t.metrics.background_fills_skipped.get(), 1);
    // The bucket is unreachable: both fills fail, and free their keys and slots.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.background.running() > 0 {
        assert!(std::time::Instant::now() < deadline, "fills still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.metrics.admission_failures.get(), 2);
    put(&t, "k3", &data(4_096, 1)).await;
    assert_eq!(start("k3", 4_096, &meta), Err(NotStarted::Held));
    assert_eq!(start("k4", 64 << 10, &meta), Ok(()));
}

fn journal_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn part(t: &Arc<Tier>, id: &str, key: &str, n: u32, b: &[u8]) -> crate::PartInfo {
    t.upload_part(id, "b", key, n, b.len() as u64, body(b), Box::new(NoCheck))
        .await
        .expect("part")
}

fn completed(parts: &[&crate::PartInfo]) -> Vec<crate::CompletedPartRef> {
    parts
        .iter()
        .map(|p| crate::CompletedPartRef {
            number: p.number,
            etag: format!("\"{}\"", p.etag),
            checksums: BTreeMap::new(),
        })
        .collect()
}

/// A multipart upload written back: parts journaled (a part sent again replaces the first),
/// completed without copying into the key's current version with S3's multipart ETag, served
/// from the journal and then from memory; an open upload and a completed object both survive a
/// restart, and the open upload can be completed after it. Unused parts are removed.
#[test]
fn multipart_uploads_are_journaled_completed_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mib5 = 5 << 20;
    let (a1, a2, a3) = (data(mib5, 1), data(mib5, 2), data(1000, 3));
    let a2_again = data(mib5, 4);
    let b1 = data(mib5, 5);
    let b2 = data(77, 6);
    let mut whole_a = a1.clone();
    whole_a.extend_from_slice(&a2_again);
    whole_a.extend_from_slice(&a3);
    let open_id = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let t = life(dir.path()).await;
            let id = t
                .create_upload("b", "a", ObjectMeta::default())
                .await
                .unwrap()
                .expect("written back");
            assert!(Tier::owns_upload(&id));
            let p1 = part(&t, &id, "a", 1, &a1).await;
            let _first = part(&t, &id, "a", 2, &a2).await;
            let p2 = part(&t, &id, "a", 2, &a2_again).await;
            let p3 = part(&t, &id, "a", 3, &a3).await;
            let unused = part(&t, &id, "a", 4, &a3).await;
            assert_eq!(p2.etag, md5_hex(&a2_again));
            let (_, listed) = t.list_parts(&id, "b", "a").unwrap();
            assert_eq!(
                listed.iter().map(|p| p.number).collect::<Vec<_>>(),
                [1, 2, 3, 4]
            );
            assert!(matches!(
                t.upload_part(&id, "b", "other", 1, 3, body(b"xyz"), Box::new(NoCheck))
                    .await,
                Err(TierError::NoSuchUpload(_))
            ));
            let meta = t
                .complete_upload(&id, "b", "a", &completed(&[&p1, &p2, &p3]))
                .await
                .unwrap();
            let _ = unused;
            assert_eq!(
                meta.etag,
                crate::multipart::multipart_etag(&[&p1.etag, &p2.etag, &p3.etag])
            );
            assert!(meta.etag.ends_with("-3"));
            assert_eq!(read(&t, "a", 0, whole_a.len() as u64).await, whole_a);
            assert_eq!(
                read(&t, "a", mib5 as u64 - 10, mib5 as u64 + 10).await,
                whole_a[mib5 - 10..mib5 + 10]
            );
            // The object is placed into memory from the journal in the background.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !matches!(t.lookup("b", "a"), Some(KeyState::Object(o)) if o.layout.is_some()) {
                assert!(std::time::Instant::now() < deadline, "not placed in memory");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(read(&t, "a", 0, whole_a.len() as u64).await, whole_a);
            assert!(matches!(
                t.complete_upload(&id, "b", "a", &completed(&[&p1])).await,
                Err(TierError::NoSuchUpload(_))
            ));
            // A second upload stays open across the restart.
            let open = t
                .create_upload("b", "c", ObjectMeta::default())
                .await
                .unwrap()
                .unwrap();
            part(&t, &open, "c", 1, &b1).await;
            part(&t, &open, "c", 2, &b2).await;
            assert_eq!(t.uploads_under("b", "").len(), 1);
            // Upload record + 2 parts of "c"; upload record + 3 parts + assembled record of
            // "a" (the replaced and the unused part are gone).
            assert_eq!(journal_files(dir.path()).len(), 3 + 5);
            open
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = life(dir.path()).await;
        assert_eq!(read(&t, "a", 0, whole_a.len() as u64).await, whole_a);
        let (info, parts) = t.list_parts(&open_id, "b", "c").unwrap();
        assert_eq!(info.key, "c");
        assert_eq!(
            parts.iter().map(|p| (p.number, p.size)).collect::<Vec<_>>(),
            [(1, mib5 as u64), (2, 77)]
        );
        let refs: Vec<&crate::PartInfo> = parts.iter().collect();
        t.complete_upload(&open_id, "b", "c", &completed(&refs))
            .await
            .unwrap();
        let mut whole_c = b1.clone();
        whole_c.extend_from_slice(&b2);
        assert_eq!(read(&t, "c", 0, whole_c.len() as u64).await, whole_c);
        // Aborting removes an upload's records; it is then unknown.
        let gone = t
            .create_upload("b", "d", ObjectMeta::default())
            .await
            .unwrap()
            .unwrap();
        part(&t, &gone, "d", 1, &b2).await;
        let before = journal_files(dir.path()).len();
        t.abort_upload(&gone, "b", "d").await.unwrap();
        assert_eq!(journal_files(dir.path()).len(), before - 2);
        assert!(matches!(
            t.upload_part(&gone, "b", "d", 2, 3, body(b"xyz"), Box::new(NoCheck))
                .await,
            Err(TierError::NoSuchUpload(_))
        ));
        // Expiry aborts what is left open too long.
        let old = t
            .create_upload("b", "e", ObjectMeta::default())
            .await
            .unwrap()
            .unwrap();
        t.abort_expired(crate::write::now_ms() + 25 * 3600 * 1000)
            .await;
        assert!(t.list_parts(&old, "b", "e").is_err());
    });
}
