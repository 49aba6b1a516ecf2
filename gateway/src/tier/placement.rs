//! Placement used until the policy crate's sliding window drives it: the chunks of piece `j`
//! go to `start + j * (d + p) + c` modulo the pool, `start` rotating per object, so the chunks
//! of one piece are always on distinct functions (the pool has at least `d + p`).

use std::sync::atomic::{AtomicU32, Ordering};

use super::Placer;
use super::index::FunctionId;

/// Rotating placement over `count` functions.
pub struct RoundRobin {
    count: u32,
    next: AtomicU32,
}

impl RoundRobin {
    /// Over functions `0..count`.
    pub fn new(count: u32) -> Self {
        Self {
            count,
            next: AtomicU32::new(0),
        }
    }
}

impl Placer for RoundRobin {
    fn place(&self, _object: u128, _size: u64, pieces: usize, per_piece: usize) -> Option<Vec<Vec<FunctionId>>> {
        let n = self.count as usize;
        if per_piece == 0 || n < per_piece {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        Some(
            (0..pieces)
                .map(|j| {
                    (0..per_piece)
                        .map(|c| u32::try_from((start + j * per_piece + c) % n).unwrap_or(0))
                        .collect()
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_of_a_piece_are_distinct() {
        let p = RoundRobin::new(13);
        for _ in 0..20 {
            for piece in p.place(0, 100, 5, 12).unwrap() {
                let mut s = piece.clone();
                s.sort_unstable();
                s.dedup();
                assert_eq!(s.len(), 12);
            }
        }
        assert!(RoundRobin::new(5).place(0, 1, 1, 12).is_none());
    }
}
