//! The write-back journal: acknowledged writes that the bucket does not hold yet.
//!
//! **Store.** One file per record in `<data_dir>/journal/`, written as `.<seq>.tmp`, fsynced,
//! renamed to `<seq:020>.rec`, and the directory fsynced, before the write is acknowledged.
//! A record is removed (and the directory fsynced) only after the bucket confirmed it. Plain
//! files rather than an embedded database: records are whole objects of megabytes to gigabytes
//! that are written once, read once or twice (persistence, reads after a restart) and deleted;
//! a file per record gives sequential I/O, O(1) release of space, and a crash model that is
//! easy to state (a record exists whole, after rename, or not at all).
//!
//! **Record format** (`<seq>.rec`):
//!
//! ```text
//! [data: size bytes][header: postcard][header_len: u32 LE][crc32c(header): u32 LE]["GWJ1"]
//! ```
//!
//! The header ([`RecordHeader`]) is written last because it carries what is known only at the
//! end of the body (ETag, checksums). Data integrity end to end is checked by the bucket: the
//! persisted PUT carries the MD5 of the data (Content-MD5).
//!
//! **Sequence numbers** are taken at commit, not when a write starts: a record's `seq` orders it
//! among the key's writes by the time it became durable (last writer wins, as in S3). Unfinished
//! records are `.<n>.tmp` files named by a counter of their own.
//!
//! **Dead letters.** A record the bucket refused for good (a 4xx such as AccessDenied,
//! InvalidRequest, NoSuchBucket) is marked by a small file `<seq:020>.dead` next to it (the
//! refusal, as text; written whole with fsync + rename). The record stays: it is still served
//! and can be retried (the marker is removed) or discarded (both files go) by an operator.
//!
//! **Space.** The journal holds at most `capacity` bytes of data. A writer reserves space as its
//! data arrives ([`Journal::reserve`], then [`Journal::grow`]), waiting a bounded time for it
//! (then the caller answers 503 SlowDown), so a request never holds space for bytes it has not
//! sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::meta::ObjectMeta;

const MAGIC: &[u8; 4] = b"GWJ1";
const FOOTER_LEN: u64 = 12;
/// Space is accounted in units of this many bytes.
const UNIT: u64 = 64 * 1024;
/// Largest header accepted when reading a record back.
const MAX_HEADER: u32 = 1 << 20;

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Local disk I/O failed.
    #[error("journal I/O on {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// No space freed up in time.
    #[error("the write-back journal is full ({used} of {capacity} bytes dirty); waited {waited:?}")]
    Full {
        /// Bytes in use.
        used: u64,
        /// Capacity.
        capacity: u64,
        /// Time waited.
        waited: Duration,
    },
    /// The object can never fit.
    #[error("object of {size} bytes exceeds the journal capacity of {capacity} bytes")]
    TooLarge {
        /// Object size.
        size: u64,
        /// Capacity.
        capacity: u64,
    },
    /// A record on disk is damaged.
    #[error("journal record {path} is damaged: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a record says. (New kinds go at the end: records on disk name theirs by index.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum RecordKind {
    /// An object: the data precedes the header.
    Put,
    /// A deletion of the key.
    Delete,
    /// A multipart upload the gateway owns was created: no data; `meta` is the object's.
    Upload {
        /// Upload id.
        id: String,
    },
    /// One part of upload `id`: the data is the part; `meta.etag` is its MD5 (hex) and
    /// `meta.checksums` the checksums the client sent with it.
    Part {
        /// Upload id.
        id: String,
        /// Part number.
        number: u32,
    },
    /// The object completed from upload `id`: no data of its own, its bytes are those of
    /// `parts` (part records), in order; `size` is their sum. Removing it removes them, and
    /// the upload's record `upload_seq`.
    Assembled {
        /// Upload id.
        id: String,
        /// The upload's record.
        upload_seq: u64,
        /// The parts, in order.
        parts: Vec<AssembledPart>,
    },
    /// Upload `id` was moved to the bucket, as its upload `bucket_id` (the journal could not
    /// hold its next part): no data; its parts are the bucket's from now on.
    Forwarded {
        /// Upload id (the gateway's).
        id: String,
        /// The bucket's upload id.
        bucket_id: String,
    },
}

