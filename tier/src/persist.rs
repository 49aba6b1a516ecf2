//! Persistence of journaled writes to the bucket, in the background.
//!
//! Each key with journal records is *dirty*. Workers (at most `concurrency` uploads at once)
//! take a dirty key and bring the bucket to its newest record: a PUT becomes a plain object
//! (PutObject, or a multipart upload with the record's part size when larger, every request
//! with Content-MD5 so the bucket checks the bytes), a DELETE becomes DeleteObject. Only the
//! newest record of a key is uploaded; older ones are superseded and dropped. One upload per
//! key at a time, and records of a key arrive in the order of their sequence numbers (the tier
//! commits a key's writes one at a time), so an older version never lands after a newer one.
//! A record leaves the journal only once the bucket confirmed it.
//!
//! **Failures.** A transient failure (5xx, throttling, timeouts, an unreachable bucket) is
//! retried with exponential backoff ([`RETRY_MIN`] doubling up to `retry_max`): the key waits
//! on a timer, not in a worker, so a key that keeps failing never holds up the others. A
//! permanent refusal (a 4xx other than throttling and timeouts: AccessDenied, InvalidRequest,
//! KeyTooLongError, NoSuchBucket, KMS errors, a request the SDK cannot build for the key) makes
//! the record a *dead letter*: marked in the journal, still served by the tier, no longer
//! retried, counted (`gateway_tier_dead_letters`), logged at error level, and left out of
//! what listings and flushes wait for, until an operator retries or discards it through the
//! admin API. A newer write or a delete of the key supersedes it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use base64::Engine as _;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, error, info, warn};

use super::error::BackendError;
use super::journal::{Journal, RecordHeader, RecordKind, Reservation};
use super::meta::ObjectMeta;

/// First retry delay after a failed upload.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay by default (`tier.persist_retry_max`).
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Slowest upload a persistence request is given time for (its attempt timeout is the first
/// byte timeout plus its length at this rate).
pub const MIN_UPLOAD_RATE: u64 = 1 << 20;

/// A bucket and key.
pub type ObjectPath = (String, String);

/// Why an attempt to persist failed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// It may succeed later: retried.
    Transient(String),
    /// The bucket refused it for good: a dead letter.
    Refused(BackendError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(m) => f.write_str(m),
            Failure::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// Classifies a failed backing-store call.
fn classify<E>(e: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let be = BackendError::from_sdk(e);
    if be.is_refusal() {
        Failure::Refused(be)
    } else {
        Failure::Transient(be.to_string())
    }
}

/// Sets an object's headers (type, encoding, disposition, language, cache control, expiry,
/// redirect, user metadata, tags, storage class) from its [`ObjectMeta`] on a PutObject or
/// CreateMultipartUpload request (same setter names).
macro_rules! with_object_meta {
    ($builder:expr, $m:expr) => {{
        let m: &ObjectMeta = $m;
        $builder
            .set_content_type(m.content_type.clone())
            .set_content_encoding(m.content_encoding.clone())
            .set_content_disposition(m.content_disposition.clone())
            .set_content_language(m.content_language.clone())
            .set_cache_control(m.cache_control.clone())
            .set_expires(parse_http_date(m.expires.as_deref()))
            .set_website_redirect_location(m.website_redirect_location.clone())
            .set_metadata(Some(m.metadata.clone().into_iter().collect()))
            .set_tagging(m.tagging.clone())
            .set_storage_class(m.storage_class.as_deref().map(Into::into))
    }};
}

/// A record the bucket refused, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Journal record.
    pub seq: u64,
    /// `put` or `delete`.
    pub kind: &'static str,
    /// Object size.
    pub size: u64,
    /// The bucket's refusal.
    pub error: String,
    /// When it was refused (seconds since the epoch; the restart time for marks found in the
    /// journal at start).
    pub since_unix: u64,
}

struct Record {
    header: RecordHeader,
    _space: Reservation,
    /// The bucket's refusal, when this record is a dead letter.
    dead: Option<(String, SystemTime)>,
}

#[derive(Default)]
struct DirtyKey {
    records: BTreeMap<u64, Record>,
    in_flight: bool,
    queued: bool,
    attempts: u32,
}

impl DirtyKey {
    fn newest(&self) -> Option<&Record> {
        self.records.values().next_back()
    }

    /// Whether the key waits for the bucket: its newest record is not a dead letter.
    fn live(&self) -> bool {
        self.newest().is_some_and(|r| r.dead.is_none())
    }
}

/// What the gauges show, kept up to date key by key.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Totals {
    live_keys: i64,
    live_bytes: i64,
    dead_keys: i64,
    dead_bytes: i64,
}

