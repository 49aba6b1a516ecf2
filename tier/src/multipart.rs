//! Multipart uploads written back: the gateway owns the upload (its id starts with
//! [`UPLOAD_PREFIX`]); the bucket sees nothing until the completed object is persisted.
//!
//! - **Create** writes an `Upload` record (the object's metadata) to the journal, fsynced.
//! - **UploadPart** streams the part into a `Part` record (journal space reserved as the bytes
//!   arrive, as for a PUT; 503 SlowDown when none frees up in `journal_wait`), checks the
//!   client's Content-MD5 and checksums, and answers once the record is fsynced. A part sent
//!   again with the same number replaces the earlier one.
//! - **Complete** validates the part list as S3 does (NoSuchUpload, InvalidPart,
//!   InvalidPartOrder, EntityTooSmall) and commits an `Assembled` record that names the parts'
//!   records — no bytes are copied and the bucket is not needed. The object's ETag is S3's
//!   multipart ETag (MD5 of the parts' MD5s, `-N`). From then on it is the key's current
//!   version (served from the journal, listed, persisted by the persister as a multipart upload
//!   with the same part boundaries and checksums, so the bucket's ETag is the client's), and it
//!   is placed into function memory in the background, read back from the journal.
//! - **Abort** removes the upload's records. Uploads not completed within
//!   `tier.multipart_expiry` are aborted (like a lifecycle rule's AbortIncompleteMultipartUpload);
//!   at most `tier.max_multipart_uploads` are open at once (past that, a new upload is the
//!   bucket's).
//!
//! After a restart the journal gives back the open uploads with their parts, and completed
//! objects as dirty keys; parts no upload or object names are removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::Digest;

use crate::Tier;
use crate::error::{BoxError, TierError};
use crate::index::{CachedObject, KeyState, Layout};
use crate::journal::{AssembledPart, Journal, RecordHeader, RecordKind, Replayed, Reservation};
use crate::meta::ObjectMeta;
use crate::write::{BodyCheck, RESERVE_STEP, now_ms};

/// Upload ids the gateway issues start with this.
pub const UPLOAD_PREFIX: &str = "gw-";

/// Smallest part but the last (S3's limit).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Highest part number (S3's limit).
pub const MAX_PART_NUMBER: u32 = 10_000;

/// How often expired uploads are looked for.
const EXPIRY_SWEEP: Duration = Duration::from_secs(60);

/// A part the gateway holds.
#[derive(Debug)]
struct StoredPart {
    seq: u64,
    size: u64,
    etag: String,
    checksums: BTreeMap<String, String>,
    last_modified_ms: u64,
    space: Reservation,
}

/// An upload the gateway owns.
#[derive(Debug)]
struct Upload {
    bucket: String,
    key: String,
    meta: ObjectMeta,
    seq: u64,
    initiated_ms: u64,
    parts: BTreeMap<u32, StoredPart>,
    /// Moved to the bucket: its upload id there, and the `Forwarded` record saying so.
    forwarded: Option<(String, u64)>,
}

/// The open uploads the gateway owns, by id.
#[derive(Default)]
pub(crate) struct Uploads {
    map: Mutex<HashMap<String, Upload>>,
    /// Held while an upload is moved to the bucket.
    forwarding: tokio::sync::Mutex<()>,
}

/// Where a part of an upload the gateway owns goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartRoute {
    /// Into the journal ([`Tier::upload_part`]).
    Journal,
    /// To the bucket, as a part of its upload of this id (the upload was moved there).
    Bucket(String),
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number open.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A part as ListParts shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Part number.
    pub number: u32,
    /// Bytes.
    pub size: u64,
    /// MD5 (hex), the part's ETag.
    pub etag: String,
    /// When it was uploaded (ms since the epoch).
    pub last_modified_ms: u64,
    /// Checksums the client sent with it, by algorithm (base64).
    pub checksums: BTreeMap<String, String>,
}

/// An upload as ListMultipartUploads and ListParts show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// Key.
    pub key: String,
    /// Upload id.
    pub id: String,
    /// When it was created (ms since the epoch).
    pub initiated_ms: u64,
    /// Storage class asked for.
    pub storage_class: Option<String>,
}