/// A part of an assembled object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssembledPart {
    /// Part number.
    pub number: u32,
    /// Its record.
    pub seq: u64,
    /// Bytes.
    pub size: u64,
    /// MD5 (hex).
    pub etag: String,
    /// Checksums the client sent with it, by algorithm (base64).
    pub checksums: std::collections::BTreeMap<String, String>,
}

/// The header of a record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordHeader {
    /// Journal sequence number: later writes of a key have larger numbers.
    pub seq: u64,
    /// Put or delete.
    pub kind: RecordKind,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Data length (0 for deletes).
    pub size: u64,
    /// Object metadata (Put).
    pub meta: ObjectMeta,
}

impl RecordHeader {
    /// Bytes of data in the record's own file (an assembled object's are in its parts').
    pub fn data_len(&self) -> u64 {
        match self.kind {
            RecordKind::Put | RecordKind::Part { .. } => self.size,
            RecordKind::Delete
            | RecordKind::Upload { .. }
            | RecordKind::Assembled { .. }
            | RecordKind::Forwarded { .. } => 0,
        }
    }
}

/// Where an assembled record's bytes are: its parts' records and sizes, and the upload's
/// record.
#[derive(Debug, Clone)]
struct Assembly {
    parts: Vec<(u64, u64)>,
    upload_seq: u64,
}

impl Assembly {
    fn of(h: &RecordHeader) -> Option<Self> {
        match &h.kind {
            RecordKind::Assembled {
                upload_seq, parts, ..
            } => Some(Self {
                parts: parts.iter().map(|p| (p.seq, p.size)).collect(),
                upload_seq: *upload_seq,
            }),
            _ => None,
        }
    }
}

/// The journal directory.
pub struct Journal {
    dir: PathBuf,
    next_seq: AtomicU64,
    next_tmp: AtomicU64,
    capacity: u64,
    space: Arc<Semaphore>,
    /// Assembled records (by seq): where their bytes are.
    assembled: std::sync::Mutex<std::collections::HashMap<u64, Assembly>>,
}

/// Space reserved for one record, returned when the record is released.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Nothing reserved (a record without data).
    pub fn none() -> Self {
        Self {
            permit: None,
            bytes: 0,
        }
    }

    /// Takes over `other`'s space.
    pub fn merge(&mut self, mut other: Reservation) {
        if let Some(p) = other.permit.take() {
            match &mut self.permit {
                Some(mine) => mine.merge(p),
                None => self.permit = Some(p),
            }
        }
        self.bytes += other.bytes;
    }
}

/// A record found when the journal was opened.
#[derive(Debug)]
pub struct Replayed {
    /// Its header.
    pub header: RecordHeader,
    /// The space it holds.
    pub space: Reservation,
    /// Why the bucket refused it, when it is a dead letter.
    pub dead: Option<String>,
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
}

fn record_name(seq: u64) -> String {
    format!("{seq:020}.rec")
}