impl Totals {
    fn of(k: &DirtyKey) -> Totals {
        let mut t = Totals::default();
        if k.records.is_empty() {
            return t;
        }
        if k.live() {
            t.live_keys = 1;
        } else {
            t.dead_keys = 1;
        }
        for r in k.records.values() {
            let size = i64::try_from(r.header.size).unwrap_or(i64::MAX);
            match r.dead {
                None => t.live_bytes += size,
                Some(_) => t.dead_bytes += size,
            }
        }
        t
    }

    fn apply(&mut self, before: Totals, after: Totals) {
        self.live_keys += after.live_keys - before.live_keys;
        self.live_bytes += after.live_bytes - before.live_bytes;
        self.dead_keys += after.dead_keys - before.dead_keys;
        self.dead_bytes += after.dead_bytes - before.dead_bytes;
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<ObjectPath, DirtyKey>,
    queue: VecDeque<ObjectPath>,
    /// Sequence numbers of live records, with when they were added (persistence lag).
    oldest: BTreeMap<u64, Instant>,
    totals: Totals,
}

impl State {
    /// Changes key `path` (created if absent) and keeps the totals in step.
    fn update<R>(&mut self, path: &ObjectPath, f: impl FnOnce(&mut DirtyKey) -> R) -> R {
        let k = self.keys.entry(path.clone()).or_default();
        let before = Totals::of(k);
        let r = f(k);
        let after = Totals::of(k);
        self.totals.apply(before, after);
        r
    }

