//! Pieces in and out of function memory: encode and place a piece's `d + p` chunks on
//! distinct functions; read a piece back from the first `d` chunks to arrive.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::ec::{Codec, EcError};
use super::error::TierError;
use super::index::FunctionId;

/// Why a chunk operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkError {
    /// Coding the piece failed (no function involved).
    #[error("coding: {0}")]
    Coding(String),
    /// The function has no room.
    #[error("function {0} is full")]
    Full(FunctionId),
    /// The function does not hold the chunk (its memory was reclaimed, or it was evicted).
    #[error("chunk not found on function {0}")]
    NotFound(FunctionId),
    /// The function holds a damaged copy.
    #[error("chunk on function {0} is corrupt")]
    Corrupt(FunctionId),
    /// The function cannot be reached now.
    #[error("function {0} unavailable: {1}")]
    Unavailable(FunctionId, String),
}

impl ChunkError {
    /// The function at fault, if one is.
    pub fn function(&self) -> Option<FunctionId> {
        match self {
            ChunkError::Coding(_) => None,
            ChunkError::Full(f)
            | ChunkError::NotFound(f)
            | ChunkError::Corrupt(f)
            | ChunkError::Unavailable(f, _) => Some(*f),
        }
    }
}

/// A chunk's name: the object (write) it belongs to, the piece and its index in the piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkName {
    /// Object id.
    pub object: u128,
    /// Piece index.
    pub piece: u32,
    /// Chunk index in the piece (`0..d` data, `d..d+p` parity).
    pub index: u16,
}

impl ChunkName {
    /// Chunk `index` of piece `piece` of `object` (positions as the layout counts them; a
    /// layout never has more than `u32::MAX` pieces or 256 chunks per piece).
    pub fn of(object: u128, piece: usize, index: usize) -> Self {
        ChunkName {
            object,
            piece: u32::try_from(piece).unwrap_or(u32::MAX),
            index: u16::try_from(index).unwrap_or(u16::MAX),
        }
    }
}

/// Where chunks live: the function pool.
#[async_trait::async_trait]
pub trait ChunkStore: Send + Sync + 'static {
    /// Stores a chunk on function `f`.
    async fn put(&self, f: FunctionId, name: ChunkName, data: Bytes) -> Result<(), ChunkError>;
    /// Reads `len` bytes (all when `None`) from `offset` of a chunk on function `f`.
    async fn get(
        &self,
        f: FunctionId,
        name: ChunkName,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Bytes, ChunkError>;
    /// Deletes a chunk from function `f` (absent is fine).
    async fn delete(&self, f: FunctionId, name: ChunkName) -> Result<(), ChunkError>;
}

