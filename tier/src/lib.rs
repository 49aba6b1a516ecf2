//! The serverless-memory write-back tier: erasure-coded chunks in function memory, a local
//! journal of acknowledged writes, and persistence to the bucket.
//!
//! What an acknowledgement means (`write_policy = back`, the default): a PUT is answered once
//! (1) the object's bytes and metadata are in the journal on the gateway's disk, fsynced, and
//! (2) its chunks are in function memory. If the pool cannot take the chunks (no functions
//! reachable, all full), (2) is skipped rather than failing the PUT: the object is served from
//! the journal until it is in the bucket, and `gateway_tier_admission_failures_total` counts it.
//! Either way the write survives kill -9 of the gateway and every function: on restart the
//! journal is replayed and persisted. `write_policy = through` passes PUTs to the bucket and
//! answers when the bucket has the object.
//!
//! Ordering ([`order`]): a key's writes commit one at a time, each taking its journal sequence
//! number at commit, so the write acknowledged last is the key's current version in the index,
//! in the persister and, once persisted, in the bucket. Only a key's newest record is
//! persisted, one upload per key at a time; operations the tier passes straight to the bucket
//! (copy, multipart completion, tagging, listing) first wait until the keys they touch have no
//! unpersisted writes, and writes among them hold the key's commit lock, so an older version
//! never lands last. A write the bucket refuses for good is a dead letter ([`persist`]).

pub mod backend;
mod background;
mod body;
mod chunks;
pub mod config;
mod ec;
mod error;
mod index;
mod journal;
mod manager;
mod meta;
mod metrics;
mod multipart;
mod order;
mod persist;
mod pool;
mod read;
mod recover;
mod relocate;
mod start;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod write;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

use self::ec::Codec;
use self::index::Index;
use self::journal::{Journal, RecordHeader, RecordKind};
use self::metrics::TierMetrics;
use self::order::{KeyGuard, KeyLocks};
use self::persist::{PersistConfig, Persister};
use crate::config::{TierConfig, WritePolicy};

pub use self::body::{Fill, KnownLength, TierBody};
pub use self::chunks::{ChunkError, ChunkName, ChunkStore};
pub use self::ec::EcError;
pub use self::error::{BackendError, BackendFailure, BoxError, TierError};
pub use self::index::{CachedObject, FunctionId, KeyState};
pub use self::journal::JournalError;
pub use self::meta::ObjectMeta;
pub use self::multipart::{CompletedPartRef, PartInfo, PartRoute, UploadInfo};
pub use self::persist::DeadLetter;
pub use self::read::Range;
pub use self::start::{Running, start};
pub use self::write::BodyCheck;

/// One chunk to move after a read (promotion into the current bucket, or repair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    /// Piece index.
    pub piece: u32,
    /// Chunk index in the piece.
    pub chunk: u32,
    /// Where it is now (`None`: lost).
    pub from: Option<FunctionId>,
    /// Where it goes.
    pub to: FunctionId,
}

/// The memory-management policy, seen from the tier (the `policy` crate's window or pool
/// behind `manager::MemoryManager`, or a test's scripted one). The policy decides; the tier
/// carries out and reports the outcome.
pub trait Placer: Send + Sync + 'static {
    /// The function of every chunk of every piece (distinct within a piece) for write
    /// `object` of the key, or `None` when the object stays out of memory.
    fn place(
        &self,
        bucket: &str,
        key: &str,
        object: u128,
        size: u64,
        pieces: usize,
        chunks_per_piece: usize,
    ) -> Option<Vec<Vec<FunctionId>>>;
    /// Write `object` of the key was read from memory, from the functions of `layout` (each
    /// piece's `d + p`): chunks to move. Nothing moves in the policy's accounting until
    /// [`Placer::relocated`] reports the outcome.
    fn on_read(
        &self,
        _bucket: &str,
        _key: &str,
        _object: u128,
        _layout: &[Vec<FunctionId>],
    ) -> Vec<Relocation> {
        Vec::new()
    }
    /// The moves [`Placer::on_read`] asked for were carried out (`ok`), or given up (the
    /// chunks stay where they were).
    fn relocated(
        &self,
        _bucket: &str,
        _key: &str,
        _object: u128,
        _moves: &[Relocation],
        _ok: bool,
    ) {
    }
    /// Write `object` of the key was evicted by the tier (replaced, deleted, invalidated, not
    /// admitted, unreadable, on a function not recovered). Not called for an eviction the
    /// policy itself decided.
    fn evicted(&self, _bucket: &str, _key: &str, _object: u128) {}
    /// How many chunks the policy counts on each function, if it keeps such accounting (for
    /// [`Tier::placement_check`]).
    fn chunk_counts(&self) -> Option<std::collections::BTreeMap<FunctionId, u64>> {
        None
    }
}

