//! The write-back PUT: the body streams into the journal and, piece by piece, into function
//! memory at the same time; the answer waits for both. Journal space is reserved as the body
//! arrives ([`RESERVE_STEP`] ahead), and the record gets its sequence number when it commits,
//! under the key's commit lock (see [`super::order`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::Digest;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Tier;
use super::chunks::put_piece;
use super::error::{BoxError, TierError};
use super::index::{CachedObject, FunctionId, KeyState, Layout};
use super::journal::{RecordHeader, RecordKind};
use super::meta::ObjectMeta;
use super::persist::expected_etag;

/// Checks a written-back body against what the client declared (digests, checksums), before
/// the write is acknowledged. The S3 layer knows the headers and trailers; the tier feeds it
/// the bytes.
pub trait BodyCheck: Send {
    /// Sees the body's bytes, in order.
    fn update(&mut self, data: &[u8]);
    /// The body ended with MD5 `md5`: the checksums to keep with the object (by algorithm,
    /// base64), or why the body does not match ([`TierError::BadDigest`]).
    fn finish(self: Box<Self>, md5: &[u8; 16]) -> Result<BTreeMap<String, String>, TierError>;
}

impl Tier {
    /// Appends one frame of a body declared `size` bytes long to its journal record: counts
    /// it into `received` (more than declared is the client's error) and grows `space`
    /// [`RESERVE_STEP`] ahead of the bytes received.
    pub(crate) async fn journal_frame(
        &self,
        data: &[u8],
        received: &mut u64,
        size: u64,
        space: &mut super::journal::Reservation,
        writer: &mut super::journal::RecordWriter,
    ) -> Result<(), TierError> {
        *received += data.len() as u64;
        if *received > size {
            return Err(TierError::BodyLength {
                received: *received,
                declared: size,
            });
        }
        if *received > space.bytes() {
            let want = size.min(received.saturating_add(RESERVE_STEP));
            self.journal
                .grow(space, want, self.cfg.journal_wait)
                .await
                .map_err(|e| self.journal_refusal(e))?;
        }
        writer.write(data).await?;
        Ok(())
    }

    /// A journal failure; journal space not given in time is counted as a SlowDown.
    pub(crate) fn journal_refusal(&self, e: super::journal::JournalError) -> TierError {
        let e = TierError::from(e);
        if matches!(e, TierError::JournalFull { .. }) {
            self.metrics.slowdowns.inc();
        }
        e
    }
}

