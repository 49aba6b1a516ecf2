//! Reed–Solomon coding of one piece into `d` data and `p` parity chunks (reed-solomon-simd).
//!
//! A piece of `len` bytes is cut into `d` data chunks of `chunk_len(len)` bytes each (the last
//! ones zero-padded; the piece length travels in the object's metadata), and `p` parity chunks
//! of the same length are computed. Any `d` of the `d + p` chunks give the piece back. RS does
//! not detect corruption: chunks carry a CRC32C checked by the function and again here.

use bytes::{Bytes, BytesMut};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Coding errors.
#[derive(Debug, thiserror::Error)]
pub enum EcError {
    /// `d` and `p` are not a supported combination.
    #[error("unsupported erasure coding {d}+{p}: {reason}")]
    Unsupported {
        /// Data chunks.
        d: usize,
        /// Parity chunks.
        p: usize,
        /// Why.
        reason: String,
    },
    /// Fewer than `d` distinct chunks were given.
    #[error("need {need} chunks to decode, have {have}")]
    NotEnough {
        /// `d`.
        need: usize,
        /// Chunks given.
        have: usize,
    },
    /// A chunk has the wrong length or index.
    #[error("bad chunk: {0}")]
    BadChunk(String),
    /// The coder refused (internal).
    #[error("reed-solomon: {0}")]
    Coder(#[from] reed_solomon_simd::Error),
}

/// A `d + p` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    d: usize,
    p: usize,
}

impl Codec {
    /// `d` data and `p` parity chunks per piece. `p` may be 0 (no redundancy).
    pub fn new(d: usize, p: usize) -> Result<Self, EcError> {
        let unsupported = |reason: &str| EcError::Unsupported {
            d,
            p,
            reason: reason.into(),
        };
        if d == 0 {
            return Err(unsupported("d must be at least 1"));
        }
        if p > 0 && !ReedSolomonEncoder::supports(d, p) {
            return Err(unsupported(
                "not supported by reed-solomon-simd (d + p <= 65536, ...)",
            ));
        }
        Ok(Self { d, p })
    }

    /// Data chunks per piece.
    pub fn data(&self) -> usize {
        self.d
    }

    /// Parity chunks per piece.
    /// Chunks per piece.
    pub fn total(&self) -> usize {
        self.d + self.p
    }

    /// Length of every chunk of a piece of `piece_len` bytes: `ceil(len / d)`, rounded up to
    /// an even number (the coder works on 2-byte symbols), at least 2.
    pub fn chunk_len(&self, piece_len: usize) -> usize {
        let l = piece_len.div_ceil(self.d).max(2);
        l + (l & 1)
    }

    /// Cuts `piece` into `d + p` chunks (data first, then parity).
    pub fn encode(&self, piece: &[u8]) -> Result<Vec<Bytes>, EcError> {
        let cl = self.chunk_len(piece.len());
        let mut padded = BytesMut::zeroed(cl * self.d);
        padded[..piece.len()].copy_from_slice(piece);
        let padded = padded.freeze();
        let mut chunks: Vec<Bytes> = (0..self.d)
            .map(|i| padded.slice(i * cl..(i + 1) * cl))
            .collect();
        if self.p > 0 {
            let mut enc = ReedSolomonEncoder::new(self.d, self.p, cl)?;
            for c in &chunks {
                enc.add_original_shard(c)?;
            }
            let result = enc.encode()?;
            chunks.extend(result.recovery_iter().map(Bytes::copy_from_slice));
        }
        Ok(chunks)
    }