impl Journal {
    /// Opens (creating) the journal in `dir` and reads back every complete record, oldest
    /// first, each with the space it holds and its dead-letter mark. Leftover temporary files
    /// of unfinished writes, and marks whose record is gone, are removed.
    pub async fn open(dir: &Path, capacity: u64) -> Result<(Self, Vec<Replayed>), JournalError> {
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        let mut records = Vec::new();
        let mut marks = std::collections::HashMap::new();
        let mut entries = tokio::fs::read_dir(dir).await.map_err(io(dir))?;
        while let Some(e) = entries.next_entry().await.map_err(io(dir))? {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let path = e.path();
            if name.starts_with('.') && name.ends_with(".tmp") {
                tokio::fs::remove_file(&path).await.map_err(io(&path))?;
                continue;
            }
            if name.ends_with(".rec") {
                records.push(read_header(&path).await?);
            } else if let Some(seq) = name
                .strip_suffix(".dead")
                .and_then(|n| n.parse::<u64>().ok())
            {
                let why = tokio::fs::read_to_string(&path).await.map_err(io(&path))?;
                marks.insert(seq, (path, why));
            }
        }
        records.sort_by_key(|h| h.seq);
        let total_units: u64 = records.iter().map(|h| u64::from(units(h.data_len()))).sum();
        let cap_units = u64::from(units(capacity));
        if total_units > cap_units {
            tracing::warn!(
                used = total_units * UNIT,
                capacity,
                "journal holds more than its capacity (capacity lowered?); new writes wait"
            );
        }
        // Replayed records take their space from the same pool, so releasing them frees it.
        let space = Arc::new(Semaphore::new(
            usize::try_from(cap_units.max(total_units)).unwrap_or(usize::MAX),
        ));
        let mut replayed = Vec::with_capacity(records.len());
        for h in records {
            let permit = space
                .clone()
                .try_acquire_many_owned(units(h.data_len()))
                .map_err(|_| JournalError::Corrupt {
                    path: dir.to_owned(),
                    reason: "journal space accounting".into(),
                })?;
            let dead = marks.remove(&h.seq).map(|(_, why)| why);
            replayed.push(Replayed {
                space: Reservation {
                    permit: Some(permit),
                    bytes: h.data_len(),
                },
                header: h,
                dead,
            });
        }
        for (path, _) in marks.into_values() {
            tokio::fs::remove_file(&path).await.map_err(io(&path))?;
        }
        let next = replayed.last().map_or(1, |r| r.header.seq + 1);
        let assembled = replayed
            .iter()
            .filter_map(|r| Some((r.header.seq, Assembly::of(&r.header)?)))
            .collect();
        let journal = Self {
            dir: dir.to_owned(),
            next_seq: AtomicU64::new(next),
            next_tmp: AtomicU64::new(1),
            capacity,
            space,
            assembled: std::sync::Mutex::new(assembled),
        };
        sync_dir(dir).await?;
        Ok((journal, replayed))
    }

    /// Bytes of data currently reserved or held.
    pub fn used(&self) -> u64 {
        let free = self.space.available_permits() as u64;
        u64::from(units(self.capacity)).saturating_sub(free) * UNIT
    }

    /// Bytes of data that can be reserved now.
    pub fn free(&self) -> u64 {
        self.space.available_permits() as u64 * UNIT
    }

    /// Whether an object of `size` bytes can ever be journaled.
    pub fn fits(&self, size: u64) -> bool {
        units(size) <= units(self.capacity)
    }

    /// Reserves space for `size` bytes, waiting at most `wait`.
    pub async fn reserve(&self, size: u64, wait: Duration) -> Result<Reservation, JournalError> {
        let mut r = Reservation {
            permit: None,
            bytes: 0,
        };
        self.grow(&mut r, size, wait).await?;
        Ok(r)
    }

    /// Grows `r` to hold `size` bytes (a no-op if it does), waiting at most `wait` for the
    /// difference. On failure `r` keeps what it had.
    pub async fn grow(
        &self,
        r: &mut Reservation,
        size: u64,
        wait: Duration,
    ) -> Result<(), JournalError> {
        if !self.fits(size) {
            return Err(JournalError::TooLarge {
                size,
                capacity: self.capacity,
            });
        }
        let held = r.permit.as_ref().map_or(0, |p| p.num_permits());
        let more = (units(size) as usize).saturating_sub(held);
        if more > 0 {
            let more = u32::try_from(more).unwrap_or(u32::MAX);
            let acquire = self.space.clone().acquire_many_owned(more);
            let permit = match tokio::time::timeout(wait, acquire).await {
                Ok(Ok(p)) => p,
                _ => {
                    return Err(JournalError::Full {
                        used: self.used(),
                        capacity: self.capacity,
                        waited: wait,
                    });
                }
            };
            match &mut r.permit {
                Some(p) => p.merge(permit),
                None => r.permit = Some(permit),
            }
        }
        r.bytes = r.bytes.max(size);
        Ok(())
    }