    /// Changes key `path` if it exists.
    fn update_existing<R>(
        &mut self,
        path: &ObjectPath,
        f: impl FnOnce(&mut DirtyKey) -> R,
    ) -> Option<R> {
        if !self.keys.contains_key(path) {
            return None;
        }
        Some(self.update(path, f))
    }
}

/// What a finished upload reports to the tier (to mark the cached copy clean).
pub type OnPersisted = Arc<dyn Fn(&RecordHeader) + Send + Sync>;
/// What a refusal reports to the tier (the record and the bucket's answer).
pub(crate) type OnRefused = Arc<dyn Fn(&RecordHeader, &BackendError) + Send + Sync>;

/// How the persister reaches the bucket.
pub struct PersistConfig {
    /// Uploads at once.
    pub concurrency: usize,
    /// Longest delay between two attempts of a key.
    pub retry_max: Duration,
    /// Time the bucket has to start answering a request, besides the time to send its body.
    pub first_byte_timeout: Duration,
}

/// The dirty-key table and its workers.
pub struct Persister {
    state: Mutex<State>,
    changed: Notify,
    work: Notify,
    journal: Arc<Journal>,
    client: aws_sdk_s3::Client,
    slots: Arc<Semaphore>,
    cfg: PersistConfig,
    on_persisted: OnPersisted,
    on_refused: OnRefused,
    metrics: super::metrics::TierMetrics,
    me: Weak<Persister>,
}

impl Persister {
    /// A persister for `journal`, uploading through `client`. Call [`Persister::run`] to start
    /// it.
    pub fn new(
        journal: Arc<Journal>,
        client: aws_sdk_s3::Client,
        cfg: PersistConfig,
        on_persisted: OnPersisted,
        on_refused: OnRefused,
        metrics: super::metrics::TierMetrics,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            work: Notify::new(),
            journal,
            client,
            slots: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            cfg,
            on_persisted,
            on_refused,
            metrics,
            me: me.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a committed record (newer than the key's others); it supersedes them.
    pub fn add(&self, header: RecordHeader, space: Reservation) {
        self.insert(header, space, None);
    }

    /// Adds a record found in the journal at start; `dead` is its dead-letter mark.
    pub fn replay(&self, header: RecordHeader, space: Reservation, dead: Option<String>) {
        self.insert(header, space, dead.map(|why| (why, SystemTime::now())));
    }

    fn insert(&self, header: RecordHeader, space: Reservation, dead: Option<(String, SystemTime)>) {
        let path = (header.bucket.clone(), header.key.clone());
        let mut st = self.lock();
        if dead.is_none() {
            st.oldest.insert(header.seq, Instant::now());
        }
        let enqueue = st.update(&path, |k| {
            k.records.insert(
                header.seq,
                Record {
                    header,
                    _space: space,
                    dead,
                },
            );
            Self::mark_queued(k)
        });
        if enqueue {
            st.queue.push_back(path);
        }
        self.update_gauges(&st);
        drop(st);
        if enqueue {
            self.work.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// Whether `k` should be put on the queue now (and marks it queued).
    fn mark_queued(k: &mut DirtyKey) -> bool {
        let go = k.live() && !k.queued && !k.in_flight;
        if go {
            k.queued = true;
        }
        go
    }

    /// Queues the key if it has work (after its retry delay, or an operator's retry).
    fn enqueue(&self, path: &ObjectPath) {
        let mut st = self.lock();
        let go = st.keys.get_mut(path).is_some_and(Self::mark_queued);
        if go {
            st.queue.push_back(path.clone());
        }
        drop(st);
        if go {
            self.work.notify_one();
        }
    }

    fn update_gauges(&self, st: &State) {
        let (m, t) = (&self.metrics, st.totals);
        m.dirty_objects.set(t.live_keys);
        m.dirty_bytes.set(t.live_bytes);
        m.dead_letters.set(t.dead_keys);
        m.dead_letter_bytes.set(t.dead_bytes);
    }

    /// Seconds the oldest unpersisted record (dead letters aside) has waited.
    pub fn lag(&self) -> Duration {
        self.lock()
            .oldest
            .values()
            .next()
            .map_or(Duration::ZERO, Instant::elapsed)
    }

    /// Whether the key has records in the journal (dead letters included).
    pub fn is_dirty(&self, bucket: &str, key: &str) -> bool {
        self.lock()
            .keys
            .contains_key(&(bucket.to_owned(), key.to_owned()))
    }

    /// Whether the key's newest write is a dead letter.
    pub fn is_dead(&self, bucket: &str, key: &str) -> bool {
        self.lock()
            .keys
            .get(&(bucket.to_owned(), key.to_owned()))
            .is_some_and(|k| !k.records.is_empty() && !k.live())
    }

    /// Keys of `bucket` starting with `prefix` that wait for the bucket (dead letters aside).
    pub fn dirty_under(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.lock()
            .keys
            .iter()
            .filter(|((b, k), d)| b == bucket && k.starts_with(prefix) && d.live())
            .map(|((_, k), _)| k.clone())
            .collect()
    }

    /// Keys of `bucket` starting with `prefix` whose newest write is not in the bucket, dead
    /// letters included.
    pub fn unpersisted_under(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.lock()
            .keys
            .keys()
            .filter(|(b, k)| b == bucket && k.starts_with(prefix))
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Waits until none of `keys` of `bucket` waits for the bucket (dead letters do not), at
    /// most `timeout`; whether they are clean.
    pub async fn wait_clean(&self, bucket: &str, keys: &[String], timeout: Duration) -> bool {
        self.wait_until(timeout, |st| {
            keys.iter().all(|k| {
                st.keys
                    .get(&(bucket.to_owned(), k.clone()))
                    .is_none_or(|d| !d.live())
            })
        })
        .await
    }

    /// Waits until nothing waits for the bucket, at most `timeout`; returns how many keys
    /// still do (dead letters are not counted: they stay in the journal).
    pub async fn wait_all_clean(&self, timeout: Duration) -> usize {
        self.wait_until(timeout, |st| st.keys.values().all(|k| !k.live()))
            .await;
        self.lock().keys.values().filter(|k| k.live()).count()
    }

    /// Waits until `done` holds of the state, at most `timeout`; whether it does.
    async fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Drops a key with no records left and wakes whoever waits for it to be clean.
    fn forget_if_empty(&self, mut st: std::sync::MutexGuard<'_, State>, path: &ObjectPath) {
        if st.keys.get(path).is_some_and(|k| k.records.is_empty()) {
            st.keys.remove(path);
        }
        self.update_gauges(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Runs the workers until the process ends.
    pub fn run(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let permit = me.slots.clone().acquire_owned().await;
                let Ok(permit) = permit else { return };
                let path = loop {
                    let notified = me.work.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if let Some(p) = me.take_next() {
                        break p;
                    }
                    notified.await;
                };
                let worker = me.clone();
                tokio::spawn(async move {
                    worker.persist_key(path).await;
                    drop(permit);
                });
            }
        });
    }

    fn take_next(&self) -> Option<ObjectPath> {
        let mut st = self.lock();
        while let Some(p) = st.queue.pop_front() {
            if let Some(k) = st.keys.get_mut(&p) {
                k.queued = false;
                if !k.in_flight && k.live() {
                    k.in_flight = true;
                    return Some(p);
                }
            }
        }
        None
    }

    /// Brings the bucket to the key's newest record: uploads until the key is clean, or one
    /// attempt failed (then the key waits for its retry timer, or becomes a dead letter).
    async fn persist_key(&self, path: ObjectPath) {
        loop {
            // The newest record; older ones are superseded.
            let (header, superseded) = {
                let mut st = self.lock();
                let Some(k) = st.keys.get_mut(&path) else {
                    return;
                };
                let Some(newest) = k.newest().filter(|r| r.dead.is_none()) else {
                    k.in_flight = false;
                    self.forget_if_empty(st, &path);
                    return;
                };
                let header = newest.header.clone();
                let older: Vec<u64> = k.records.range(..header.seq).map(|(s, _)| *s).collect();
                (header, older)
            };
            for seq in superseded {
                self.release(&path, seq).await;
            }
            let started = Instant::now();
            match self.upload(&header).await {
                Ok(()) => {
                    self.metrics.persisted.inc();
                    debug!(bucket = %header.bucket, key = %header.key, seq = header.seq, ms = started.elapsed().as_millis() as u64, "persisted");
                    (self.on_persisted)(&header);
                    self.release(&path, header.seq).await;
                    let mut st = self.lock();
                    let Some(k) = st.keys.get_mut(&path) else {
                        return;
                    };
                    k.attempts = 0;
                    if !k.live() {
                        k.in_flight = false;
                        self.forget_if_empty(st, &path);
                        return;
                    }
                    // A newer record arrived meanwhile: go again.
                }
                Err(Failure::Transient(e)) => {
                    self.metrics.persist_failures.inc();
                    let (attempts, newer) = {
                        let mut st = self.lock();
                        let Some(k) = st.keys.get_mut(&path) else {
                            return;
                        };
                        k.attempts += 1;
                        k.in_flight = false;
                        let newer = k.newest().is_some_and(|r| r.header.seq > header.seq);
                        (k.attempts, newer)
                    };
                    if newer {
                        // What failed is superseded: try the newer write at once.
                        self.enqueue(&path);
                        return;
                    }
                    let delay = backoff(attempts, self.cfg.retry_max);
                    warn!(bucket = %header.bucket, key = %header.key, seq = header.seq, attempts, ?delay, error = %e, "persisting to the bucket failed; will retry");
                    let me = self.me.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(p) = me.upgrade() {
                            p.enqueue(&path);
                        }
                    });
                    return;
                }
                Err(Failure::Refused(e)) => {
                    self.metrics.persist_failures.inc();
                    (self.on_refused)(&header, &e);
                    self.dead_letter(&path, &header, e.to_string()).await;
                    return;
                }
            }
        }
    }

    /// Makes record `header` of `path` a dead letter (durably marked in the journal).
    async fn dead_letter(&self, path: &ObjectPath, header: &RecordHeader, why: String) {
        error!(bucket = %header.bucket, key = %header.key, seq = header.seq, size = header.size, error = %why,
            "the bucket refused an acknowledged write: it is a dead letter (still served; retry or discard it through the admin API)");
        while let Err(e) = self.journal.mark_dead(header.seq, &why).await {
            warn!(seq = header.seq, error = %e, "cannot mark a journal record dead; retrying");
            tokio::time::sleep(RETRY_MIN).await;
        }
        self.metrics.dead_lettered.inc();
        let mut st = self.lock();
        st.oldest.remove(&header.seq);
        let again = st
            .update_existing(path, |k| {
                if let Some(r) = k.records.get_mut(&header.seq) {
                    r.dead = Some((why, SystemTime::now()));
                }
                k.in_flight = false;
                k.attempts = 0;
                Self::mark_queued(k)
            })
            .unwrap_or(false);
        if again {
            // A newer write arrived during the attempt.
            st.queue.push_back(path.clone());
        }
        self.update_gauges(&st);
        drop(st);
        if again {
            self.work.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        let st = self.lock();
        let mut out: Vec<DeadLetter> = st
            .keys
            .values()
            .filter_map(|k| {
                let r = k.newest()?;
                let (why, since) = r.dead.as_ref()?;
                Some(DeadLetter {
                    bucket: r.header.bucket.clone(),
                    key: r.header.key.clone(),
                    seq: r.header.seq,
                    kind: match r.header.kind {
                        RecordKind::Delete => "delete",
                        RecordKind::Assembled { .. } => "multipart",
                        _ => "put",
                    },
                    size: r.header.size,
                    error: why.clone(),
                    since_unix: since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                })
            })
            .collect();
        out.sort_by_key(|d| d.seq);
        out
    }

    /// Retries the dead letter of `path` (its mark is removed, it is queued at once). Returns
    /// whether there was one.
    pub async fn retry(&self, path: &ObjectPath) -> Result<bool, super::journal::JournalError> {
        let Some(seq) = self.dead_seq(path) else {
            return Ok(false);
        };
        self.journal.clear_dead(seq).await?;
        {
            let mut st = self.lock();
            let found = st
                .update_existing(path, |k| {
                    k.records.get_mut(&seq).map(|r| r.dead = None).is_some()
                })
                .unwrap_or(false);
            if !found {
                return Ok(false);
            }
            st.oldest.insert(seq, Instant::now());
            self.update_gauges(&st);
        }
        info!(bucket = %path.0, key = %path.1, seq, "dead letter retried");
        self.enqueue(path);
        Ok(true)
    }

    /// Discards the dead letter of `path`: its record leaves the journal. Returns its header,
    /// for the tier to forget the write.
    pub async fn discard(
        &self,
        path: &ObjectPath,
    ) -> Result<Option<RecordHeader>, super::journal::JournalError> {
        let Some(seq) = self.dead_seq(path) else {
            return Ok(None);
        };
        let header = {
            let st = self.lock();
            st.keys
                .get(path)
                .and_then(|k| k.records.get(&seq))
                .map(|r| r.header.clone())
        };
        self.journal.remove(seq).await?;
        let mut st = self.lock();
        st.update_existing(path, |k| k.records.remove(&seq));
        warn!(bucket = %path.0, key = %path.1, seq, "dead letter discarded: the write is given up");
        self.forget_if_empty(st, path);
        Ok(header)
    }

    /// Drops every dead letter of `path` older than what the bucket now holds (a write passed
    /// straight to the bucket replaced the key).
    pub async fn supersede_dead(&self, path: &ObjectPath) {
        let dead: Vec<u64> = {
            let st = self.lock();
            st.keys.get(path).map_or_else(Vec::new, |k| {
                k.records
                    .iter()
                    .filter(|(_, r)| r.dead.is_some())
                    .map(|(s, _)| *s)
                    .collect()
            })
        };
        for seq in dead {
            self.release(path, seq).await;
        }
        let st = self.lock();
        self.forget_if_empty(st, path);
    }

    fn dead_seq(&self, path: &ObjectPath) -> Option<u64> {
        let st = self.lock();
        let r = st.keys.get(path)?.newest()?;
        r.dead.as_ref().map(|_| r.header.seq)
    }

    /// Drops record `seq` of `path` from the journal and the table.
    async fn release(&self, path: &ObjectPath, seq: u64) {
        // Removing the file first: if that fails the record stays and is retried later.
        loop {
            match self.journal.remove(seq).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(seq, error = %e, "cannot remove a journal record; retrying");
                    tokio::time::sleep(RETRY_MIN).await;
                }
            }
        }
        let mut st = self.lock();
        st.update_existing(path, |k| k.records.remove(&seq));
        st.oldest.remove(&seq);
        self.update_gauges(&st);
    }

    /// Per-attempt limits of a request carrying `len` bytes.
    fn limits(&self, len: u64) -> aws_sdk_s3::config::Builder {
        let send = Duration::from_secs(len.div_ceil(MIN_UPLOAD_RATE));
        aws_sdk_s3::config::Builder::default().timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(self.cfg.first_byte_timeout + send)
                .build(),
        )
    }

