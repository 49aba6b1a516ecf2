//! Persistence of journaled writes to the bucket, in the background.
//!
//! Each key with journal records is *dirty*. Workers (at most `concurrency` uploads at once)
//! take a dirty key and bring the bucket to its newest record: a PUT becomes a plain object
//! (PutObject, or a multipart upload with the record's part size when larger, every request
//! with Content-MD5 so the bucket checks the bytes), a DELETE becomes DeleteObject. Only the
//! newest record of a key is uploaded; older ones are superseded and dropped. One upload per
//! key at a time, so an older version never lands after a newer one. A record leaves the
//! journal only once the bucket confirmed it. Failures are retried forever with exponential
//! backoff ([`RETRY_MIN`] doubling up to [`RETRY_MAX`]): an acknowledged write is never given up.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use super::journal::{Journal, RecordHeader, RecordKind, Reservation};
use super::meta::ObjectMeta;
use crate::error::upstream_error;

/// First retry delay after a failed upload.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay by default (`tier.persist_retry_max`).
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// A bucket and key.
pub type ObjectPath = (String, String);

struct Record {
    header: RecordHeader,
    _space: Reservation,
}

#[derive(Default)]
struct DirtyKey {
    records: BTreeMap<u64, Record>,
    in_flight: bool,
    queued: bool,
    attempts: u32,
}

#[derive(Default)]
struct State {
    keys: HashMap<ObjectPath, DirtyKey>,
    queue: VecDeque<ObjectPath>,
    dirty_bytes: u64,
    oldest: BTreeMap<u64, Instant>,
}

/// What a finished upload reports to the tier (to mark the cached copy clean).
pub type OnPersisted = Arc<dyn Fn(&RecordHeader) + Send + Sync>;

/// The dirty-key table and its workers.
pub struct Persister {
    state: Mutex<State>,
    changed: Notify,
    work: Notify,
    journal: Arc<Journal>,
    client: aws_sdk_s3::Client,
    slots: Arc<Semaphore>,
    retry_max: Duration,
    on_persisted: OnPersisted,
    metrics: super::metrics::TierMetrics,
}

impl Persister {
    /// A persister for `journal`, uploading through `client` with at most `concurrency`
    /// uploads at once. Call [`Persister::run`] to start it.
    pub fn new(
        journal: Arc<Journal>,
        client: aws_sdk_s3::Client,
        concurrency: usize,
        retry_max: Duration,
        on_persisted: OnPersisted,
        metrics: super::metrics::TierMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            work: Notify::new(),
            journal,
            client,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            retry_max,
            on_persisted,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a committed record; it supersedes the key's older records.
    pub fn add(&self, header: RecordHeader, space: Reservation) {
        let path = (header.bucket.clone(), header.key.clone());
        let mut st = self.lock();
        st.dirty_bytes += header.size;
        st.oldest.insert(header.seq, Instant::now());
        let k = st.keys.entry(path.clone()).or_default();
        k.records.insert(
            header.seq,
            Record {
                header,
                _space: space,
            },
        );
        let enqueue = !k.queued && !k.in_flight;
        if enqueue {
            k.queued = true;
            st.queue.push_back(path);
        }
        self.update_gauges(&st);
        drop(st);
        if enqueue {
            self.work.notify_one();
        }
    }

    fn update_gauges(&self, st: &State) {
        self.metrics
            .dirty_bytes
            .set(i64::try_from(st.dirty_bytes).unwrap_or(i64::MAX));
        self.metrics
            .dirty_objects
            .set(i64::try_from(st.keys.len()).unwrap_or(i64::MAX));
    }

    /// Seconds the oldest unpersisted record has waited.
    pub fn lag(&self) -> Duration {
        self.lock()
            .oldest
            .values()
            .next()
            .map_or(Duration::ZERO, Instant::elapsed)
    }

    /// Whether the key has unpersisted records.
    pub fn is_dirty(&self, bucket: &str, key: &str) -> bool {
        self.lock()
            .keys
            .contains_key(&(bucket.to_owned(), key.to_owned()))
    }

    /// Dirty keys of `bucket` starting with `prefix`.
    pub fn dirty_under(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.lock()
            .keys
            .keys()
            .filter(|(b, k)| b == bucket && k.starts_with(prefix))
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Waits until none of `keys` of `bucket` is dirty, at most `timeout`.
    pub async fn wait_clean(
        &self,
        bucket: &str,
        keys: &[String],
        timeout: Duration,
    ) -> Result<(), s3s::S3Error> {
        let clean = self
            .wait_until(timeout, |st| {
                keys.iter()
                    .all(|k| !st.keys.contains_key(&(bucket.to_owned(), k.clone())))
            })
            .await;
        if clean {
            Ok(())
        } else {
            Err(crate::error::unavailable(format!(
                "writes to this bucket are not yet persisted (waited {timeout:?}); the backing store may be unreachable"
            )))
        }
    }

    /// Waits until nothing is dirty, at most `timeout`; returns how many keys are still dirty.
    pub async fn wait_all_clean(&self, timeout: Duration) -> usize {
        self.wait_until(timeout, |st| st.keys.is_empty()).await;
        self.lock().keys.len()
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
    fn forget(&self, mut st: std::sync::MutexGuard<'_, State>, path: &ObjectPath) {
        st.keys.remove(path);
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
                if !k.in_flight {
                    k.in_flight = true;
                    return Some(p);
                }
            }
        }
        None
    }

    /// Brings the bucket to the key's newest record, retrying until it succeeds.
    async fn persist_key(&self, path: ObjectPath) {
        loop {
            // The newest record; older ones are superseded.
            let (header, superseded) = {
                let mut st = self.lock();
                let Some(k) = st.keys.get_mut(&path) else {
                    return;
                };
                let Some((&newest, _)) = k.records.iter().next_back() else {
                    self.forget(st, &path);
                    return;
                };
                let older: Vec<u64> = k.records.range(..newest).map(|(s, _)| *s).collect();
                let header = k.records[&newest].header.clone();
                (header, older)
            };
            for seq in superseded {
                self.release(&path, seq).await;
            }
            let started = Instant::now();
            let result = self.upload(&header).await;
            match result {
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
                    if k.records.is_empty() {
                        self.forget(st, &path);
                        return;
                    }
                    // A newer record arrived meanwhile: go again.
                }
                Err(e) => {
                    self.metrics.persist_failures.inc();
                    let attempts = {
                        let mut st = self.lock();
                        let Some(k) = st.keys.get_mut(&path) else {
                            return;
                        };
                        k.attempts += 1;
                        k.attempts
                    };
                    let delay = backoff(attempts, self.retry_max);
                    warn!(bucket = %header.bucket, key = %header.key, seq = header.seq, attempts, ?delay, error = %e, "persisting to the bucket failed; will retry");
                    tokio::time::sleep(delay).await;
                }
            }
        }
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
        if let Some(k) = st.keys.get_mut(path)
            && let Some(r) = k.records.remove(&seq)
        {
            st.dirty_bytes = st.dirty_bytes.saturating_sub(r.header.size);
        }
        st.oldest.remove(&seq);
        self.update_gauges(&st);
    }