    /// The next sequence number: take it when the record is committed (it orders the record
    /// among the key's writes).
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Path of record `seq`.
    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(record_name(seq))
    }

    fn dead_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.dead"))
    }

    /// Starts writing a record's data; its sequence number is given at commit.
    pub async fn writer(&self) -> Result<RecordWriter, JournalError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{n}.tmp"));
        let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(RecordWriter {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            dir: self.dir.clone(),
            written: 0,
        })
    }

    /// Writes a record without data (a delete), durably.
    pub async fn write_empty(&self, header: &RecordHeader) -> Result<(), JournalError> {
        let w = self.writer().await?;
        w.commit(self, header).await
    }

    fn assemblies(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Assembly>> {
        self.assembled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes record `seq` (and its dead-letter mark) durably, after the bucket confirmed it
    /// or when it is superseded or discarded; an assembled record takes its parts' records and
    /// its upload's record with it.
    pub async fn remove(&self, seq: u64) -> Result<(), JournalError> {
        let assembly = self.assemblies().get(&seq).cloned();
        let mut paths = vec![self.path(seq), self.dead_path(seq)];
        if let Some(a) = &assembly {
            paths.extend(a.parts.iter().map(|(s, _)| self.path(*s)));
            paths.push(self.path(a.upload_seq));
        }
        let mut removed = false;
        for path in paths {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        if removed {
            sync_dir(&self.dir).await?;
        }
        if assembly.is_some() {
            self.assemblies().remove(&seq);
        }
        Ok(())
    }

    /// `len` bytes at `offset` of record `seq`'s object (an assembled record's from its
    /// parts).
    pub async fn read_at(
        &self,
        seq: u64,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, JournalError> {
        let spans: Vec<(u64, u64, u64)> = match self.assemblies().get(&seq) {
            // (record, offset in it, length)
            Some(a) => {
                let mut out = Vec::new();
                let (mut start, end) = (offset, offset + len);
                let mut base = 0u64;
                for &(part, size) in &a.parts {
                    let (lo, hi) = (base, base + size);
                    if start < hi && start < end {
                        let take = hi.min(end) - start;
                        out.push((part, start - lo, take));
                        start += take;
                    }
                    base = hi;
                }
                out
            }
            None => vec![(seq, offset, len)],
        };
        let mut buf = bytes::BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        for (rec, off, n) in spans {
            let mut f = self.open_data(rec, off).await?;
            let at = buf.len();
            buf.resize(at + usize::try_from(n).unwrap_or(0), 0);
            let path = self.path(rec);
            f.read_exact(&mut buf[at..]).await.map_err(io(&path))?;
        }
        if buf.len() as u64 != len {
            return Err(JournalError::Corrupt {
                path: self.path(seq),
                reason: format!("{} bytes at {offset} asked, {} held", len, buf.len()),
            });
        }
        Ok(buf.freeze())
    }

    /// Marks record `seq` a dead letter, durably, with the bucket's refusal.
    pub async fn mark_dead(&self, seq: u64, why: &str) -> Result<(), JournalError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{n}.tmp"));
        let dest = self.dead_path(seq);
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        f.write_all(why.as_bytes()).await.map_err(io(&tmp))?;
        f.sync_all().await.map_err(io(&tmp))?;
        drop(f);
        tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
        sync_dir(&self.dir).await
    }

    /// Removes the dead-letter mark of record `seq` (it is retried), durably.
    pub async fn clear_dead(&self, seq: u64) -> Result<(), JournalError> {
        let path = self.dead_path(seq);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => sync_dir(&self.dir).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Opens record `seq`'s data for reading, positioned at `offset`.
    pub async fn open_data(&self, seq: u64, offset: u64) -> Result<tokio::fs::File, JournalError> {
        let path = self.path(seq);
        let mut f = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        if offset > 0 {
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(io(&path))?;
        }
        Ok(f)
    }
}

/// Writes one record: data first, then [`RecordWriter::commit`] with the header.
pub struct RecordWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    tmp: PathBuf,
    dir: PathBuf,
    written: u64,
}

impl RecordWriter {
    /// Appends data.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), JournalError> {
        self.file.write_all(data).await.map_err(io(&self.tmp))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Appends the header and footer, fsyncs, renames into place as record `header.seq` and
    /// fsyncs the directory: from here on the record survives a crash. On failure the
    /// temporary file is removed.
    pub async fn commit(
        self,
        journal: &Journal,
        header: &RecordHeader,
    ) -> Result<(), JournalError> {
        let tmp = self.tmp.clone();
        let r = self.finish(&journal.path(header.seq), header).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        } else if let Some(a) = Assembly::of(header) {
            journal.assemblies().insert(header.seq, a);
        }
        r
    }

    async fn finish(mut self, dest: &Path, header: &RecordHeader) -> Result<(), JournalError> {
        if header.data_len() != self.written {
            return Err(JournalError::Corrupt {
                path: self.tmp.clone(),
                reason: format!(
                    "header says {} bytes, {} written",
                    header.data_len(),
                    self.written
                ),
            });
        }
        let bytes = postcard::to_allocvec(header).map_err(|e| JournalError::Corrupt {
            path: self.tmp.clone(),
            reason: format!("cannot encode header: {e}"),
        })?;
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.file.write_all(&bytes).await.map_err(io(&self.tmp))?;
        self.file
            .write_all(&len.to_le_bytes())
            .await
            .map_err(io(&self.tmp))?;
        self.file
            .write_all(&crc32c::crc32c(&bytes).to_le_bytes())
            .await
            .map_err(io(&self.tmp))?;
        self.file.write_all(MAGIC).await.map_err(io(&self.tmp))?;
        self.file.flush().await.map_err(io(&self.tmp))?;
        self.file
            .get_ref()
            .sync_all()
            .await
            .map_err(io(&self.tmp))?;
        tokio::fs::rename(&self.tmp, dest).await.map_err(io(dest))?;
        sync_dir(&self.dir).await
    }

    /// Abandons the record (its temporary file is removed).
    pub async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

async fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| JournalError::Io {
            path: dir.to_owned(),
            source: std::io::Error::other(e),
        })?
        .map_err(io(dir))
}