/// Who decided that a write leaves memory ("evict" is the one verb for it: the index drops the
/// layout, the chunks are deleted on their functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvictedBy {
    /// The policy (an `Evict` action): it already knows.
    Policy,
    /// The tier (unreadable, not recovered): the policy is told through [`Placer::evicted`].
    Tier,
}

/// The tier.
pub struct Tier {
    cfg: TierConfig,
    codec: Codec,
    piece_size: u64,
    index: Arc<Index>,
    journal: Arc<Journal>,
    persister: Arc<Persister>,
    chunks: Arc<dyn ChunkStore>,
    placer: Arc<dyn Placer>,
    client: aws_sdk_s3::Client,
    metrics: TierMetrics,
    recovery: metrics::RecoveryMetrics,
    buckets: Arc<Mutex<HashSet<String>>>,
    locks: Arc<KeyLocks>,
    background: background::BackgroundFills,
    uploads: multipart::Uploads,
}

/// A write passed straight to the bucket, holding its key's commit lock (see [`order`]):
/// from [`Tier::begin_write`] to [`Tier::end_write`].
pub struct WriteGuard(KeyGuard);

/// How [`Tier::delete`] deleted a key.
pub enum Deletion {
    /// Through the journal (the key had unpersisted writes): done.
    Journaled,
    /// The caller deletes it in the bucket, then calls [`Tier::end_write`].
    InBucket(WriteGuard),
}

/// How often the persistence-lag gauge is refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

