//! Fakes of the tier's traits, for tests that run in milliseconds: [`MemoryChunks`], an
//! in-memory [`ChunkStore`] that can lose a function, corrupt a chunk, fail puts, and delay
//! replies; [`ScriptedPlacer`], a [`Placer`] that places where it is told (or round-robin) and
//! records what the tier reported; and [`tier`], a [`Tier`] on them with a journal in a
//! directory of the caller's and a bucket nobody answers for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;

use crate::backend::BackendClients;
use crate::chunks::{ChunkError, ChunkName, ChunkStore};
use crate::config::TierConfig;
use crate::index::FunctionId;
use crate::{Placer, Relocation, Tier};

#[derive(Default)]
struct Chunks {
    held: HashMap<(FunctionId, ChunkName), Bytes>,
    lost: HashSet<FunctionId>,
    corrupt: HashSet<(FunctionId, ChunkName)>,
    failing_puts: HashSet<FunctionId>,
    delays: HashMap<FunctionId, Duration>,
    puts: u64,
    gets: u64,
    deletes: u64,
}

/// An in-memory chunk store of functions `0..n` (no capacity limit).
#[derive(Default)]
pub struct MemoryChunks {
    state: Mutex<Chunks>,
}

impl MemoryChunks {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn st(&self) -> std::sync::MutexGuard<'_, Chunks> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Function `f` is reclaimed: its chunks are gone (until it is written again).
    pub fn lose(&self, f: FunctionId) {
        let mut st = self.st();
        st.held.retain(|(g, _), _| *g != f);
        st.lost.insert(f);
    }

    /// Function `f` answers again (empty, as a new instance would).
    pub fn revive(&self, f: FunctionId) {
        self.st().lost.remove(&f);
    }

    /// The copy of `name` on `f` no longer matches its checksum: reads of it fail as corrupt.
    pub fn corrupt(&self, f: FunctionId, name: ChunkName) {
        self.st().corrupt.insert((f, name));
    }

    /// Puts to `f` fail from now on.
    pub fn fail_puts(&self, f: FunctionId) {
        self.st().failing_puts.insert(f);
    }

    /// Replies of `f` come `d` late.
    pub fn delay(&self, f: FunctionId, d: Duration) {
        self.st().delays.insert(f, d);
    }

    /// Chunks held by `f`.
    pub fn count_on(&self, f: FunctionId) -> usize {
        self.st().held.keys().filter(|(g, _)| *g == f).count()
    }

    /// Every chunk held: (function, name).
    pub fn held(&self) -> Vec<(FunctionId, ChunkName)> {
        let mut v: Vec<_> = self.st().held.keys().copied().collect();
        v.sort();
        v
    }

    /// (puts, gets, deletes) served so far.
    pub fn ops(&self) -> (u64, u64, u64) {
        let st = self.st();
        (st.puts, st.gets, st.deletes)
    }

    async fn wait(&self, f: FunctionId) {
        let d = self.st().delays.get(&f).copied();
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }
}

#[async_trait::async_trait]
impl ChunkStore for MemoryChunks {
    async fn put(&self, f: FunctionId, name: ChunkName, data: Bytes) -> Result<(), ChunkError> {
        self.wait(f).await;
        let mut st = self.st();
        if st.lost.contains(&f) || st.failing_puts.contains(&f) {
            return Err(ChunkError::Unavailable(f, "scripted failure".into()));
        }
        st.puts += 1;
        st.corrupt.remove(&(f, name));
        st.held.insert((f, name), data);
        Ok(())
    }

    async fn get(
        &self,
        f: FunctionId,
        name: ChunkName,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Bytes, ChunkError> {
        self.wait(f).await;
        let mut st = self.st();
        st.gets += 1;
        if st.lost.contains(&f) {
            return Err(ChunkError::Unavailable(f, "reclaimed".into()));
        }
        if st.corrupt.contains(&(f, name)) {
            return Err(ChunkError::Corrupt(f));
        }
        let data = st.held.get(&(f, name)).ok_or(ChunkError::NotFound(f))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = match len {
            Some(l) => start.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)),
            None => data.len(),
        }
        .min(data.len());
        Ok(data.slice(start..end))
    }

    async fn delete(&self, f: FunctionId, name: ChunkName) -> Result<(), ChunkError> {
        self.wait(f).await;
        let mut st = self.st();
        st.deletes += 1;
        st.held.remove(&(f, name));
        Ok(())
    }
}

/// What a [`ScriptedPlacer`] was told by the tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `place` answered with a layout for `object`.
    Placed {
        /// Key.
        key: String,
        /// Object id.
        object: u128,
    },
    /// `on_read` for `object`.
    Read {
        /// Key.
        key: String,
        /// Object id.
        object: u128,
    },
    /// `relocated` for `object`.
    Relocated {
        /// Key.
        key: String,
        /// Object id.
        object: u128,
        /// The moves.
        moves: Vec<Relocation>,
        /// Whether they were carried out.
        ok: bool,
    },
    /// `evicted` for `object`.
    Evicted {
        /// Key.
        key: String,
        /// Object id.
        object: u128,
    },
}