    async fn upload(&self, h: &RecordHeader) -> Result<(), Failure> {
        let key = crate::backend::sdk_key(&h.key);
        match h.kind {
            RecordKind::Delete => self
                .client
                .delete_object()
                .bucket(&h.bucket)
                .key(key)
                .customize()
                .config_override(self.limits(0))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(&e)),
            RecordKind::Put if h.size <= h.meta.part_size.max(1) => self.put_single(h, &key).await,
            RecordKind::Put => {
                let mut parts = Vec::new();
                let mut offset = 0u64;
                while offset < h.size {
                    let len = h.meta.part_size.min(h.size - offset);
                    parts.push((offset, len));
                    offset += len;
                }
                self.put_multipart(h, &key, &parts).await
            }
            // A completed multipart upload goes to the bucket with the client's part
            // boundaries, so the bucket's ETag is the one the client got. (Each part carries
            // its Content-MD5; the client's per-part checksums were checked by the gateway and
            // are not replayed: stores differ in what they make of them — s3s-fs records a
            // wrong whole-object CRC that SDKs then reject on GET.)
            RecordKind::Assembled { ref parts, .. } => {
                let mut spans = Vec::new();
                let mut offset = 0u64;
                for p in parts {
                    spans.push((offset, p.size));
                    offset += p.size;
                }
                self.put_multipart(h, &key, &spans).await
            }
            // Not key writes: never given to the persister.
            RecordKind::Upload { .. } | RecordKind::Part { .. } | RecordKind::Forwarded { .. } => {
                Ok(())
            }
        }
    }