/// Pieces being placed at once by one PUT (bounds its memory to this many pieces).
pub const PIECES_IN_FLIGHT: usize = 4;
/// Journal space a PUT reserves ahead of the bytes it has received: a request declaring a
/// large length holds no more than this until its bytes arrive.
pub const RESERVE_STEP: u64 = 8 << 20;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Tier {
    /// Writes an object of `size` bytes back: journal + memory, then background persistence.
    /// Returns the metadata it was stored with (its ETag is the one the bucket will hold).
    pub async fn put<B>(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        size: u64,
        mut meta: ObjectMeta,
        mut body: B,
        mut check: Box<dyn BodyCheck>,
    ) -> Result<ObjectMeta, TierError>
    where
        B: Stream<Item = Result<Bytes, BoxError>> + Unpin + Send,
    {
        self.ensure_bucket(bucket).await?;
        let mut space = self
            .journal
            .reserve(size.min(RESERVE_STEP), self.cfg.journal_wait)
            .await
            .map_err(|e| self.journal_refusal(e))?;
        let id: u128 = rand::random();
        let part_size = self.cfg.persist_part_size.as_u64();
        let piece_size = usize::try_from(self.piece_size).unwrap_or(usize::MAX);
        let pieces =
            usize::try_from(Layout::piece_count(size, self.piece_size)).unwrap_or(usize::MAX);
        let placement = if size > 0 {
            self.placer
                .place(bucket, key, id, size, pieces, self.codec.total())
        } else {
            None
        };
        let mut writer = self.journal.writer().await?;
        let mut md5 = md5::Md5::new();
        let mut part_md5 = md5::Md5::new();
        let mut part_fill = 0u64;
        let mut parts: Vec<[u8; 16]> = Vec::new();
        let mut buf = BytesMut::new();
        let mut puts: JoinSet<bool> = JoinSet::new();
        let slots = Arc::new(Semaphore::new(PIECES_IN_FLIGHT));
        let mut next_piece = 0usize;
        let mut received = 0u64;

        let spawn_piece = |puts: &mut JoinSet<bool>, piece: Bytes, index: usize, permit| {
            let Some(fs) = placement.as_ref().and_then(|p| p.get(index)).cloned() else {
                return;
            };
            let store = self.chunks.clone();
            let codec = self.codec;
            puts.spawn(async move {
                let r = put_piece(&store, codec, id, index, piece, &fs).await;
                drop(permit);
                if let Err(e) = &r {
                    tracing::debug!(error = %e, "placing a piece failed");
                }
                r.is_ok()
            });
        };

        let streamed: Result<[u8; 16], TierError> = async {
            while let Some(frame) = body.next().await {
                let data = frame.map_err(TierError::Body)?;
                self.journal_frame(&data, &mut received, size, &mut space, &mut writer)
                    .await?;
                md5.update(&data);
                check.update(&data);
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let take = usize::try_from((part_size - part_fill).min(rest.len() as u64))
                        .unwrap_or(rest.len());
                    part_md5.update(&rest[..take]);
                    part_fill += take as u64;
                    rest = &rest[take..];
                    if part_fill == part_size {
                        parts.push(part_md5.finalize_reset().into());
                        part_fill = 0;
                    }
                }
                if placement.is_some() {
                    buf.extend_from_slice(&data);
                    while buf.len() >= piece_size {
                        let piece = buf.split_to(piece_size).freeze();
                        let permit = slots.clone().acquire_owned().await.ok();
                        spawn_piece(&mut puts, piece, next_piece, permit);
                        next_piece += 1;
                    }
                }
            }
            if received != size {
                return Err(TierError::BodyLength {
                    received,
                    declared: size,
                });
            }
            let whole: [u8; 16] = md5.finalize_reset().into();
            Ok(whole)
        }
        .await;
        let abandon = |placement: &Option<Vec<Vec<FunctionId>>>| {
            if let Some(p) = placement {
                self.evict_unindexed(
                    bucket,
                    key,
                    id,
                    Some(&Layout {
                        codec: self.codec,
                        piece_size: self.piece_size,
                        functions: p.clone(),
                    }),
                );
            }
        };
        let streamed = match streamed {
            Ok(whole) => check.finish(&whole).map(|sums| (whole, sums)),
            Err(e) => Err(e),
        };
        let whole = match streamed {
            Ok((whole, sums)) => {
                meta.checksums = sums;
                whole
            }
            Err(e) => {
                writer.abort().await;
                puts.abort_all();
                abandon(&placement);
                return Err(e);
            }
        };
        if placement.is_some() && !buf.is_empty() {
            let permit = slots.clone().acquire_owned().await.ok();
            spawn_piece(&mut puts, buf.split().freeze(), next_piece, permit);
        }
        if part_fill > 0 {
            parts.push(part_md5.finalize().into());
        }
        meta.etag = expected_etag(&whole, &parts, size, part_size);
        meta.part_size = part_size;
        let mut placed = placement.is_some();
        while let Some(r) = puts.join_next().await {
            placed &= r.unwrap_or(false);
        }

        // The commit: this write becomes the key's current version, in the journal, the index
        // and the persister, in one order with the key's other writes.
        let _order = self.locks.lock(bucket, key).await;
        let seq = self.journal.next_seq();
        meta.last_modified_ms = now_ms();
        let header = RecordHeader {
            seq,
            kind: RecordKind::Put,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            meta: meta.clone(),
        };
        if let Err(e) = writer.commit(&self.journal, &header).await {
            abandon(&placement);
            return Err(e.into());
        }

        let layout = placement.map(|functions| Layout {
            codec: self.codec,
            piece_size: self.piece_size,
            functions,
        });
        let obj = Arc::new(CachedObject {
            id,
            size,
            meta: meta.clone(),
            layout: layout.clone(),
            journal_seq: Some(seq),
        });
        let obj = if placed || layout.is_none() {
            if placed {
                self.metrics.admitted.inc();
            } else if size > 0 {
                self.metrics.admission_failures.inc();
            }
            obj
        } else {
            // Some chunks did not make it: free the rest, serve from the journal.
            self.metrics.admission_failures.inc();
            self.evict_unindexed(bucket, key, id, obj.layout.as_ref());
            Arc::new(CachedObject {
                id,
                size,
                meta: meta.clone(),
                layout: None,
                journal_seq: Some(seq),
            })
        };
        match self.index.write(bucket, key, seq, KeyState::Object(obj)) {
            Ok(Some(old)) => {
                self.evict_unindexed(bucket, key, old.id, old.layout.as_ref());
            }
            Ok(None) => {}
            Err(KeyState::Object(lost)) => self.delete_chunks(lost.id, lost.layout.as_ref()),
            Err(KeyState::Deleted { .. }) => {}
        }
        self.persister.add(header, space);
        Ok(meta)
    }
}