#[derive(Default)]
struct Script {
    placements: VecDeque<Option<Vec<Vec<FunctionId>>>>,
    moves: VecDeque<Vec<Relocation>>,
    reports: Vec<Report>,
    next: u32,
}

/// A [`Placer`] over functions `0..functions`: `place` answers the next scripted placement, or
/// else puts piece `i`'s chunks on consecutive functions (distinct per piece); `on_read`
/// answers the next scripted moves, or none. Everything the tier reports is recorded.
pub struct ScriptedPlacer {
    functions: u32,
    script: Mutex<Script>,
}

impl ScriptedPlacer {
    /// A placer over `functions` functions.
    pub fn new(functions: u32) -> Arc<Self> {
        Arc::new(Self {
            functions,
            script: Mutex::default(),
        })
    }

    fn s(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next `place` answers this (`None`: the object stays out of memory).
    pub fn then_place(&self, layout: Option<Vec<Vec<FunctionId>>>) {
        self.s().placements.push_back(layout);
    }

    /// The next `on_read` answers these moves.
    pub fn then_move(&self, moves: Vec<Relocation>) {
        self.s().moves.push_back(moves);
    }

    /// What the tier reported, in order.
    pub fn reports(&self) -> Vec<Report> {
        self.s().reports.clone()
    }
}

impl Placer for ScriptedPlacer {
    fn place(
        &self,
        _bucket: &str,
        key: &str,
        object: u128,
        _size: u64,
        pieces: usize,
        chunks_per_piece: usize,
    ) -> Option<Vec<Vec<FunctionId>>> {
        let mut s = self.s();
        let layout = match s.placements.pop_front() {
            Some(scripted) => scripted,
            None => {
                let n = self.functions.max(1);
                let mut layout = Vec::with_capacity(pieces);
                for _ in 0..pieces {
                    let first = s.next;
                    layout.push(
                        (0..chunks_per_piece)
                            .map(|i| (first + i as u32) % n)
                            .collect(),
                    );
                    s.next = (first + 1) % n;
                }
                Some(layout)
            }
        };
        if layout.is_some() {
            s.reports.push(Report::Placed {
                key: key.to_owned(),
                object,
            });
        }
        layout
    }

    fn on_read(
        &self,
        _bucket: &str,
        key: &str,
        object: u128,
        _layout: &[Vec<FunctionId>],
    ) -> Vec<Relocation> {
        let mut s = self.s();
        s.reports.push(Report::Read {
            key: key.to_owned(),
            object,
        });
        s.moves.pop_front().unwrap_or_default()
    }

    fn relocated(&self, _bucket: &str, key: &str, object: u128, moves: &[Relocation], ok: bool) {
        self.s().reports.push(Report::Relocated {
            key: key.to_owned(),
            object,
            moves: moves.to_vec(),
            ok,
        });
    }

    fn evicted(&self, _bucket: &str, key: &str, object: u128) {
        self.s().reports.push(Report::Evicted {
            key: key.to_owned(),
            object,
        });
    }
}

/// A tier configuration for tests: `d = 4`, `p = 2` chunks of at most 1 KiB, objects of
/// 1 KiB and up written back, short timeouts.
pub fn config() -> TierConfig {
    TierConfig {
        min_object_size: bytesize::ByteSize::kib(1),
        data_chunks: 4,
        parity_chunks: 2,
        chunk_size: bytesize::ByteSize::kib(1),
        journal_capacity: bytesize::ByteSize::mib(64),
        journal_wait: Duration::from_millis(200),
        flush_timeout: Duration::from_millis(300),
        chunk_timeout: Duration::from_millis(500),
        recovery_parallelism: 3,
        persist_retry_max: Duration::from_millis(200),
        ..TierConfig::default()
    }
}

/// Clients of a bucket nobody answers for (a closed loopback port): every request to it fails
/// fast as unreachable.
pub fn unreachable_bucket() -> BackendClients {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:1")
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    BackendClients {
        client: client.clone(),
        uploads: client,
        first_byte_timeout: Duration::from_millis(200),
    }
}

/// A tier with `cfg` on `chunks` and `placer`, its journal under `dir`, the bucket
/// unreachable; bucket `b` is known to exist.
pub async fn tier(
    cfg: &TierConfig,
    dir: &Path,
    chunks: Arc<dyn ChunkStore>,
    placer: Arc<dyn Placer>,
) -> Arc<Tier> {
    let t = Tier::open(
        cfg,
        dir,
        &unreachable_bucket(),
        chunks,
        placer,
        &mut Registry::default(),
    )
    .await
    .expect("open the tier");
    t.note_bucket("b", true);
    t
}