    async fn read_range(&self, seq: u64, offset: u64, len: u64) -> Result<Vec<u8>, Failure> {
        self.journal
            .read_at(seq, offset, len)
            .await
            .map(|b| b.to_vec())
            .map_err(|e| Failure::Transient(format!("reading journal record {seq}: {e}")))
    }

    async fn put_single(&self, h: &RecordHeader, key: &str) -> Result<(), Failure> {
        let data = self.read_range(h.seq, 0, h.size).await?;
        let md5 = content_md5(&data);
        let m = &h.meta;
        with_object_meta!(
            self.client
                .put_object()
                .bucket(&h.bucket)
                .key(key)
                .content_length(i64::try_from(h.size).unwrap_or(i64::MAX))
                .content_md5(md5),
            m
        )
        .set_checksum_crc32(m.checksums.get("CRC32").cloned())
        .set_checksum_crc32_c(m.checksums.get("CRC32C").cloned())
        .set_checksum_crc64_nvme(m.checksums.get("CRC64NVME").cloned())
        .set_checksum_sha1(m.checksums.get("SHA1").cloned())
        .set_checksum_sha256(m.checksums.get("SHA256").cloned())
        .body(ByteStream::from(data))
        .customize()
        .config_override(self.limits(h.size))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| classify(&e))
    }

    /// Record `h`'s bytes as a multipart upload completed in the bucket, in `spans`
    /// (`(offset, length)` of parts 1, 2, ... in order).
    async fn put_multipart(
        &self,
        h: &RecordHeader,
        key: &str,
        spans: &[(u64, u64)],
    ) -> Result<(), Failure> {
        let upload_id = self.open_upload(&h.bucket, key, &h.meta).await?;
        let result = async {
            let mut parts = Vec::new();
            for (n, &(offset, len)) in (1i32..).zip(spans) {
                parts.push(
                    self.send_part(&h.bucket, key, &upload_id, n, h.seq, offset, len)
                        .await?,
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&h.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .customize()
                .config_override(self.limits(h.size))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            Ok::<(), Failure>(())
        }
        .await;
        if result.is_err() {
            self.abort_upload(&h.bucket, key, &upload_id).await;
        }
        result
    }

    /// Opens a multipart upload in the bucket for an object with `meta`: its upload id.
    async fn open_upload(
        &self,
        bucket: &str,
        key: &str,
        m: &ObjectMeta,
    ) -> Result<String, Failure> {
        let created = with_object_meta!(
            self.client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key),
            m
        )
        .customize()
        .config_override(self.limits(0))
        .send()
        .await
        .map_err(|e| classify(&e))?;
        created
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Transient("the bucket gave no upload id".into()))
    }

    /// Sends `len` bytes at `offset` of journal record `seq` as part `n` of the bucket's upload.
    #[allow(clippy::too_many_arguments)]
    async fn send_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        n: i32,
        seq: u64,
        offset: u64,
        len: u64,
    ) -> Result<CompletedPart, Failure> {
        let data = self.read_range(seq, offset, len).await?;
        let r = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(n)
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .content_md5(content_md5(&data))
            .body(ByteStream::from(data))
            .customize()
            .config_override(self.limits(len))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(CompletedPart::builder()
            .part_number(n)
            .set_e_tag(r.e_tag().map(str::to_owned))
            .build())
    }

    /// Aborts the bucket's upload `upload_id` (best effort: the bucket's lifecycle rules clean
    /// up what this misses).
    pub(crate) async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(crate::backend::sdk_key(key))
            .upload_id(upload_id)
            .customize()
            .config_override(self.limits(0))
            .send()
            .await;
    }

    /// Sends journal record `seq` (`size` bytes) as part `n` of the bucket's upload
    /// `upload_id`.
    pub(crate) async fn send_journaled_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        n: u32,
        seq: u64,
        size: u64,
    ) -> Result<(), Failure> {
        let sdk_key = crate::backend::sdk_key(key);
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        self.send_part(bucket, &sdk_key, upload_id, n, seq, 0, size)
            .await
            .map(|_| ())
    }

    /// Moves a multipart upload the gateway owns to the bucket: opens one there with `meta`
    /// and sends it `parts` (`(number, record)`, each part's bytes a whole journal record of
    /// `size`). Returns the bucket's upload id; on failure nothing is left open in the bucket.
    pub(crate) async fn forward_upload(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
        parts: &[(u32, u64, u64)],
    ) -> Result<String, Failure> {
        let sdk_key = crate::backend::sdk_key(key);
        let upload_id = self.open_upload(bucket, &sdk_key, meta).await?;
        for &(n, seq, size) in parts {
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            if let Err(e) = self
                .send_part(bucket, &sdk_key, &upload_id, n, seq, 0, size)
                .await
            {
                self.abort_upload(bucket, key, &upload_id).await;
                return Err(e);
            }
        }
        Ok(upload_id)
    }

    /// Logs what a restart found.
    pub fn log_replay(&self) {
        let st = self.lock();
        if st.keys.is_empty() {
            return;
        }
        let live = st.keys.values().filter(|k| k.live()).count();
        let bytes: u64 = st
            .keys
            .values()
            .flat_map(|k| k.records.values())
            .map(|r| r.header.size)
            .sum();
        info!(
            keys = live,
            dead_letters = st.keys.len() - live,
            bytes,
            "journal replayed: persisting acknowledged writes"
        );
    }
}