    async fn upload(&self, h: &RecordHeader) -> Result<(), String> {
        match h.kind {
            RecordKind::Delete => self
                .client
                .delete_object()
                .bucket(&h.bucket)
                .key(&h.key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| describe(&e)),
            RecordKind::Put if h.size <= h.meta.part_size.max(1) => self.put_single(h).await,
            RecordKind::Put => self.put_multipart(h).await,
        }
    }

    async fn read_range(&self, seq: u64, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut f = self
            .journal
            .open_data(seq, offset)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
        f.read_exact(&mut buf)
            .await
            .map_err(|e| format!("reading journal record {seq}: {e}"))?;
        Ok(buf)
    }

    async fn put_single(&self, h: &RecordHeader) -> Result<(), String> {
        let data = self.read_range(h.seq, 0, h.size).await?;
        let md5 = content_md5(&data);
        let m = &h.meta;
        self.client
            .put_object()
            .bucket(&h.bucket)
            .key(&h.key)
            .content_length(i64::try_from(h.size).unwrap_or(i64::MAX))
            .content_md5(md5)
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
            .set_checksum_crc32(m.checksums.get("CRC32").cloned())
            .set_checksum_crc32_c(m.checksums.get("CRC32C").cloned())
            .set_checksum_crc64_nvme(m.checksums.get("CRC64NVME").cloned())
            .set_checksum_sha1(m.checksums.get("SHA1").cloned())
            .set_checksum_sha256(m.checksums.get("SHA256").cloned())
            .body(ByteStream::from(data))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    async fn put_multipart(&self, h: &RecordHeader) -> Result<(), String> {
        let m = &h.meta;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&h.bucket)
            .key(&h.key)
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
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let upload_id = created.upload_id().ok_or("no upload id")?.to_owned();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut n = 1i32;
            while offset < h.size {
                let len = m.part_size.min(h.size - offset);
                let data = self.read_range(h.seq, offset, len).await?;
                let r = self
                    .client
                    .upload_part()
                    .bucket(&h.bucket)
                    .key(&h.key)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                    .content_md5(content_md5(&data))
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| describe(&e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(r.e_tag().map(str::to_owned))
                        .build(),
                );
                offset += len;
                n += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&h.bucket)
                .key(&h.key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok::<(), String>(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&h.bucket)
                .key(&h.key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Logs what a restart found.
    pub fn log_replay(&self) {
        let st = self.lock();
        if !st.keys.is_empty() {
            info!(
                keys = st.keys.len(),
                bytes = st.dirty_bytes,
                "journal replayed: persisting acknowledged writes"
            );
        }
    }
}

fn describe<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let err = upstream_error(e);
    format!(
        "{}: {}",
        err.code().as_str(),
        err.message().unwrap_or_default()
    )
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

/// Metadata kept for replay; re-exported for the writer.
pub type Meta = ObjectMeta;

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
