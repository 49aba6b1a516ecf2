//! Moving chunks after a read: promotion into the current bucket (the window's copy-forward of
//! live data) and repair of chunks lost with their function, as the policy decides.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::debug;

use super::chunks::{ChunkName, get_piece};
use super::index::CachedObject;
use super::{Relocation, Tier};

impl Tier {
    /// Rewrites the moved chunks from the object's current chunks, switches the layout, then
    /// deletes the old copies; if the object changed meanwhile, the new copies are deleted.
    pub(super) fn relocate(
        self: Arc<Self>,
        bucket: String,
        key: String,
        obj: Arc<CachedObject>,
        moves: Vec<Relocation>,
    ) {
        tokio::spawn(async move {
            let Some(layout) = obj.layout.clone() else {
                return;
            };
            let mut by_piece: BTreeMap<u32, Vec<Relocation>> = BTreeMap::new();
            for m in moves {
                by_piece.entry(m.piece).or_default().push(m);
            }
            let mut moved = layout.clone();
            let mut written = Vec::new();
            for (piece, ms) in &by_piece {
                let Some(fs) = layout.functions.get(*piece as usize) else {
                    return;
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
                    debug!(bucket, key, piece, "relocation skipped: piece unreadable");
                    return;
                };
                let mut data = BytesMut::with_capacity(len);
                for p in &read.parts {
                    data.extend_from_slice(p);
                }
                let codec = layout.codec;
                let Ok(Ok(chunks)) = tokio::task::spawn_blocking(move || codec.encode(&data)).await
                else {
                    return;
                };
                for m in ms {
                    let name = ChunkName::of(obj.id, *piece as usize, m.chunk as usize);
                    let Some(chunk) = chunks.get(m.chunk as usize).cloned() else {
                        return;
                    };
                    if self.chunks.put(m.to, name, chunk).await.is_err() {
                        debug!(bucket, key, function = m.to, "relocation failed: put");
                        for (f, n) in written {
                            let _ = self.chunks.delete(f, n).await;
                        }
                        return;
                    }
                    written.push((m.to, name));
                    moved.functions[*piece as usize][m.chunk as usize] = m.to;
                }
            }
            if self.index.set_layout(&bucket, &key, obj.id, moved) {
                self.metrics.relocated_chunks.inc_by(written.len() as u64);
                for ms in by_piece.values() {
                    for m in ms {
                        if let Some(from) = m.from {
                            let name = ChunkName::of(obj.id, m.piece as usize, m.chunk as usize);
                            let _ = self.chunks.delete(from, name).await;
                        }
                    }
                }
            } else {
                for (f, n) in written {
                    let _ = self.chunks.delete(f, n).await;
                }
            }
        });
    }
}