/// Encodes `piece` (on a blocking thread: coding is CPU work) and stores its chunks on
/// `functions` (one per chunk, distinct), all at once.
pub(crate) async fn put_piece(
    store: &Arc<dyn ChunkStore>,
    codec: Codec,
    object: u128,
    piece_index: usize,
    piece: Bytes,
    functions: &[FunctionId],
) -> Result<(), ChunkError> {
    let chunks = tokio::task::spawn_blocking(move || codec.encode(&piece))
        .await
        .map_err(|e| ChunkError::Coding(format!("encoder task: {e}")))?
        .map_err(|e| ChunkError::Coding(format!("encode: {e}")))?;
    let mut puts: FuturesUnordered<_> = chunks
        .into_iter()
        .zip(functions.iter().copied())
        .enumerate()
        .map(|(i, (data, f))| {
            let store = store.clone();
            let name = ChunkName::of(object, piece_index, i);
            async move { store.put(f, name, data).await }
        })
        .collect();
    let mut first_err = None;
    while let Some(r) = puts.next().await {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// How long a read that has `d` chunks, some of them parity, waits for the missing data chunks
/// before decoding: decoding costs CPU (about 1.3 GiB/s per core), a data chunk a moment late
/// usually does not.
pub const DECODE_GRACE: Duration = Duration::from_millis(3);

/// Outcome of reading a piece.
pub(crate) struct PieceRead {
    /// The piece's bytes from `offset` on, as consecutive parts (the data chunks themselves
    /// when no decoding was needed: no copy): the whole piece, or (see [`get_span`]) the data
    /// chunks holding a span of it.
    pub parts: Vec<Bytes>,
    /// Where in the piece `parts` start.
    pub offset: usize,
    /// Whether parity was needed.
    pub decoded: bool,
}

/// How long a span read ([`get_span`]) waits for the data chunks it asked for before it also
/// reads the whole piece first-d, taking whichever comes first.
pub const SPAN_HEDGE: Duration = Duration::from_millis(30);

/// Reads bytes `lo..hi` of piece `piece_index` (`piece_len` bytes) of `object`: from only the
/// data chunks that hold them, when each of those answers in time — a range covering part of
/// a piece then costs the chunks it touches, not `d`. If one of them fails, or they have not
/// all arrived within [`SPAN_HEDGE`], the whole piece is read first-d ([`get_piece`]) as well,
/// and whichever is complete first is used.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn get_span(
    store: &Arc<dyn ChunkStore>,
    codec: Codec,
    object: u128,
    piece_index: usize,
    piece_len: usize,
    functions: &[FunctionId],
    timeout: Duration,
    span: std::ops::Range<usize>,
) -> Result<PieceRead, TierError> {
    let chunk_len = codec.chunk_len(piece_len);
    let first = span.start / chunk_len;
    let last = span.end.saturating_sub(1) / chunk_len;
    if span.is_empty() || last >= codec.data() || last + 1 - first >= codec.data() {
        return get_piece(
            store,
            codec,
            object,
            piece_index,
            piece_len,
            functions,
            timeout,
        )
        .await;
    }
    let needed = async {
        let gets = (first..=last).map(|i| {
            let store = store.clone();
            let f = functions[i];
            let name = ChunkName::of(object, piece_index, i);
            async move {
                match tokio::time::timeout(timeout, store.get(f, name, 0, None)).await {
                    Ok(Ok(b)) if b.len() == chunk_len => Ok(b),
                    Ok(Ok(b)) => Err(ChunkError::Unavailable(
                        f,
                        format!("chunk of {} bytes, expected {chunk_len}", b.len()),
                    )),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ChunkError::Unavailable(
                        f,
                        format!("no answer within {timeout:?}"),
                    )),
                }
            }
        });
        let chunks = futures::future::try_join_all(gets).await?;
        // The last data chunk is padded past the piece's end.
        let mut left = piece_len - first * chunk_len;
        let parts = chunks
            .into_iter()
            .map(|b| {
                let n = left.min(b.len());
                left -= n;
                b.slice(..n)
            })
            .collect();
        Ok::<_, ChunkError>(PieceRead {
            parts,
            offset: first * chunk_len,
            decoded: false,
        })
    };
    tokio::pin!(needed);
    let hedge = tokio::time::sleep(SPAN_HEDGE);
    tokio::pin!(hedge);
    let mut needed_failed = false;
    tokio::select! {
        r = &mut needed => match r {
            Ok(read) => return Ok(read),
            Err(e) => {
                tracing::debug!(error = %e, "span read: a data chunk failed; reading the piece");
                needed_failed = true;
            }
        },
        () = &mut hedge => {}
    }
    let full = get_piece(
        store,
        codec,
        object,
        piece_index,
        piece_len,
        functions,
        timeout,
    );
    if needed_failed {
        return full.await;
    }
    tokio::pin!(full);
    tokio::select! {
        biased;
        r = &mut full => r,
        r = &mut needed => match r {
            Ok(read) => Ok(read),
            Err(_) => full.await,
        },
    }
}