/// A part named by CompleteMultipartUpload.
#[derive(Debug, Clone, Default)]
pub struct CompletedPartRef {
    /// Part number.
    pub number: u32,
    /// ETag as the client sent it (quotes allowed).
    pub etag: String,
    /// Checksums the client sent for it, by algorithm (base64).
    pub checksums: BTreeMap<String, String>,
}

fn no_such_upload(id: &str) -> TierError {
    TierError::NoSuchUpload(id.to_owned())
}

/// S3's multipart ETag: MD5 of the parts' MD5s, then `-<parts>`.
pub(crate) fn multipart_etag(part_md5s_hex: &[&str]) -> String {
    let mut h = md5::Md5::new();
    for p in part_md5s_hex {
        h.update(hex::decode(p).unwrap_or_default());
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s_hex.len())
}

/// What replay hands back: records of key writes (puts, deletes, assembled objects, each
/// with its parts' space), and the open uploads.
pub(crate) struct Replay {
    pub(crate) writes: Vec<Replayed>,
    uploads: HashMap<String, Upload>,
    pub(crate) orphans: Vec<u64>,
}

/// Sorts replayed records into key writes and open uploads; parts and uploads an assembled
/// object names go with it, parts nothing names are orphans (to remove).
pub(crate) fn split_replay(records: Vec<Replayed>) -> Replay {
    let mut writes = Vec::new();
    let mut uploads: HashMap<String, Upload> = HashMap::new();
    let mut parts: Vec<Replayed> = Vec::new();
    let mut owned: HashMap<u64, Reservation> = HashMap::new();
    let mut assembled_parts: HashSet<u64> = HashSet::new();
    let mut assembled_uploads: HashSet<String> = HashSet::new();
    for r in &records {
        if let RecordKind::Assembled { id, parts, .. } = &r.header.kind {
            assembled_uploads.insert(id.clone());
            assembled_parts.extend(parts.iter().map(|p| p.seq));
        }
    }
    let mut orphans = Vec::new();
    let mut forwards = Vec::new();
    for r in records {
        match &r.header.kind {
            RecordKind::Forwarded { id, bucket_id } => {
                forwards.push((id.clone(), bucket_id.clone(), r.header.seq));
            }
            RecordKind::Put | RecordKind::Delete | RecordKind::Assembled { .. } => writes.push(r),
            RecordKind::Upload { id } if assembled_uploads.contains(id) => {}
            RecordKind::Upload { id } => {
                uploads.insert(
                    id.clone(),
                    Upload {
                        bucket: r.header.bucket.clone(),
                        key: r.header.key.clone(),
                        meta: r.header.meta.clone(),
                        seq: r.header.seq,
                        initiated_ms: r.header.meta.last_modified_ms,
                        parts: BTreeMap::new(),
                        forwarded: None,
                    },
                );
            }
            RecordKind::Part { .. } if assembled_parts.contains(&r.header.seq) => {
                owned.insert(r.header.seq, r.space);
            }
            RecordKind::Part { .. } => parts.push(r),
        }
    }
    for w in &mut writes {
        if let RecordKind::Assembled { parts, .. } = &w.header.kind {
            for p in parts {
                if let Some(space) = owned.remove(&p.seq) {
                    w.space.merge(space);
                }
            }
        }
    }
    for (id, bucket_id, seq) in forwards {
        match uploads.get_mut(&id) {
            Some(u) => u.forwarded = Some((bucket_id, seq)),
            None => orphans.push(seq),
        }
    }
    for p in parts {
        let RecordKind::Part { id, number } = &p.header.kind else {
            continue;
        };
        match uploads.get_mut(id) {
            // Its parts are the bucket's; a crash kept these after the move.
            Some(u) if u.forwarded.is_some() => orphans.push(p.header.seq),
            Some(u) => {
                let old = u.parts.insert(
                    *number,
                    StoredPart {
                        seq: p.header.seq,
                        size: p.header.size,
                        etag: p.header.meta.etag.clone(),
                        checksums: p.header.meta.checksums.clone(),
                        last_modified_ms: p.header.meta.last_modified_ms,
                        space: p.space,
                    },
                );
                // Records come oldest first: a part sent again replaced the older one.
                if let Some(old) = old {
                    orphans.push(old.seq);
                }
            }
            None => orphans.push(p.header.seq),
        }
    }
    Replay {
        writes,
        uploads,
        orphans,
    }
}