    /// Rebuilds a piece of `piece_len` bytes from any `d` chunks given as `(index, bytes)`
    /// (index `0..d` data, `d..d+p` parity). Without missing data chunks no decoding is done.
    pub fn decode(&self, piece_len: usize, chunks: &[(usize, Bytes)]) -> Result<Bytes, EcError> {
        let cl = self.chunk_len(piece_len);
        let mut data: Vec<Option<Bytes>> = vec![None; self.d];
        let mut parity: Vec<(usize, &Bytes)> = Vec::new();
        for (i, c) in chunks {
            if c.len() != cl {
                return Err(EcError::BadChunk(format!(
                    "chunk {i} has {} bytes, expected {cl}",
                    c.len()
                )));
            }
            match *i {
                i if i < self.d => data[i] = Some(c.clone()),
                i if i < self.total() => parity.push((i - self.d, c)),
                i => return Err(EcError::BadChunk(format!("chunk index {i} out of range"))),
            }
        }
        let have = data.iter().filter(|c| c.is_some()).count();
        if have < self.d {
            if have + parity.len() < self.d {
                return Err(EcError::NotEnough {
                    need: self.d,
                    have: have + parity.len(),
                });
            }
            let mut dec = ReedSolomonDecoder::new(self.d, self.p, cl)?;
            for (i, c) in data.iter().enumerate() {
                if let Some(c) = c {
                    dec.add_original_shard(i, c)?;
                }
            }
            for (i, c) in &parity {
                dec.add_recovery_shard(*i, c)?;
            }
            let result = dec.decode()?;
            for (i, c) in result.restored_original_iter() {
                data[i] = Some(Bytes::copy_from_slice(c));
            }
        }
        let mut out = BytesMut::with_capacity(cl * self.d);
        for c in data.into_iter().flatten() {
            out.extend_from_slice(&c);
        }
        out.truncate(piece_len);
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_lengths() {
        let c = Codec::new(10, 2).unwrap();
        assert_eq!(c.chunk_len(0), 2);
        assert_eq!(c.chunk_len(1), 2);
        assert_eq!(c.chunk_len(100), 10);
        assert_eq!(c.chunk_len(101), 12);
        assert_eq!(c.chunk_len(10 << 20), 1 << 20);
    }

    #[test]
    fn any_d_chunks_decode() {
        let c = Codec::new(4, 2).unwrap();
        let piece: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let chunks = c.encode(&piece).unwrap();
        assert_eq!(chunks.len(), 6);
        for a in 0..6 {
            for b in (a + 1)..6 {
                let given: Vec<(usize, Bytes)> = (0..6)
                    .filter(|i| *i != a && *i != b)
                    .map(|i| (i, chunks[i].clone()))
                    .collect();
                assert_eq!(
                    c.decode(piece.len(), &given).unwrap().as_ref(),
                    &piece[..],
                    "lost {a},{b}"
                );
            }
        }
        let three: Vec<(usize, Bytes)> = (0..3).map(|i| (i, chunks[i].clone())).collect();
        assert!(matches!(
            c.decode(piece.len(), &three),
            Err(EcError::NotEnough { .. })
        ));
    }

    #[test]
    fn no_parity() {
        let c = Codec::new(2, 0).unwrap();
        let chunks = c.encode(b"hello").unwrap();
        assert_eq!(chunks.len(), 2);
        let given: Vec<(usize, Bytes)> = chunks.iter().cloned().enumerate().collect();
        assert_eq!(c.decode(5, &given).unwrap().as_ref(), b"hello");
    }

    proptest! {
        #[test]
        fn roundtrip_with_losses(len in 0usize..5000, d in 1usize..12, p in 1usize..4, seed in any::<u64>()) {
            let c = Codec::new(d, p).unwrap();
            let piece: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1) as u8).collect();
            let chunks = c.encode(&piece).unwrap();
            // drop p chunks chosen by the seed
            let mut idx: Vec<usize> = (0..d + p).collect();
            let mut s = seed;
            for i in (1..idx.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                idx.swap(i, (s >> 33) as usize % (i + 1));
            }
            let given: Vec<(usize, Bytes)> = idx[p..].iter().map(|&i| (i, chunks[i].clone())).collect();
            let back = c.decode(len, &given).unwrap();
            prop_assert_eq!(back.as_ref(), &piece[..]);
        }
    }
}
