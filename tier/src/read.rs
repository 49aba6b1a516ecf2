//! Reads: hits streamed piece by piece from function memory (first-d, the next piece fetched
//! while the current one is sent), dirty objects without chunks from the journal, and misses
//! streamed from the bucket while being admitted.

use crate::EvictedBy;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;

use super::Tier;
use super::body::{self, BodySender, Fill, TierBody};
use super::chunks::{get_piece, get_span, put_piece};
use super::error::{BackendError, TierError};
use super::index::{CachedObject, Layout};
use super::meta::ObjectMeta;

/// A byte range of an object, `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// How an admission ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// All of the object was placed.
    Placed,
    /// Its bytes stopped coming before the end.
    Short,
    /// A piece could not be placed.
    Unplaced,
}

/// Journal reads are this large.
const JOURNAL_READ: usize = 1 << 20;
/// Frames buffered between a miss's client stream and its admission.
const ADMISSION_FRAMES: usize = 512;

impl Tier {
    /// Streams `range` of an object the tier holds (from [`Tier::lookup`]): from function
    /// memory, or from the journal for a write whose chunks could not be placed. Counted as a
    /// hit or a journal read.
    pub fn read(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        obj: Arc<CachedObject>,
        range: Range,
    ) -> TierBody {
        if obj.layout.is_some() {
            self.metrics.hits.inc();
        } else {
            self.metrics.journal_reads.inc();
        }
        let (tx, body) = body::channel(range.len());
        let tier = self.clone();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        tokio::spawn(async move {
            let r = match obj.layout.clone() {
                Some(layout) => {
                    tier.send_from_memory(&bucket, &key, &obj, &layout, range, &tx)
                        .await
                }
                None => tier.send_fallback(&bucket, &key, &obj, range, &tx).await,
            };
            if let Err(e) = r {
                tracing::warn!(bucket, key, error = %e, "read failed mid-stream");
                let _ = tx.send(Err(e)).await;
            }
        });
        body
    }