impl Uploads {
    /// The open uploads found in the journal.
    pub(crate) fn restore(&self, replay: &mut Replay) {
        self.lock().extend(replay.uploads.drain());
    }
}

async fn remove_all(journal: &Journal, seqs: Vec<u64>) {
    for seq in seqs {
        if let Err(e) = journal.remove(seq).await {
            tracing::warn!(seq, error = %e, "cannot remove a multipart journal record");
        }
    }
}

impl Tier {
    /// Whether `id` is an upload id the gateway issued (the upload may be gone): `gw-` and 32
    /// lowercase hex digits, a form S3, SeaweedFS and s3s-fs do not issue.
    pub fn owns_upload(id: &str) -> bool {
        id.strip_prefix(UPLOAD_PREFIX).is_some_and(|rest| {
            rest.len() == 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }

    /// Opens a multipart upload of `bucket/key` owned by the gateway (written back), with the
    /// object's metadata: its id, or `None` when the tier does not take it (write-back off, or
    /// `max_multipart_uploads` are open) and the bucket should.
    pub async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        mut meta: ObjectMeta,
    ) -> Result<Option<String>, TierError> {
        if !self.writes_back(self.cfg.min_object_size.as_u64())
            || self.uploads.len() >= self.cfg.max_multipart_uploads
        {
            return Ok(None);
        }
        self.ensure_bucket(bucket).await?;
        let id = format!("{UPLOAD_PREFIX}{:032x}", rand::random::<u128>());
        meta.last_modified_ms = now_ms();
        let header = RecordHeader {
            seq: self.journal.next_seq(),
            kind: RecordKind::Upload { id: id.clone() },
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: 0,
            meta: meta.clone(),
        };
        self.journal.write_empty(&header).await?;
        self.uploads.lock().insert(
            id.clone(),
            Upload {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                initiated_ms: meta.last_modified_ms,
                meta,
                seq: header.seq,
                parts: BTreeMap::new(),
                forwarded: None,
            },
        );
        self.metrics
            .multipart_uploads
            .set(self.uploads.len() as i64);
        Ok(Some(id))
    }

    /// Where part `number` (`size` bytes) of upload `id` goes: the journal, or — when the
    /// journal has no room for it now — the bucket: the upload is moved there first (an upload
    /// opened in the bucket with the object's metadata, the parts journaled so far sent to it,
    /// a `Forwarded` record fsynced, their records removed), and every later call for it is
    /// the bucket's. Parts then go straight to the bucket instead of waiting for journal space
    /// they may never get (an upload larger than the journal). If the bucket cannot take the
    /// upload either, the part gets 503 SlowDown.
    pub async fn route_part(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
        size: u64,
    ) -> Result<PartRoute, TierError> {
        if let Some(to) = self.forwarded(id, bucket, key)? {
            return Ok(PartRoute::Bucket(to));
        }
        if self.journal.free() >= size {
            return Ok(PartRoute::Journal);
        }
        let _moving = self.uploads.forwarding.lock().await;
        if let Some(to) = self.forwarded(id, bucket, key)? {
            return Ok(PartRoute::Bucket(to));
        }
        let (meta, parts) = {
            let uploads = self.uploads.lock();
            let u = uploads.get(id).ok_or_else(|| no_such_upload(id))?;
            let parts: Vec<(u32, u64, u64)> =
                u.parts.iter().map(|(n, p)| (*n, p.seq, p.size)).collect();
            (u.meta.clone(), parts)
        };
        let full = |why: String| {
            tracing::warn!(
                bucket,
                key,
                id,
                why,
                "cannot move a multipart upload the journal cannot hold to the bucket"
            );
            self.no_room_for_part()
        };
        let to = self
            .persister
            .forward_upload(bucket, key, &meta, &parts)
            .await
            .map_err(|e| full(e.to_string()))?;
        let header = RecordHeader {
            seq: self.journal.next_seq(),
            kind: RecordKind::Forwarded {
                id: id.to_owned(),
                bucket_id: to.clone(),
            },
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: 0,
            meta: ObjectMeta::default(),
        };
        if let Err(e) = self.journal.write_empty(&header).await {
            self.persister.abort_upload(bucket, key, &to).await;
            return Err(e.into());
        }
        let moved: Vec<(u32, StoredPart)> = {
            let mut uploads = self.uploads.lock();
            match uploads.get_mut(id) {
                Some(u) => {
                    u.forwarded = Some((to.clone(), header.seq));
                    std::mem::take(&mut u.parts).into_iter().collect()
                }
                None => Vec::new(),
            }
        };
        // Parts that arrived while the others were sent go too.
        let sent: HashSet<u64> = parts.iter().map(|(_, seq, _)| *seq).collect();
        for (n, p) in &moved {
            if !sent.contains(&p.seq) {
                self.persister
                    .send_journaled_part(bucket, key, &to, *n, p.seq, p.size)
                    .await
                    .map_err(|e| full(e.to_string()))?;
            }
        }
        remove_all(&self.journal, moved.iter().map(|(_, p)| p.seq).collect()).await;
        self.metrics.multipart_forwarded.inc();
        tracing::info!(bucket, key, id, bucket_upload = %to, "multipart upload moved to the bucket: the journal cannot hold its next part");
        Ok(PartRoute::Bucket(to))
    }

    /// A part that neither the journal nor the bucket took: 503 SlowDown (counted), the
    /// client retries it.
    fn no_room_for_part(&self) -> TierError {
        self.metrics.slowdowns.inc();
        TierError::JournalFull {
            used: self.journal.used(),
            capacity: self.cfg.journal_capacity.as_u64(),
            waited: Duration::ZERO,
        }
    }

    /// The bucket's upload id of upload `id`, when it was moved to the bucket.
    pub fn forwarded(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<String>, TierError> {
        match self.uploads.lock().get(id) {
            Some(u) if u.bucket == bucket && u.key == key => {
                Ok(u.forwarded.as_ref().map(|(to, _)| to.clone()))
            }
            _ => Err(no_such_upload(id)),
        }
    }

    /// The bucket's upload ids of the uploads moved there (ListMultipartUploads shows them
    /// under the gateway's ids).
    pub fn forwarded_ids(&self) -> HashSet<String> {
        self.uploads
            .lock()
            .values()
            .filter_map(|u| u.forwarded.as_ref().map(|(to, _)| to.clone()))
            .collect()
    }

    /// Forgets upload `id`, moved to the bucket, once the bucket completed or aborted it.
    pub async fn forget_upload(&self, id: &str) {
        let removed = self.uploads.lock().remove(id);
        self.metrics
            .multipart_uploads
            .set(self.uploads.len() as i64);
        if let Some(u) = removed {
            let seqs = u
                .forwarded
                .iter()
                .map(|(_, seq)| *seq)
                .chain([u.seq])
                .collect();
            remove_all(&self.journal, seqs).await;
        }
    }

    fn check_upload(&self, id: &str, bucket: &str, key: &str) -> Result<(), TierError> {
        match self.uploads.lock().get(id) {
            Some(u) if u.bucket == bucket && u.key == key => Ok(()),
            _ => Err(no_such_upload(id)),
        }
    }

    /// Writes part `number` (`size` bytes of `body`) of upload `id` into the journal; answers
    /// once it is fsynced. Replaces an earlier part of the same number.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part<B>(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
        number: u32,
        size: u64,
        mut body: B,
        mut check: Box<dyn BodyCheck>,
    ) -> Result<PartInfo, TierError>
    where
        B: Stream<Item = Result<Bytes, BoxError>> + Unpin + Send,
    {
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(TierError::InvalidArgument(format!(
                "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
            )));
        }
        self.check_upload(id, bucket, key)?;
        let mut space = self
            .journal
            .reserve(size.min(RESERVE_STEP), self.cfg.journal_wait)
            .await
            .map_err(|e| self.journal_refusal(e))?;
        let mut writer = self.journal.writer().await?;
        let mut md5 = md5::Md5::new();
        let mut received = 0u64;
        let streamed: Result<(), TierError> = async {
            while let Some(frame) = body.next().await {
                let data = frame.map_err(TierError::Body)?;
                self.journal_frame(&data, &mut received, size, &mut space, &mut writer)
                    .await?;
                md5.update(&data);
                check.update(&data);
            }
            if received != size {
                return Err(TierError::BodyLength {
                    received,
                    declared: size,
                });
            }
            Ok(())
        }
        .await;
        let digest: [u8; 16] = md5.finalize().into();
        let checksums = match streamed.and_then(|()| check.finish(&digest)) {
            Ok(c) => c,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let meta = ObjectMeta {
            etag: hex::encode(digest),
            last_modified_ms: now_ms(),
            checksums,
            ..ObjectMeta::default()
        };
        let header = RecordHeader {
            seq: self.journal.next_seq(),
            kind: RecordKind::Part {
                id: id.to_owned(),
                number,
            },
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            meta: meta.clone(),
        };
        writer.commit(&self.journal, &header).await?;
        let part = StoredPart {
            seq: header.seq,
            size,
            etag: meta.etag.clone(),
            checksums: meta.checksums.clone(),
            last_modified_ms: meta.last_modified_ms,
            space,
        };
        let replaced = {
            let mut uploads = self.uploads.lock();
            match uploads.get_mut(id) {
                Some(u) if u.forwarded.is_none() => Ok(u.parts.insert(number, part)),
                // Moved to the bucket while this part was sent: it goes there too.
                Some(u) => Err((part, u.forwarded.as_ref().map(|(to, _)| to.clone()))),
                // Completed or aborted while the part was sent.
                None => Err((part, None)),
            }
        };
        match replaced {
            Ok(old) => remove_all(&self.journal, old.map(|p| p.seq).into_iter().collect()).await,
            Err((part, Some(to))) => {
                let sent = self
                    .persister
                    .send_journaled_part(bucket, key, &to, number, part.seq, part.size)
                    .await;
                remove_all(&self.journal, vec![part.seq]).await;
                if let Err(e) = sent {
                    tracing::warn!(bucket, key, id, error = %e, "a part for an upload moved to the bucket did not reach it");
                    return Err(self.no_room_for_part());
                }
            }
            Err((part, None)) => {
                remove_all(&self.journal, vec![part.seq]).await;
                return Err(no_such_upload(id));
            }
        }
        Ok(PartInfo {
            number,
            size,
            etag: meta.etag,
            last_modified_ms: meta.last_modified_ms,
            checksums: meta.checksums,
        })
    }

    /// Completes upload `id` with `parts`: validated as S3 does, then the object is the key's
    /// current version once its record is fsynced. Returns its metadata (ETag included).
    pub async fn complete_upload(
        self: &Arc<Self>,
        id: &str,
        bucket: &str,
        key: &str,
        parts: &[CompletedPartRef],
    ) -> Result<ObjectMeta, TierError> {
        self.check_upload(id, bucket, key)?;
        let _order = self.locks.lock(bucket, key).await;
        // Taken out under the key's commit lock: parts sent from now on find no upload.
        let upload = {
            let mut uploads = self.uploads.lock();
            let u = uploads.get(id).ok_or_else(|| no_such_upload(id))?;
            if u.forwarded.is_some() {
                // The bucket's to complete (the gateway routes it there).
                return Err(no_such_upload(id));
            }
            validate(u, parts)?;
            uploads.remove(id).ok_or_else(|| no_such_upload(id))?
        };
        let mut upload = upload;
        let mut used = Vec::with_capacity(parts.len());
        let mut space = Reservation::none();
        for p in parts {
            let stored = upload
                .parts
                .remove(&p.number)
                .ok_or_else(|| no_such_upload(id))?;
            used.push(stored);
        }
        let size: u64 = used.iter().map(|p| p.size).sum();
        let md5s: Vec<&str> = used.iter().map(|p| p.etag.as_str()).collect();
        let mut meta = upload.meta.clone();
        meta.etag = multipart_etag(&md5s);
        meta.last_modified_ms = now_ms();
        // Uniform parts (all but the last of one size, the last no larger): partNumber reads
        // can be answered from it; otherwise 0, "unknown boundaries".
        let first = used.first().map_or(0, |p| p.size);
        let uniform = used
            .split_last()
            .is_some_and(|(last, rest)| rest.iter().all(|p| p.size == first) && last.size <= first);
        meta.part_size = if uniform { first } else { 0 };
        let assembled: Vec<AssembledPart> = parts
            .iter()
            .zip(&used)
            .map(|(r, p)| AssembledPart {
                number: r.number,
                seq: p.seq,
                size: p.size,
                etag: p.etag.clone(),
                checksums: p.checksums.clone(),
            })
            .collect();
        let header = RecordHeader {
            seq: self.journal.next_seq(),
            kind: RecordKind::Assembled {
                id: id.to_owned(),
                upload_seq: upload.seq,
                parts: assembled,
            },
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            meta: meta.clone(),
        };
        if let Err(e) = self.journal.write_empty(&header).await {
            // Nothing changed: the upload stays open.
            for (r, p) in parts.iter().zip(used) {
                upload.parts.insert(r.number, p);
            }
            self.uploads.lock().insert(id.to_owned(), upload);
            return Err(e.into());
        }
        for p in used {
            space.merge(p.space);
        }
        // Parts not named are discarded, as S3 does.
        remove_all(
            &self.journal,
            upload.parts.values().map(|p| p.seq).collect(),
        )
        .await;
        self.metrics
            .multipart_uploads
            .set(self.uploads.len() as i64);
        let obj = Arc::new(CachedObject {
            id: rand::random(),
            size,
            meta: meta.clone(),
            layout: None,
            journal_seq: Some(header.seq),
        });
        match self
            .index
            .write(bucket, key, header.seq, KeyState::Object(obj.clone()))
        {
            Ok(Some(old)) => self.evict_unindexed(bucket, key, old.id, old.layout.as_ref()),
            Ok(None) | Err(KeyState::Deleted { .. }) => {}
            Err(KeyState::Object(lost)) => self.delete_chunks(lost.id, lost.layout.as_ref()),
        }
        self.persister.add(header, space);
        self.metrics.multipart_completed.inc();
        self.clone()
            .admit_from_journal(bucket.to_owned(), key.to_owned(), obj);
        Ok(meta)
    }

    /// Places a journal-backed object into function memory, read back from the journal (or
    /// the bucket, once persisted); it is served from memory once all of it is placed (if it is
    /// still the key's version).
    fn admit_from_journal(self: Arc<Self>, bucket: String, key: String, obj: Arc<CachedObject>) {
        if obj.journal_seq.is_none() || !self.admits(obj.size) {
            return;
        }
        let pieces =
            usize::try_from(Layout::piece_count(obj.size, self.piece_size)).unwrap_or(usize::MAX);
        let Some(functions) =
            self.placer
                .place(&bucket, &key, obj.id, obj.size, pieces, self.codec.total())
        else {
            self.metrics.admission_failures.inc();
            return;
        };
        let layout = Layout {
            codec: self.codec,
            piece_size: self.piece_size,
            functions,
        };
        tokio::spawn(async move {
            let mut placed = true;
            let mut off = 0u64;
            let mut index = 0usize;
            while off < obj.size && placed {
                let len = self.piece_size.min(obj.size - off);
                // From the journal, or the bucket if it was persisted meanwhile.
                placed = match self.read_span(&bucket, &key, &obj, off, len).await {
                    Ok(piece) => self.place_piece(obj.id, &layout, index, piece).await,
                    Err(e) => {
                        tracing::debug!(bucket, key, error = %e, "reading an object to admit it");
                        false
                    }
                };
                off += len;
                index += 1;
            }
            if placed && self.index.set_layout(&bucket, &key, obj.id, layout.clone()) {
                self.metrics.admitted.inc();
                return;
            }
            let current = matches!(
                self.index.get(&bucket, &key),
                Some(KeyState::Object(o)) if o.id == obj.id
            );
            // A failure of an object since replaced or deleted is no admission failure.
            if !placed && current {
                self.metrics.admission_failures.inc();
            }
            // Not placed, or the key changed meanwhile: free what was placed.
            self.delete_chunks(obj.id, Some(&layout));
            self.placer.evicted(&bucket, &key, obj.id);
        });
    }

    /// Aborts upload `id`: its parts are removed (in the bucket too, if it was moved there).
    pub async fn abort_upload(&self, id: &str, bucket: &str, key: &str) -> Result<(), TierError> {
        self.check_upload(id, bucket, key)?;
        let upload = self
            .uploads
            .lock()
            .remove(id)
            .ok_or_else(|| no_such_upload(id))?;
        self.metrics
            .multipart_uploads
            .set(self.uploads.len() as i64);
        if let Some((to, _)) = &upload.forwarded {
            self.persister.abort_upload(bucket, key, to).await;
        }
        let seqs = upload
            .parts
            .values()
            .map(|p| p.seq)
            .chain(upload.forwarded.iter().map(|(_, seq)| *seq))
            .chain([upload.seq])
            .collect();
        remove_all(&self.journal, seqs).await;
        Ok(())
    }

    /// Upload `id` and its parts, by number.
    pub fn list_parts(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
    ) -> Result<(UploadInfo, Vec<PartInfo>), TierError> {
        let uploads = self.uploads.lock();
        let u = uploads
            .get(id)
            .filter(|u| u.bucket == bucket && u.key == key)
            .ok_or_else(|| no_such_upload(id))?;
        let parts = u
            .parts
            .iter()
            .map(|(n, p)| PartInfo {
                number: *n,
                size: p.size,
                etag: p.etag.clone(),
                last_modified_ms: p.last_modified_ms,
                checksums: p.checksums.clone(),
            })
            .collect();
        Ok((info(id, u), parts))
    }

    /// The gateway's open uploads in `bucket` with keys under `prefix`, by key then id.
    pub fn uploads_under(&self, bucket: &str, prefix: &str) -> Vec<UploadInfo> {
        let mut out: Vec<UploadInfo> = self
            .uploads
            .lock()
            .iter()
            .filter(|(_, u)| u.bucket == bucket && u.key.starts_with(prefix))
            .map(|(id, u)| info(id, u))
            .collect();
        out.sort_by(|a, b| (&a.key, a.initiated_ms, &a.id).cmp(&(&b.key, b.initiated_ms, &b.id)));
        out
    }

    /// Aborts uploads open longer than `tier.multipart_expiry`, every minute.
    pub(crate) fn expire_uploads(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_SWEEP).await;
                let Some(t) = weak.upgrade() else { return };
                t.abort_expired(now_ms()).await;
            }
        });
    }

    pub(crate) async fn abort_expired(&self, now: u64) {
        let limit = u64::try_from(self.cfg.multipart_expiry.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<(String, String, String)> = self
            .uploads
            .lock()
            .iter()
            .filter(|(_, u)| now.saturating_sub(u.initiated_ms) > limit)
            .map(|(id, u)| (id.clone(), u.bucket.clone(), u.key.clone()))
            .collect();
        for (id, bucket, key) in expired {
            tracing::info!(bucket, key, id, "multipart upload expired: aborted");
            let _ = self.abort_upload(&id, &bucket, &key).await;
        }
    }
}

