//! Moving chunks after a read: promotion into the current bucket (the window's copy-forward of
//! live data) and repair of chunks lost with their function, as the policy decides. The
//! outcome goes back to the policy ([`crate::Placer::relocated`]): a move counts in its
//! accounting only once the chunk is at its new function and the layout says so.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::debug;

use super::chunks::{ChunkName, get_piece};
use super::index::{CachedObject, FunctionId};
use super::{Relocation, Tier};

impl Tier {
    /// Rewrites the moved chunks from the object's current chunks, switches the layout, then
    /// deletes the old copies; if anything fails or the object changed meanwhile, the new
    /// copies are deleted and the layout stays. Either way the placer learns the outcome.
    pub(super) fn relocate(
        self: Arc<Self>,
        bucket: String,
        key: String,
        obj: Arc<CachedObject>,
        moves: Vec<Relocation>,
    ) {
        tokio::spawn(async move {
            let ok = self.move_chunks(&bucket, &key, &obj, &moves).await;
            self.placer.relocated(&bucket, &key, obj.id, &moves, ok);
        });
    }

    /// Carries the moves out; whether the layout now has them.
    async fn move_chunks(
        &self,
        bucket: &str,
        key: &str,
        obj: &CachedObject,
        moves: &[Relocation],
    ) -> bool {
        let Some(layout) = obj.layout.clone() else {
            return false;
        };
        let mut by_piece: BTreeMap<u32, Vec<Relocation>> = BTreeMap::new();
        for m in moves {
            by_piece.entry(m.piece).or_default().push(*m);
        }
        let mut moved = layout.clone();
        let mut written: Vec<(FunctionId, ChunkName)> = Vec::new();
        let undo = |written: Vec<(FunctionId, ChunkName)>| async move {
            for (f, n) in written {
                let _ = self.chunks.delete(f, n).await;
            }
        };
        for (piece, ms) in &by_piece {
            let Some(fs) = layout.functions.get(*piece as usize) else {
                undo(written).await;
                return false;
            };
            let (_, len) = layout.piece_span(obj.size, u64::from(*piece));
            let len = usize::try_from(len).unwrap_or(0);
            let read = get_piece(
                &self.chunks,
                layout.codec,
                obj.id,
                *piece as usize,
                len,
                fs,
                self.cfg.chunk_timeout,
            )
            .await;
            let Ok(read) = read else {
                debug!(bucket, key, piece, "relocation given up: piece unreadable");
                undo(written).await;
                return false;
            };
            let mut data = BytesMut::with_capacity(len);
            for p in &read.parts {
                data.extend_from_slice(p);
            }
            let codec = layout.codec;
            let Ok(Ok(chunks)) = tokio::task::spawn_blocking(move || codec.encode(&data)).await
            else {
                undo(written).await;
                return false;
            };
            for m in ms {
                let name = ChunkName::of(obj.id, *piece as usize, m.chunk as usize);
                let Some(chunk) = chunks.get(m.chunk as usize).cloned() else {
                    undo(written).await;
                    return false;
                };
                if self.chunks.put(m.to, name, chunk).await.is_err() {
                    debug!(
                        bucket,
                        key,
                        function = m.to,
                        "relocation given up: put failed"
                    );
                    undo(written).await;
                    return false;
                }
                written.push((m.to, name));
                moved.functions[*piece as usize][m.chunk as usize] = m.to;
            }
        }
        if !self.index.set_layout(bucket, key, obj.id, moved) {
            // The object changed meanwhile: what was written belongs to nothing.
            undo(written).await;
            return false;
        }
        self.metrics.relocated_chunks.inc_by(written.len() as u64);
        for m in moves {
            if let Some(from) = m.from {
                let name = ChunkName::of(obj.id, m.piece as usize, m.chunk as usize);
                let _ = self.chunks.delete(from, name).await;
            }
        }
        true
    }
}