    async fn send_from_memory(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        obj: &Arc<CachedObject>,
        layout: &Layout,
        range: Range,
        tx: &BodySender,
    ) -> Result<(), TierError> {
        if range.is_empty() {
            return Ok(());
        }
        let ps = layout.piece_size;
        let first = range.start / ps;
        let last = (range.end - 1) / ps;
        let fetch = |i: u64| {
            let store = self.chunks.clone();
            let (off, len) = layout.piece_span(obj.size, i);
            let fs = layout.functions[usize::try_from(i).unwrap_or(usize::MAX)].clone();
            let codec = layout.codec;
            let id = obj.id;
            let timeout = self.cfg.chunk_timeout;
            // The part of the piece the range wants: a piece the range covers in part is read
            // from the data chunks that hold that part.
            let (lo, hi) = (range.start.max(off) - off, range.end.min(off + len) - off);
            async move {
                let (index, piece_len) = (
                    usize::try_from(i).unwrap_or(usize::MAX),
                    usize::try_from(len).unwrap_or(usize::MAX),
                );
                let r = if lo == 0 && hi == len {
                    get_piece(&store, codec, id, index, piece_len, &fs, timeout).await
                } else {
                    let span = usize::try_from(lo).unwrap_or(0)..usize::try_from(hi).unwrap_or(0);
                    get_span(&store, codec, id, index, piece_len, &fs, timeout, span).await
                };
                (i, off, len, r)
            }
        };
        let mut fetches = FuturesOrdered::new();
        let mut next = first;
        while next <= last && fetches.len() < body::DEPTH {
            fetches.push_back(fetch(next));
            next += 1;
        }
        let mut broken = false;
        while let Some((i, off, len, r)) = fetches.next().await {
            if next <= last {
                fetches.push_back(fetch(next));
                next += 1;
            }
            let (parts, start, from_memory) = match r {
                Ok(p) => {
                    if p.decoded {
                        self.metrics.decodes.inc();
                    } else {
                        self.metrics.direct_pieces.inc();
                    }
                    (p.parts, p.offset as u64, true)
                }
                Err(e) => {
                    tracing::warn!(bucket, key, piece = i, error = %e, "piece unreadable from memory; reading it from the journal or the bucket");
                    broken = true;
                    let span =
                        self.read_span(bucket, key, obj, off, len)
                            .await
                            .map_err(|cause| TierError::Unreadable {
                                bucket: bucket.to_owned(),
                                key: key.to_owned(),
                                piece: i,
                                cause: Box::new(cause),
                            })?;
                    (vec![span], 0, false)
                }
            };
            // Send the requested part of the piece, part by part (no copy).
            let (lo, hi) = (range.start.max(off) - off, range.end.min(off + len) - off);
            let mut pos = start;
            for part in parts {
                let (p0, p1) = (pos, pos + part.len() as u64);
                pos = p1;
                let (a, b) = (lo.max(p0), hi.min(p1));
                if a >= b {
                    continue;
                }
                let slice = part.slice(
                    usize::try_from(a - p0).unwrap_or(0)..usize::try_from(b - p0).unwrap_or(0),
                );
                if from_memory {
                    self.metrics.bytes_from_tier.inc_by(slice.len() as u64);
                } else {
                    self.metrics.bytes_from_bucket.inc_by(slice.len() as u64);
                }
                if tx.send(Ok(slice)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if broken {
            self.evict(bucket, key, obj.id, EvictedBy::Tier);
        } else {
            let moves = self.placer.on_read(bucket, key, obj.id, &layout.functions);
            if !moves.is_empty() {
                self.clone()
                    .relocate(bucket.to_owned(), key.to_owned(), obj.clone(), moves);
            }
        }
        Ok(())
    }

    /// Bytes `off..off+len` of an object from its journal record, or else the bucket.
    pub(crate) async fn read_span(
        &self,
        bucket: &str,
        key: &str,
        obj: &CachedObject,
        off: u64,
        len: u64,
    ) -> Result<Bytes, TierError> {
        if let Some(seq) = obj.journal_seq {
            return match self.journal.read_at(seq, off, len).await {
                Ok(data) => Ok(data),
                // Persisted while this read went on: the record left the journal because the
                // bucket has the object now.
                Err(super::journal::JournalError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    self.bucket_range(bucket, key, obj, off, len).await
                }
                Err(e) => Err(e.into()),
            };
        }
        self.bucket_range(bucket, key, obj, off, len).await
    }

    /// `len` bytes at `off` of the bucket's copy of `obj` (If-Match its ETag, so a newer
    /// version written behind the tier's back is never mixed in).
    pub(super) async fn bucket_range(
        &self,
        bucket: &str,
        key: &str,
        obj: &CachedObject,
        off: u64,
        len: u64,
    ) -> Result<Bytes, TierError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(crate::backend::sdk_key(key))
            .range(format!("bytes={}-{}", off, off + len - 1))
            .if_match(format!("\"{}\"", obj.meta.etag))
            .send()
            .await
            .map_err(|e| BackendError::from_sdk(&e))?;
        let invalid = |message: String| {
            TierError::Backend(BackendError {
                failure: super::error::BackendFailure::InvalidResponse,
                status: None,
                code: None,
                message,
                headers: Vec::new(),
            })
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| invalid(format!("reading the bucket's body: {e}")))?
            .into_bytes();
        if data.len() as u64 != len {
            return Err(invalid(format!(
                "bucket returned {} bytes, expected {len}",
                data.len()
            )));
        }
        Ok(data)
    }

    /// An object without chunks: from its journal record (dirty) in large reads.
    async fn send_fallback(
        &self,
        bucket: &str,
        key: &str,
        obj: &CachedObject,
        range: Range,
        tx: &BodySender,
    ) -> Result<(), TierError> {
        let mut pos = range.start;
        while pos < range.end {
            let n = (range.end - pos).min(JOURNAL_READ as u64);
            let data = self.read_span(bucket, key, obj, pos, n).await?;
            if obj.journal_seq.is_some() {
                self.metrics.bytes_from_journal.inc_by(n);
            } else {
                self.metrics.bytes_from_bucket.inc_by(n);
            }
            pos += n;
            if tx.send(Ok(data)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// A GET the tier could not serve, answered from the bucket: counted as a miss, and when
    /// it reads the whole object (`whole`) of a size the tier admits, `body` is cut into
    /// pieces and placed in function memory while it streams to the client. The gateway never
    /// holds the whole object, and the client is never slowed down: if admission falls behind,
    /// it is abandoned and a background fill reads the object again ([`crate::background`]).
    pub fn fill<B>(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        size: u64,
        meta: ObjectMeta,
        body: B,
        whole: bool,
    ) -> Fill<B> {
        self.metrics.misses.inc();
        self.metrics.bytes_from_bucket.inc_by(size);
        let pass = |body| Fill {
            inner: body,
            tx: None,
            remaining: size,
        };
        if !whole || !self.admits(size) {
            return pass(body);
        }
        let ticket = self.index.begin_fill();
        let Some(tx) = self.start_admission(bucket, key, size, meta, ticket, true) else {
            return pass(body);
        };
        Fill {
            inner: body,
            tx: Some(tx),
            remaining: size,
        }
    }

    /// Places chunks for an object of `size` bytes read from the bucket and spawns its
    /// admission: the bytes sent into the returned channel are cut into pieces and placed, and
    /// once all `size` of them are placed the object is installed in the index (unless the key
    /// was written since `ticket` was taken: then what was read is stale and is freed). `None`
    /// when the placer has no room (counted as an admission failure). `or_in_background`: if
    /// the channel closes short of `size` bytes (the client outran the admission, or left),
    /// a background fill of the object starts instead ([`crate::background`]).
    pub(crate) fn start_admission(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        size: u64,
        meta: ObjectMeta,
        ticket: super::index::FillTicket,
        or_in_background: bool,
    ) -> Option<mpsc::Sender<Bytes>> {
        let id: u128 = rand::random();
        let pieces =
            usize::try_from(Layout::piece_count(size, self.piece_size)).unwrap_or(usize::MAX);
        let Some(placement) = self
            .placer
            .place(bucket, key, id, size, pieces, self.codec.total())
        else {
            self.index.abandon_fill(ticket);
            self.metrics.admission_failures.inc();
            return None;
        };
        let (tx, rx) = mpsc::channel::<Bytes>(ADMISSION_FRAMES);
        let tier = self.clone();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        tokio::spawn(async move {
            let layout = Layout {
                codec: tier.codec,
                piece_size: tier.piece_size,
                functions: placement,
            };
            let retry = or_in_background.then(|| meta.clone());
            let outcome = tier.admit(id, size, &layout, rx).await;
            if outcome != Admission::Placed {
                // admit() freed what it had placed.
                tier.index.abandon_fill(ticket);
                tier.placer.evicted(&bucket, &key, id);
                match (outcome, retry) {
                    (Admission::Short, Some(meta)) => {
                        let _ = tier.start_background_fill(&bucket, &key, size, meta);
                    }
                    _ => {
                        tier.metrics.admission_failures.inc();
                    }
                }
                return;
            }
            let obj = CachedObject {
                id,
                size,
                meta,
                layout: Some(layout.clone()),
                journal_seq: None,
            };
            if tier.index.finish_fill(ticket, &bucket, &key, obj) {
                tier.metrics.admitted.inc();
            } else {
                // The key was written meanwhile: what was read is stale.
                tier.evict_unindexed(&bucket, &key, id, Some(&layout));
            }
        });
        Some(tx)
    }

    /// Receives the object's bytes and places them piece by piece. Unless all of it was
    /// placed, the chunks placed so far are freed.
    async fn admit(
        &self,
        id: u128,
        size: u64,
        layout: &Layout,
        mut rx: mpsc::Receiver<Bytes>,
    ) -> Admission {
        let ps = usize::try_from(layout.piece_size).unwrap_or(usize::MAX);
        let mut buf = BytesMut::new();
        let mut received = 0u64;
        let mut index = 0usize;
        let mut ok = true;
        while let Some(b) = rx.recv().await {
            received += b.len() as u64;
            buf.extend_from_slice(&b);
            while buf.len() >= ps && ok {
                let piece = buf.split_to(ps).freeze();
                ok = self.place_piece(id, layout, index, piece).await;
                index += 1;
            }
            // The whole object is here: no need to wait for the body to be dropped.
            if !ok || received >= size {
                break;
            }
        }
        if ok && received == size && !buf.is_empty() {
            ok = self
                .place_piece(id, layout, index, buf.split().freeze())
                .await;
        }
        if ok && received == size {
            return Admission::Placed;
        }
        self.delete_chunks(id, Some(layout));
        if ok {
            Admission::Short
        } else {
            Admission::Unplaced
        }
    }

    pub(crate) async fn place_piece(
        &self,
        id: u128,
        layout: &Layout,
        index: usize,
        piece: Bytes,
    ) -> bool {
        let Some(fs) = layout.functions.get(index) else {
            return false;
        };
        put_piece(&self.chunks, layout.codec, id, index, piece, fs)
            .await
            .is_ok()
    }
}