fn info(id: &str, u: &Upload) -> UploadInfo {
    UploadInfo {
        key: u.key.clone(),
        id: id.to_owned(),
        initiated_ms: u.initiated_ms,
        storage_class: u.meta.storage_class.clone(),
    }
}

/// Checks a CompleteMultipartUpload's part list against the upload, as S3 does.
fn validate(u: &Upload, parts: &[CompletedPartRef]) -> Result<(), TierError> {
    if parts.is_empty() {
        return Err(TierError::MalformedXml(
            "You must specify at least one part".into(),
        ));
    }
    let mut last = 0u32;
    for p in parts {
        if p.number <= last {
            return Err(TierError::InvalidPartOrder);
        }
        last = p.number;
    }
    for (i, p) in parts.iter().enumerate() {
        let Some(stored) = u.parts.get(&p.number) else {
            return Err(TierError::InvalidPart(format!(
                "part {} was not uploaded",
                p.number
            )));
        };
        if p.etag.trim().trim_matches('"') != stored.etag {
            return Err(TierError::InvalidPart(format!(
                "part {}: ETag {} does not match the part's {}",
                p.number, p.etag, stored.etag
            )));
        }
        for (alg, v) in &p.checksums {
            if stored.checksums.get(alg) != Some(v) {
                return Err(TierError::InvalidPart(format!(
                    "part {}: checksum {alg} does not match the one it was uploaded with",
                    p.number
                )));
            }
        }
        if i + 1 < parts.len() && stored.size < MIN_PART_SIZE {
            return Err(TierError::EntityTooSmall {
                part: p.number,
                size: stored.size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_told_apart() {
        assert!(Tier::owns_upload(&format!("gw-{:032x}", 7u128)));
        assert!(!Tier::owns_upload("gw-123"));
        assert!(!Tier::owns_upload(&format!("gw-{}", "G".repeat(32))));
        assert!(!Tier::owns_upload("2f1a9c0e-1b2c-4d5e-8f90-123456789abc"));
    }

    #[test]
    fn the_multipart_etag_is_s3s() {
        // Two parts "a" and "b": MD5(MD5("a") || MD5("b")) - 2.
        let a = hex::encode(md5::Md5::digest(b"a"));
        let b = hex::encode(md5::Md5::digest(b"b"));
        let mut both = md5::Md5::digest(b"a").to_vec();
        both.extend_from_slice(&md5::Md5::digest(b"b"));
        assert_eq!(
            multipart_etag(&[&a, &b]),
            format!("{}-2", hex::encode(md5::Md5::digest(&both)))
        );
    }

    fn upload(parts: &[(u32, u64, &str)]) -> Upload {
        Upload {
            bucket: "b".into(),
            key: "k".into(),
            meta: ObjectMeta::default(),
            seq: 1,
            initiated_ms: 0,
            forwarded: None,
            parts: parts
                .iter()
                .map(|(n, size, etag)| {
                    (
                        *n,
                        StoredPart {
                            seq: u64::from(*n) + 1,
                            size: *size,
                            etag: (*etag).to_owned(),
                            checksums: BTreeMap::new(),
                            last_modified_ms: 0,
                            space: Reservation::none(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn part(number: u32, etag: &str) -> CompletedPartRef {
        CompletedPartRef {
            number,
            etag: format!("\"{etag}\""),
            checksums: BTreeMap::new(),
        }
    }

    #[test]
    fn completions_are_validated_as_s3_does() {
        let u = upload(&[(1, 5 << 20, "aa"), (2, 1 << 20, "bb"), (3, 10, "cc")]);
        assert!(validate(&u, &[part(1, "aa"), part(3, "cc")]).is_ok());
        assert!(matches!(validate(&u, &[]), Err(TierError::MalformedXml(_))));
        assert!(matches!(
            validate(&u, &[part(3, "cc"), part(1, "aa")]),
            Err(TierError::InvalidPartOrder)
        ));
        assert!(matches!(
            validate(&u, &[part(1, "aa"), part(1, "aa")]),
            Err(TierError::InvalidPartOrder)
        ));
        assert!(matches!(
            validate(&u, &[part(1, "aa"), part(4, "dd")]),
            Err(TierError::InvalidPart(_))
        ));
        assert!(matches!(
            validate(&u, &[part(1, "zz")]),
            Err(TierError::InvalidPart(_))
        ));
        assert!(matches!(
            validate(&u, &[part(2, "bb"), part(3, "cc")]),
            Err(TierError::EntityTooSmall { part: 2, .. })
        ));
        let mut with_sum = part(1, "aa");
        with_sum.checksums.insert("CRC32".into(), "AAAA".into());
        assert!(matches!(
            validate(&u, &[with_sum]),
            Err(TierError::InvalidPart(_))
        ));
    }
}
