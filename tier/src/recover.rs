//! Restoring a reclaimed function's chunks, in parallel.
//!
//! When the provider reclaims a function of the active window, the policy asks for recovery:
//! every chunk the function held is rebuilt and written to its replacement instance by
//! `recovery_parallelism` (P) workers, worker `j` taking the chunks whose key hashes to `j`.
//! A chunk of an object the bucket holds is read back from the bucket (a ranged GET of exactly
//! the chunk for a data chunk; the whole piece, re-encoded, for a parity chunk), with If-Match
//! on the object's ETag; a chunk of an object still dirty is rebuilt by Reed–Solomon from the
//! piece's surviving chunks. Meanwhile reads decode from the surviving `d` chunks, so no client
//! request waits for recovery, and writes go on (recovery runs in the background).
//!
//! We differ from InfiniStore's helpers: there, P helper *functions* each read their share
//! from S3 (a function's S3 bandwidth is the bottleneck) and serve it until the replacement has
//! restored itself. Here the gateway reads S3 and writes straight into the replacement, so the
//! parallelism is P gateway streams to the bucket — the same per-connection limit, without a
//! second copy.
//!
//! A chunk that cannot be restored after [`ATTEMPTS`] tries (backoff from [`RETRY_MIN`]) drops
//! its object from memory (reads go to the journal or the bucket) and is counted as a failed
//! recovery. `gateway_pieces_below_redundancy` counts pieces waiting for a chunk; it returns to
//! 0 when recovery is over.

use crate::EvictedBy;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use tracing::{info, warn};

use super::Tier;
use super::chunks::{ChunkError, ChunkName, get_piece};
use super::error::TierError;
use super::index::{CachedObject, FunctionId, KeyState};

/// Tries per chunk.
pub const ATTEMPTS: u32 = 4;
/// First retry delay (doubles).
pub const RETRY_MIN: Duration = Duration::from_millis(200);

struct Job {
    bucket: String,
    key: String,
    obj: Arc<CachedObject>,
    piece: u32,
    chunk: u32,
}