/// Reads piece `piece_index` (`piece_len` bytes) of `object`: asks all `d + p` functions at
/// once and decodes as soon as any `d` chunks have arrived ("first-d"), after a short
/// [`DECODE_GRACE`] for missing data chunks; the slower requests are dropped. Each request has
/// `timeout`.
pub(crate) async fn get_piece(
    store: &Arc<dyn ChunkStore>,
    codec: Codec,
    object: u128,
    piece_index: usize,
    piece_len: usize,
    functions: &[FunctionId],
    timeout: Duration,
) -> Result<PieceRead, TierError> {
    let mut gets: FuturesUnordered<_> = functions
        .iter()
        .copied()
        .enumerate()
        .map(|(i, f)| {
            let store = store.clone();
            let name = ChunkName::of(object, piece_index, i);
            async move {
                let r = match tokio::time::timeout(timeout, store.get(f, name, 0, None)).await {
                    Ok(r) => r,
                    Err(_) => Err(ChunkError::Unavailable(
                        f,
                        format!("no answer within {timeout:?}"),
                    )),
                };
                (i, r)
            }
        })
        .collect();
    let d = codec.data();
    let chunk_len = codec.chunk_len(piece_len);
    let mut have: Vec<(usize, Bytes)> = Vec::with_capacity(codec.total());
    let mut failures = Vec::new();
    let accept = |(i, r): (usize, Result<Bytes, ChunkError>),
                  have: &mut Vec<(usize, Bytes)>,
                  failures: &mut Vec<ChunkError>| match r {
        Ok(b) if b.len() == chunk_len => have.push((i, b)),
        Ok(b) => failures.push(ChunkError::Unavailable(
            functions[i],
            format!("chunk of {} bytes, expected {chunk_len}", b.len()),
        )),
        Err(e) => failures.push(e),
    };
    let data_count = |have: &[(usize, Bytes)]| have.iter().filter(|(i, _)| *i < d).count();
    while let Some(r) = gets.next().await {
        accept(r, &mut have, &mut failures);
        if have.len() >= d {
            break;
        }
    }
    if have.len() >= d && data_count(&have) < d {
        let grace = tokio::time::sleep(DECODE_GRACE);
        tokio::pin!(grace);
        while data_count(&have) < d {
            tokio::select! {
                r = gets.next() => match r {
                    Some(r) => accept(r, &mut have, &mut failures),
                    None => break,
                },
                () = &mut grace => break,
            }
        }
    }
    drop(gets);
    if data_count(&have) == d {
        let mut data: Vec<(usize, Bytes)> = have.into_iter().filter(|(i, _)| *i < d).collect();
        data.sort_unstable_by_key(|(i, _)| *i);
        let mut left = piece_len;
        let parts = data
            .into_iter()
            .map(|(_, b)| {
                let n = left.min(b.len());
                left -= n;
                b.slice(..n)
            })
            .filter(|b| !b.is_empty())
            .collect();
        return Ok(PieceRead {
            parts,
            offset: 0,
            decoded: false,
        });
    }
    let given = have;
    let decoded = match tokio::task::spawn_blocking(move || codec.decode(piece_len, &given)).await {
        Ok(r) => r,
        Err(e) => Err(EcError::BadChunk(format!("decoder task: {e}"))),
    };
    match decoded {
        Ok(data) => Ok(PieceRead {
            parts: vec![data],
            offset: 0,
            decoded: true,
        }),
        Err(source) => Err(TierError::Decode { source, failures }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryChunks;

    const SECOND: Duration = Duration::from_secs(1);

    async fn stored(piece: &[u8]) -> (Arc<MemoryChunks>, Arc<dyn ChunkStore>, Codec) {
        let codec = Codec::new(4, 2).unwrap();
        let mem = MemoryChunks::new();
        let store: Arc<dyn ChunkStore> = mem.clone();
        put_piece(
            &store,
            codec,
            7,
            0,
            Bytes::copy_from_slice(piece),
            &[0, 1, 2, 3, 4, 5],
        )
        .await
        .unwrap();
        (mem, store, codec)
    }

    fn joined(r: &PieceRead) -> Vec<u8> {
        r.parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[tokio::test]
    async fn the_first_d_chunks_are_enough_and_late_ones_are_not_waited_for() {
        let piece: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let (mem, store, codec) = stored(&piece).await;
        assert_eq!(mem.held().len(), 6, "d + p chunks on six functions");
        // All on time: the data chunks themselves, no decoding.
        let r = get_piece(
            &store,
            codec,
            7,
            0,
            piece.len(),
            &[0, 1, 2, 3, 4, 5],
            SECOND,
        )
        .await
        .unwrap();
        assert!(!r.decoded);
        assert_eq!(joined(&r), piece);
        // A data chunk a second late: decoded from the first d (parity included), well
        // before the late one would have arrived.
        mem.delay(1, Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let r = get_piece(
            &store,
            codec,
            7,
            0,
            piece.len(),
            &[0, 1, 2, 3, 4, 5],
            2 * SECOND,
        )
        .await
        .unwrap();
        assert!(r.decoded, "rebuilt from parity");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "did not wait for the late chunk"
        );
        assert_eq!(joined(&r), piece);
    }

    /// The bytes of a span read, from where they start in the piece.
    fn span_of(r: &PieceRead, span: std::ops::Range<usize>) -> Vec<u8> {
        let all = joined(r);
        all[span.start - r.offset..span.end - r.offset].to_vec()
    }

    #[tokio::test]
    async fn a_span_reads_only_the_data_chunks_holding_it_and_falls_back_to_first_d() {
        // 4 data chunks of 1,000 bytes (chunk_len(4000) = 1000) + 2 parity.
        let piece: Vec<u8> = (0..4000u32).map(|i| (i % 253) as u8).collect();
        let (mem, store, codec) = stored(&piece).await;
        let fs = [0, 1, 2, 3, 4, 5];
        let (_, gets_before, _) = mem.ops();
        let r = get_span(&store, codec, 7, 0, piece.len(), &fs, SECOND, 1500..2500)
            .await
            .unwrap();
        assert_eq!(mem.ops().1 - gets_before, 2, "chunks 1 and 2 only");
        assert_eq!((r.offset, r.decoded), (1000, false));
        assert_eq!(span_of(&r, 1500..2500), piece[1500..2500]);
        // The function holding chunk 1 is gone: the piece is read first-d and decoded.
        mem.lose(1);
        let r = get_span(&store, codec, 7, 0, piece.len(), &fs, SECOND, 1500..2500)
            .await
            .unwrap();
        assert!(r.decoded);
        assert_eq!(span_of(&r, 1500..2500), piece[1500..2500]);
        mem.revive(1);
        // A late data chunk: after the hedge the whole piece is read too, and the first
        // complete answer is used (decoded from parity, not waiting the second out).
        let (mem, store, codec) = stored(&piece).await;
        mem.delay(2, Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let r = get_span(
            &store,
            codec,
            7,
            0,
            piece.len(),
            &fs,
            2 * SECOND,
            1500..2500,
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "did not wait it out"
        );
        assert_eq!(span_of(&r, 1500..2500), piece[1500..2500]);
        // The end of a shorter last piece: the padding of its last chunk is not returned.
        let short: Vec<u8> = (0..3001u32).map(|i| (i % 241) as u8).collect();
        let (_, store, codec) = stored(&short).await;
        let r = get_span(&store, codec, 7, 0, short.len(), &fs, SECOND, 2900..3001)
            .await
            .unwrap();
        assert_eq!(joined(&r).len() + r.offset, short.len());
        assert_eq!(span_of(&r, 2900..3001), short[2900..3001]);
    }

    #[tokio::test]
    async fn up_to_p_corrupt_or_missing_chunks_are_invisible_and_more_are_an_error() {
        let piece: Vec<u8> = (0..3001u32).map(|i| (i * 7 % 256) as u8).collect();
        let (mem, store, codec) = stored(&piece).await;
        let fs = [0, 1, 2, 3, 4, 5];
        mem.corrupt(0, ChunkName::of(7, 0, 0));
        mem.lose(3);
        let r = get_piece(&store, codec, 7, 0, piece.len(), &fs, SECOND)
            .await
            .unwrap();
        assert!(r.decoded);
        assert_eq!(joined(&r), piece);
        // A third failure: fewer than d chunks.
        mem.lose(4);
        let err = get_piece(&store, codec, 7, 0, piece.len(), &fs, SECOND)
            .await
            .err()
            .expect("three of six chunks lost");
        match err {
            TierError::Decode { failures, .. } => {
                let mut at: Vec<_> = failures.iter().filter_map(ChunkError::function).collect();
                at.sort_unstable();
                assert_eq!(at, vec![0, 3, 4], "each failure names its function");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slow_function_times_out_and_counts_as_failed() {
        let piece = vec![9u8; 2048];
        let (mem, store, codec) = stored(&piece).await;
        for f in [0, 1, 2] {
            mem.delay(f, Duration::from_secs(5));
        }
        let err = get_piece(
            &store,
            codec,
            7,
            0,
            piece.len(),
            &[0, 1, 2, 3, 4, 5],
            Duration::from_millis(100),
        )
        .await
        .err()
        .expect("three functions too slow");
        assert!(
            matches!(err, TierError::Decode { ref failures, .. } if failures.len() == 3),
            "{err:?}"
        );
    }
}