fn backoff(attempts: u32, max: Duration) -> Duration {
    let exp = RETRY_MIN.saturating_mul(1u32 << attempts.min(16).saturating_sub(1));
    exp.min(max)
}

/// Base64 MD5 for Content-MD5.
fn content_md5(data: &[u8]) -> String {
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

fn parse_http_date(s: Option<&str>) -> Option<aws_smithy_types::DateTime> {
    s.and_then(|s| {
        aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::HttpDate).ok()
    })
}

/// The multipart ETag the bucket computes for `size` bytes uploaded in `part_size` parts:
/// MD5 of the parts' MD5s, then `-<parts>`; a plain MD5 when one PUT suffices.
pub fn expected_etag(
    md5_whole: &[u8; 16],
    part_md5s: &[[u8; 16]],
    size: u64,
    part_size: u64,
) -> String {
    use md5::Digest;
    if size <= part_size.max(1) {
        return hex::encode(md5_whole);
    }
    let mut h = md5::Md5::new();
    for p in part_md5s {
        h.update(p);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1, RETRY_MAX), RETRY_MIN);
        assert_eq!(backoff(2, RETRY_MAX), RETRY_MIN * 2);
        assert_eq!(backoff(40, RETRY_MAX), RETRY_MAX);
    }

    #[test]
    fn multipart_etag() {
        use md5::Digest;
        let a = [1u8; 10];
        let b = [2u8; 5];
        let whole: [u8; 16] = md5::Md5::digest([&a[..], &b[..]].concat()).into();
        let pa: [u8; 16] = md5::Md5::digest(a).into();
        let pb: [u8; 16] = md5::Md5::digest(b).into();
        assert_eq!(expected_etag(&whole, &[pa], 15, 100), hex::encode(whole));
        let mut h = md5::Md5::new();
        h.update(pa);
        h.update(pb);
        assert_eq!(
            expected_etag(&whole, &[pa, pb], 15, 10),
            format!("{}-2", hex::encode(h.finalize()))
        );
    }
}