impl Tier {
    /// Restores every chunk function `f` held onto its replacement instance (in the
    /// background); returns how many chunks that is.
    pub(crate) fn recover(self: &Arc<Self>, f: FunctionId) -> usize {
        let mut jobs = Vec::new();
        for (bucket, key, obj) in self.index.objects_on(f) {
            let Some(layout) = &obj.layout else { continue };
            for (p, fs) in layout.functions.iter().enumerate() {
                for (c, g) in fs.iter().enumerate() {
                    if *g == f {
                        jobs.push(Job {
                            bucket: bucket.clone(),
                            key: key.clone(),
                            obj: obj.clone(),
                            piece: u32::try_from(p).unwrap_or(u32::MAX),
                            chunk: u32::try_from(c).unwrap_or(u32::MAX),
                        });
                    }
                }
            }
        }
        let workers = self.cfg.recovery_parallelism.max(1);
        let total = jobs.len();
        self.recovery.started.inc();
        self.recovery
            .below_redundancy
            .inc_by(i64::try_from(total).unwrap_or(i64::MAX));
        info!(function = f, chunks = total, workers, "recovery started");
        let mut shares: Vec<Vec<Job>> = (0..workers).map(|_| Vec::new()).collect();
        for j in jobs {
            let mut h = DefaultHasher::new();
            (&j.bucket, &j.key).hash(&mut h);
            let w = usize::try_from(h.finish() % workers as u64).unwrap_or(0);
            shares[w].push(j);
        }
        let tier = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let results = join_all(shares.into_iter().map(|share| {
                let tier = tier.clone();
                async move {
                    let mut failed = 0usize;
                    for job in share {
                        if !tier.restore_with_retries(f, &job).await {
                            failed += 1;
                        }
                        tier.recovery.below_redundancy.dec();
                    }
                    failed
                }
            }))
            .await;
            let failed: usize = results.into_iter().sum();
            let took = started.elapsed();
            tier.recovery.duration.observe(took.as_secs_f64());
            if failed == 0 {
                tier.recovery.finished.inc();
                info!(
                    function = f,
                    chunks = total,
                    ms = took.as_millis() as u64,
                    "recovery finished"
                );
            } else {
                tier.recovery.failed.inc();
                warn!(
                    function = f,
                    chunks = total,
                    failed,
                    "recovery finished with chunks that could not be restored; their objects were dropped from memory"
                );
            }
        });
        total
    }

    async fn restore_with_retries(&self, f: FunctionId, job: &Job) -> bool {
        let mut delay = RETRY_MIN;
        for attempt in 1..=ATTEMPTS {
            match self.restore_chunk(f, job).await {
                Ok(()) => return true,
                Err(e) if attempt < ATTEMPTS => {
                    warn!(bucket = job.bucket, key = job.key, piece = job.piece, chunk = job.chunk, attempt, error = %e, "restoring a chunk failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    warn!(bucket = job.bucket, key = job.key, error = %e, "restoring a chunk failed; dropping the object from memory");
                    self.evict(&job.bucket, &job.key, job.obj.id, EvictedBy::Tier);
                }
            }
        }
        false
    }

    /// Rebuilds one chunk and writes it to `f`; nothing to do if the object changed.
    async fn restore_chunk(&self, f: FunctionId, job: &Job) -> Result<(), TierError> {
        let current = match self.index.get(&job.bucket, &job.key) {
            Some(KeyState::Object(o)) if o.id == job.obj.id => o,
            _ => return Ok(()),
        };
        let Some(layout) = current.layout.clone() else {
            return Ok(());
        };
        let Some(fs) = layout.functions.get(job.piece as usize) else {
            return Ok(());
        };
        if fs.get(job.chunk as usize) != Some(&f) {
            return Ok(());
        }
        let codec = layout.codec;
        let (off, len) = layout.piece_span(current.size, u64::from(job.piece));
        let cl = codec.chunk_len(usize::try_from(len).unwrap_or(0)) as u64;
        let d = codec.data() as u32;
        let chunk: Bytes = if current.journal_seq.is_none() && job.chunk < d {
            // A data chunk of a persisted object: exactly its bytes from the bucket.
            let start = u64::from(job.chunk) * cl;
            let end = (start + cl).min(len);
            let mut buf = BytesMut::zeroed(usize::try_from(cl).unwrap_or(0));
            if start < end {
                let data = self
                    .bucket_range(&job.bucket, &job.key, &current, off + start, end - start)
                    .await?;
                buf[..data.len()].copy_from_slice(&data);
            }
            buf.freeze()
        } else {
            let piece = if current.journal_seq.is_none() {
                // A parity chunk: the whole piece from the bucket, re-encoded.
                self.bucket_range(&job.bucket, &job.key, &current, off, len)
                    .await?
            } else {
                // Not yet in the bucket: Reed–Solomon from the surviving chunks.
                let read = get_piece(
                    &self.chunks,
                    codec,
                    current.id,
                    job.piece as usize,
                    usize::try_from(len).unwrap_or(0),
                    fs,
                    self.cfg.chunk_timeout,
                )
                .await?;
                let mut b = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
                for p in &read.parts {
                    b.extend_from_slice(p);
                }
                b.freeze()
            };
            let chunks = tokio::task::spawn_blocking(move || codec.encode(&piece))
                .await
                .map_err(|e| ChunkError::Coding(e.to_string()))?
                .map_err(|e| ChunkError::Coding(e.to_string()))?;
            chunks
                .get(job.chunk as usize)
                .cloned()
                .ok_or_else(|| ChunkError::Coding("chunk index out of range".into()))?
        };
        let name = ChunkName::of(current.id, job.piece as usize, job.chunk as usize);
        self.chunks.put(f, name, chunk).await?;
        self.recovery.chunks.inc();
        Ok(())
    }

    /// A lost function the policy does not recover (degraded bucket, fixed pool): its objects
    /// leave memory, so no piece stays below redundancy; their next read is a miss that brings
    /// them back into the current bucket (the delegation).
    pub fn abandon(&self, f: FunctionId) {
        for (bucket, key, obj) in self.index.objects_on(f) {
            self.evict(&bucket, &key, obj.id, EvictedBy::Tier);
        }
    }
}