impl Tier {
    /// Opens the tier: the journal under `data_dir/journal` is replayed (its records become
    /// dirty keys, persisted in the background).
    pub async fn open(
        cfg: &TierConfig,
        data_dir: &Path,
        backend: &crate::backend::BackendClients,
        chunks: Arc<dyn ChunkStore>,
        placer: Arc<dyn Placer>,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, TierError> {
        let codec = Codec::new(cfg.data_chunks, cfg.parity_chunks)
            .map_err(|e| TierError::Config(e.to_string()))?;
        let (journal, replay) =
            Journal::open(&data_dir.join("journal"), cfg.journal_capacity.as_u64()).await?;
        let journal = Arc::new(journal);
        let metrics = TierMetrics::register(registry);
        let recovery = metrics::RecoveryMetrics::register(registry);
        let index = Arc::new(Index::default());
        let on_persisted: persist::OnPersisted = {
            let index = index.clone();
            Arc::new(move |h: &RecordHeader| index.persisted(&h.bucket, &h.key, h.seq))
        };
        let client = backend.client.clone();
        // A bucket deleted behind the gateway: checked again before the next write to it.
        let known_buckets: Arc<Mutex<HashSet<String>>> = Arc::default();
        let on_refused: persist::OnRefused = {
            let known = known_buckets.clone();
            Arc::new(move |h: &RecordHeader, why: &BackendError| {
                if why.is_no_such_bucket() {
                    known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&h.bucket);
                }
            })
        };
        let persister = Persister::new(
            journal.clone(),
            backend.uploads.clone(),
            PersistConfig {
                concurrency: cfg.persist_concurrency,
                retry_max: cfg.persist_retry_max,
                first_byte_timeout: backend.first_byte_timeout,
            },
            on_persisted,
            on_refused,
            metrics.clone(),
        );
        // Open multipart uploads and their parts go to the tier's uploads; parts nothing
        // names are removed.
        let mut replay = multipart::split_replay(replay);
        for seq in std::mem::take(&mut replay.orphans) {
            journal.remove(seq).await?;
        }
        let uploads = multipart::Uploads::default();
        uploads.restore(&mut replay);
        // Only a key's newest record matters; older ones were superseded before the restart.
        let mut newest: std::collections::HashMap<(String, String), journal::Replayed> =
            std::collections::HashMap::new();
        for r in replay.writes {
            let path = (r.header.bucket.clone(), r.header.key.clone());
            if let Some(old) = newest.insert(path, r) {
                journal.remove(old.header.seq).await?;
            }
        }
        let mut replay: Vec<journal::Replayed> = newest.into_values().collect();
        replay.sort_by_key(|r| r.header.seq);
        let mut buckets = HashSet::new();
        for journal::Replayed {
            header: h,
            space,
            dead,
        } in replay
        {
            buckets.insert(h.bucket.clone());
            let state = match h.kind {
                RecordKind::Delete => KeyState::Deleted { seq: h.seq },
                _ => KeyState::Object(Arc::new(CachedObject {
                    id: rand::random(),
                    size: h.size,
                    meta: h.meta.clone(),
                    layout: None,
                    journal_seq: Some(h.seq),
                })),
            };
            let _ = index.write(&h.bucket, &h.key, h.seq, state);
            persister.replay(h, space, dead);
        }
        known_buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(buckets);
        persister.log_replay();
        persister.run();
        let tier = Arc::new(Self {
            cfg: cfg.clone(),
            codec,
            piece_size: cfg.chunk_size.as_u64() * cfg.data_chunks as u64,
            index,
            journal,
            persister,
            chunks,
            placer,
            client,
            metrics,
            recovery,
            buckets: known_buckets,
            locks: Arc::new(KeyLocks::default()),
            background: background::BackgroundFills::new(cfg.background_fills),
            uploads,
        });
        tier.metrics
            .multipart_uploads
            .set(tier.uploads.len() as i64);
        tier.expire_uploads();
        let weak = Arc::downgrade(&tier);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LAG_INTERVAL).await;
                let Some(t) = weak.upgrade() else { return };
                t.metrics
                    .persistence_lag_seconds
                    .set(t.persister.lag().as_secs_f64());
            }
        });
        Ok(tier)
    }

    /// Whether a PUT of `size` bytes is written back through the tier.
    pub fn writes_back(&self, size: u64) -> bool {
        self.cfg.enabled
            && self.cfg.write_policy == WritePolicy::Back
            && size >= self.cfg.min_object_size.as_u64()
            && self.journal.fits(size)
    }

    /// Whether an object of `size` bytes read from the bucket is admitted into memory.
    pub fn admits(&self, size: u64) -> bool {
        self.cfg.enabled && size >= self.cfg.min_object_size.as_u64()
    }

    /// Whether the placer's accounting agrees with the tier's layout, the one record of where
    /// chunks are: the chunks it counts on each function against those the layouts put there.
    /// `None` when they agree (or the placer keeps no accounting), else what differs. Holds
    /// whenever no write, read or relocation is in flight; tests check it after every step.
    pub fn placement_check(&self) -> Option<String> {
        let counted = self.placer.chunk_counts()?;
        let laid_out = self.index.chunk_counts();
        if counted == laid_out {
            return None;
        }
        let fs: std::collections::BTreeSet<_> = counted.keys().chain(laid_out.keys()).collect();
        let diff: Vec<String> = fs
            .into_iter()
            .filter_map(|f| {
                let (c, l) = (counted.get(f), laid_out.get(f));
                (c != l).then(|| {
                    format!(
                        "function {f}: policy {} chunks, layouts {}",
                        c.copied().unwrap_or(0),
                        l.copied().unwrap_or(0)
                    )
                })
            })
            .collect();
        Some(diff.join("; "))
    }

    /// What the tier knows of a key: `None` when the bucket has whatever it has.
    pub fn lookup(&self, bucket: &str, key: &str) -> Option<KeyState> {
        self.index.get(bucket, key)
    }

    /// Remembers that `bucket` exists (or not) in the backing store.
    pub fn note_bucket(&self, bucket: &str, exists: bool) {
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if exists {
            b.insert(bucket.to_owned());
        } else {
            b.remove(bucket);
        }
    }

    /// Checks that `bucket` exists before a write is acknowledged for it: a write-back PUT to a
    /// bucket that does not exist could never be persisted. Known buckets are remembered, so
    /// this needs the backing store only the first time.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<(), TierError> {
        if self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(bucket)
        {
            return Ok(());
        }
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => {
                self.note_bucket(bucket, true);
                Ok(())
            }
            Err(e) => match BackendError::from_sdk(&e) {
                be if be.is_no_such_bucket() => Err(TierError::NoSuchBucket(bucket.to_owned())),
                be => Err(be.into()),
            },
        }
    }

    /// Before an operation that the tier passes to the bucket reads the bucket's copy of
    /// `keys` (tagging, a copy source, partNumber reads): waits until they have no unpersisted
    /// writes. A key whose newest write the bucket refused is [`TierError::DeadLetter`]: the
    /// bucket does not hold what the tier serves.
    pub async fn flush(&self, bucket: &str, keys: &[String]) -> Result<(), TierError> {
        self.wait_clean(bucket, keys).await?;
        match keys.iter().find(|k| self.persister.is_dead(bucket, k)) {
            Some(k) => Err(TierError::DeadLetter {
                bucket: bucket.to_owned(),
                key: k.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn wait_clean(&self, bucket: &str, keys: &[String]) -> Result<(), TierError> {
        let timeout = self.cfg.flush_timeout;
        if self.persister.wait_clean(bucket, keys, timeout).await {
            Ok(())
        } else {
            Err(TierError::FlushTimeout(timeout))
        }
    }

    /// Starts a write of `key` that the tier passes straight to the bucket (a small PUT, a
    /// CopyObject or CompleteMultipartUpload onto it, a DELETE of a clean key, tagging): takes
    /// the key's commit lock and waits until the key's acknowledged writes are in the bucket,
    /// so the pass-through write lands after them and no write-back commit of the key runs
    /// meanwhile. Finish with [`Tier::end_write`].
    pub async fn begin_write(&self, bucket: &str, key: &str) -> Result<WriteGuard, TierError> {
        let guard = self.locks.lock(bucket, key).await;
        self.wait_clean(bucket, &[key.to_owned()]).await?;
        Ok(WriteGuard(guard))
    }

    /// Ends a pass-through write: the tier forgets what it held of the key (a fill that read
    /// the old version loses), and when the bucket took the write, older dead letters of the
    /// key are superseded and dropped. When it did not, a dead letter stays served.
    pub async fn end_write(&self, g: WriteGuard, ok: bool) {
        let (bucket, key) = (g.0.bucket(), g.0.key());
        if ok {
            self.persister
                .supersede_dead(&(bucket.to_owned(), key.to_owned()))
                .await;
        }
        if ok || !self.persister.is_dead(bucket, key) {
            self.invalidate(bucket, key);
        }
    }

    /// Waits, at most `timeout`, until every acknowledged write is in the bucket (at shutdown);
    /// returns how many keys are left to the journal replay of the next start (dead letters
    /// aside).
    pub async fn drain_writes(&self, timeout: Duration) -> usize {
        self.persister.wait_all_clean(timeout).await
    }

    /// Waits until no key of `bucket` under `prefix` has unpersisted writes (before a listing).
    /// Dead letters are not waited for: they are not in the bucket's listing.
    pub async fn flush_prefix(&self, bucket: &str, prefix: &str) -> Result<(), TierError> {
        let keys = self.persister.dirty_under(bucket, prefix);
        if keys.is_empty() {
            return Ok(());
        }
        self.wait_clean(bucket, &keys).await
    }

    /// The keys of `bucket` under `prefix` whose newest write the bucket may not have yet (dead
    /// letters included), each with what a listing shows for it: the object, or `None` for a
    /// delete. A listing of the bucket taken after this call, with these laid over it, shows
    /// every write acknowledged before the call.
    pub fn unpersisted_under(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> std::collections::BTreeMap<String, Option<Arc<CachedObject>>> {
        self.persister
            .unpersisted_under(bucket, prefix)
            .into_iter()
            .filter_map(|key| match self.index.get(bucket, &key)? {
                KeyState::Object(o) => Some((key, Some(o))),
                KeyState::Deleted { .. } => Some((key, None)),
            })
            .collect()
    }

    /// Forgets a key before or after the bucket copy is changed by a pass-through operation;
    /// its chunks are freed.
    pub fn invalidate(&self, bucket: &str, key: &str) {
        if let Some(old) = self.index.invalidate(bucket, key) {
            self.evict_unindexed(bucket, key, old.id, old.layout.as_ref());
        }
    }

    /// Acknowledged writes the bucket refused, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.persister.dead_letters()
    }

    /// Retries the dead letter of a key: persisted again at once. Whether there was one.
    pub async fn retry_dead_letter(&self, bucket: &str, key: &str) -> Result<bool, TierError> {
        Ok(self
            .persister
            .retry(&(bucket.to_owned(), key.to_owned()))
            .await?)
    }

    /// Discards the dead letter of a key: the acknowledged write is given up, the tier stops
    /// serving it (the key reads as the bucket has it). Whether there was one.
    pub async fn discard_dead_letter(&self, bucket: &str, key: &str) -> Result<bool, TierError> {
        let _g = self.locks.lock(bucket, key).await;
        let Some(h) = self
            .persister
            .discard(&(bucket.to_owned(), key.to_owned()))
            .await?
        else {
            return Ok(false);
        };
        let held = match self.index.get(bucket, key) {
            Some(KeyState::Object(o)) => o.journal_seq == Some(h.seq),
            Some(KeyState::Deleted { seq }) => seq == h.seq,
            None => false,
        };
        if held {
            self.invalidate(bucket, key);
        }
        Ok(true)
    }

    /// Write `object` of the key leaves memory: its chunks are deleted on their functions; a
    /// write not yet in the bucket stays, served from the journal. A newer write of the key is
    /// not touched (the eviction was about the one it replaced). The policy is told unless it
    /// decided the eviction itself. Whether the write was in memory.
    pub(crate) fn evict(&self, bucket: &str, key: &str, object: u128, by: EvictedBy) -> bool {
        let Some(layout) = self.index.evict(bucket, key, object) else {
            return false;
        };
        match by {
            EvictedBy::Tier => self.evict_unindexed(bucket, key, object, Some(&layout)),
            EvictedBy::Policy => self.delete_chunks(object, Some(&layout)),
        }
        true
    }

    /// Write `object` of the key, no longer in the index (replaced, deleted, invalidated, not
    /// admitted), leaves memory: the policy is told and the chunks of `layout` are deleted.
    fn evict_unindexed(
        &self,
        bucket: &str,
        key: &str,
        object: u128,
        layout: Option<&index::Layout>,
    ) {
        self.placer.evicted(bucket, key, object);
        self.delete_chunks(object, layout);
    }

    /// Deletes a key: through the journal when it has unpersisted writes (dead letters
    /// included), acknowledged once the delete record is durable; otherwise the caller deletes
    /// it in the bucket, holding the key's commit lock, and calls [`Tier::end_write`].
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<Deletion, TierError> {
        let guard = self.locks.lock(bucket, key).await;
        if !self.persister.is_dirty(bucket, key) {
            return Ok(Deletion::InBucket(WriteGuard(guard)));
        }
        self.journal_delete(&guard).await?;
        Ok(Deletion::Journaled)
    }

    /// Journals a delete of the key whose commit lock `g` is.
    async fn journal_delete(&self, g: &KeyGuard) -> Result<(), TierError> {
        let (bucket, key) = (g.bucket(), g.key());
        let space = self
            .journal
            .reserve(0, self.cfg.journal_wait)
            .await
            .map_err(|e| self.journal_refusal(e))?;
        let seq = self.journal.next_seq();
        let header = RecordHeader {
            seq,
            kind: RecordKind::Delete,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: 0,
            meta: meta::ObjectMeta::default(),
        };
        self.journal.write_empty(&header).await?;
        if let Ok(Some(old)) = self
            .index
            .write(bucket, key, seq, KeyState::Deleted { seq })
        {
            self.evict_unindexed(bucket, key, old.id, old.layout.as_ref());
        }
        self.persister.add(header, space);
        Ok(())
    }

    /// Deletes the chunks of write `object` on the functions of `layout`, in the background
    /// (the I/O half of an eviction; the index no longer points at them).
    fn delete_chunks(&self, object: u128, layout: Option<&index::Layout>) {
        let Some(layout) = layout.cloned() else {
            return;
        };
        let store = self.chunks.clone();
        tokio::spawn(async move {
            for (p, fs) in layout.functions.iter().enumerate() {
                for (i, f) in fs.iter().enumerate() {
                    let name = ChunkName::of(object, p, i);
                    if let Err(e) = store.delete(*f, name).await {
                        tracing::debug!(function = f, error = %e, "deleting an evicted chunk failed (the function may be gone)");
                    }
                }
            }
        });
    }
}