/// Reads a record's header from its footer.
pub async fn read_header(path: &Path) -> Result<RecordHeader, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(io(path))?;
    let len = f.metadata().await.map_err(io(path))?.len();
    if len < FOOTER_LEN {
        return Err(corrupt(format!("{len} bytes is shorter than a footer")));
    }
    f.seek(std::io::SeekFrom::Start(len - FOOTER_LEN))
        .await
        .map_err(io(path))?;
    let mut footer = [0u8; FOOTER_LEN as usize];
    f.read_exact(&mut footer).await.map_err(io(path))?;
    if &footer[8..12] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let hlen = u32::from_le_bytes(footer[0..4].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(footer[4..8].try_into().unwrap_or_default());
    if hlen > MAX_HEADER || u64::from(hlen) + FOOTER_LEN > len {
        return Err(corrupt(format!("header length {hlen} out of range")));
    }
    f.seek(std::io::SeekFrom::Start(len - FOOTER_LEN - u64::from(hlen)))
        .await
        .map_err(io(path))?;
    let mut hbytes = vec![0u8; hlen as usize];
    f.read_exact(&mut hbytes).await.map_err(io(path))?;
    if crc32c::crc32c(&hbytes) != crc {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let header: RecordHeader =
        postcard::from_bytes(&hbytes).map_err(|e| corrupt(format!("header: {e}")))?;
    if header.data_len() + u64::from(hlen) + FOOTER_LEN != len {
        return Err(corrupt(format!(
            "file length {len} does not match the header"
        )));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, key: &str, size: u64) -> RecordHeader {
        RecordHeader {
            seq,
            kind: RecordKind::Put,
            bucket: "b".into(),
            key: key.into(),
            size,
            meta: ObjectMeta::default(),
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (j, old) = Journal::open(dir.path(), 1 << 30).await.unwrap();
        assert!(old.is_empty());
        for key in ["a", "b"] {
            let mut w = j.writer().await.unwrap();
            w.write(key.as_bytes()).await.unwrap();
            w.write(b"-data").await.unwrap();
            let seq = j.next_seq();
            w.commit(&j, &header(seq, key, 1 + 5)).await.unwrap();
        }
        let seq = j.next_seq();
        let mut del = header(seq, "a", 0);
        del.kind = RecordKind::Delete;
        j.write_empty(&del).await.unwrap();
        // an unfinished write
        let mut w = j.writer().await.unwrap();
        w.write(b"partial").await.unwrap();
        drop(w);
        drop(j);

        let (j, recs) = Journal::open(dir.path(), 1 << 30).await.unwrap();
        let keys: Vec<_> = recs
            .iter()
            .map(|r| (r.header.seq, r.header.key.as_str(), r.header.kind.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                (1, "a", RecordKind::Put),
                (2, "b", RecordKind::Put),
                (3, "a", RecordKind::Delete)
            ]
        );
        assert_eq!(j.next_seq(), 4, "sequence continues after the last record");
        let mut data = String::new();
        j.open_data(2, 0)
            .await
            .unwrap()
            .take(6)
            .read_to_string(&mut data)
            .await
            .unwrap();
        assert_eq!(data, "b-data");
        assert!(
            !std::fs::read_dir(dir.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
            "leftover temporary files are removed"
        );
        j.remove(1).await.unwrap();
        j.remove(1).await.unwrap();
        let (_, recs) = Journal::open(dir.path(), 1 << 30).await.unwrap();
        assert_eq!(recs.len(), 2);
    }

    #[tokio::test]
    async fn space_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 1 << 20).await.unwrap();
        assert!(matches!(
            j.reserve(2 << 20, Duration::from_millis(10)).await,
            Err(JournalError::TooLarge { .. })
        ));
        let r = j
            .reserve(700 << 10, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(matches!(
            j.reserve(700 << 10, Duration::from_millis(20)).await,
            Err(JournalError::Full { .. })
        ));
        drop(r);
        j.reserve(700 << 10, Duration::from_millis(20))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn reservations_grow_with_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 1 << 20).await.unwrap();
        let wait = Duration::from_millis(20);
        // a writer declaring 900 KiB holds only what it asked for so far
        let mut big = j.reserve(64 << 10, wait).await.unwrap();
        let other = j.reserve(700 << 10, wait).await.unwrap();
        assert_eq!(j.used(), (64 + 704) << 10);
        // growing past the free space waits, fails, and keeps what it had
        assert!(matches!(
            j.grow(&mut big, 900 << 10, wait).await,
            Err(JournalError::Full { .. })
        ));
        assert_eq!(big.bytes(), 64 << 10);
        drop(other);
        j.grow(&mut big, 900 << 10, wait).await.unwrap();
        assert_eq!(big.bytes(), 900 << 10);
        j.grow(&mut big, 100, wait).await.unwrap();
        assert_eq!(big.bytes(), 900 << 10, "growing never shrinks");
        drop(big);
        assert_eq!(j.used(), 0);
    }

    #[tokio::test]
    async fn dead_marks_survive_reopen_and_go_with_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 1 << 30).await.unwrap();
        for seq in [1, 2] {
            let mut w = j.writer().await.unwrap();
            w.write(b"x").await.unwrap();
            w.commit(&j, &header(seq, "k", 1)).await.unwrap();
        }
        j.mark_dead(1, "InvalidRequest: no").await.unwrap();
        j.mark_dead(2, "AccessDenied").await.unwrap();
        j.clear_dead(2).await.unwrap();
        drop(j);
        let (j, recs) = Journal::open(dir.path(), 1 << 30).await.unwrap();
        let dead: Vec<_> = recs
            .iter()
            .map(|r| (r.header.seq, r.dead.clone()))
            .collect();
        assert_eq!(
            dead,
            [(1, Some("InvalidRequest: no".to_owned())), (2, None)]
        );
        j.remove(1).await.unwrap();
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("00000000000000000001")),
            "record and mark are both gone"
        );
    }

    #[tokio::test]
    async fn damaged_records_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 1 << 30).await.unwrap();
        let mut w = j.writer().await.unwrap();
        w.write(b"xyz").await.unwrap();
        w.commit(&j, &header(1, "k", 3)).await.unwrap();
        let path = j.path(1);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 13] ^= 0xff; // last header byte
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            read_header(&path).await,
            Err(JournalError::Corrupt { .. })
        ));
    }
}
