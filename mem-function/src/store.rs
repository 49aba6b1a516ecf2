//! The function's chunk store: a process-global map from chunk id to bytes that outlives
//! invocations (the provider keeps the process warm), with memory accounting against the
//! function's configured size and a CRC32C per chunk checked on store and on every read.
//!
//! **What a chunk costs.** The accounting charges what a stored chunk really keeps resident,
//! so that chunks + runtime stay under the function's memory size:
//! - a chunk of [`COPY_BELOW`] bytes or more is kept in the allocation it was received into,
//!   which on the function is an anonymous mapping of its own
//!   ([`BodyAlloc::Mapped`](crate::framed::BodyAlloc)): charged its length rounded up to whole
//!   [`PAGE`]s, and unmapped (returned to the OS) when the chunk is deleted or replaced and no
//!   response still holds it;
//! - a smaller chunk is copied into a heap allocation of its own (so it never pins the
//!   connection's shared read buffer): charged its length;
//! - every chunk's id is copied too (a decoded id is a slice of the frame's receive buffer,
//!   and as a map key it would keep that whole buffer alive), and each chunk is charged
//!   [`CHUNK_OVERHEAD`] for its map node, headers and allocator rounding.
//!
//! **The resident limit.** What the accounting cannot see — heap fragmentation from many
//! small chunks, the runtime growing — is caught by a second bound: with
//! [`Store::set_resident_limit`] a chunk is refused (`FULL`) when the process's resident set
//! (read from `/proc/self/statm`) plus the chunk would pass the limit, so a function refuses
//! writes instead of being killed by the provider for exceeding its memory size.

use crate::wire::{
    Ack, ByteRange, ChunkId, ChunkInfo, MAX_LIST_LIMIT, Mutation, NodeState, StoreStats,
};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes charged per chunk on top of its data and id: map node, `Bytes` header and owner, the
/// copied id's allocation, allocator rounding. Deliberately generous so the accounting stays
/// above the real heap use.
pub const CHUNK_OVERHEAD: u64 = 256;
/// Chunks smaller than this are copied out of the receive buffer when stored, so a small chunk
/// never pins a large shared read buffer; larger chunks keep the buffer (it is their own: a
/// mapping on the function, see the module doc).
pub const COPY_BELOW: usize = crate::framed::OWN_ALLOCATION;
/// Page size the accounting rounds mapped chunks to (Linux on x86-64 and arm64, as on Lambda).
pub const PAGE: u64 = 4096;
/// A reading of the resident set older than this is taken again before a chunk is admitted
/// (in between, admitted chunks are added to the last reading).
pub const RESIDENT_REFRESH: Duration = Duration::from_millis(2);
/// Default memory reserved for the runtime, buffers and the in-flight frame (MiB), as in
/// InfiniStore: capacity = function memory - overhead.
pub const DEFAULT_OVERHEAD_MB: u64 = 100;
/// Resident memory of the function beyond its chunks and the frame being received: code,
/// stacks, the async runtime, logging, read and write buffers, responses in flight. Measured
/// at about 7 MiB (RSS of an idle function); the overhead should cover twice that plus one
/// frame of `MEMFN_MAX_CHUNK` bytes.
pub const RUNTIME_RESERVE: u64 = 16 * 1024 * 1024;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No chunk under that id.
    #[error("chunk not found")]
    NotFound,
    /// The chunk does not fit.
    #[error("function full: {needed} bytes needed, {free} free")]
    Full {
        /// Bytes the chunk would be charged.
        needed: u64,
        /// Bytes free (counting a replaced chunk as freed).
        free: u64,
    },
    /// CRC mismatch: on store, the data differs from the sender's checksum; on read, the
    /// stored bytes no longer match the checksum taken when they were stored.
    #[error("chunk corrupt: crc32c {actual:08x}, expected {expected:08x}")]
    Corrupt {
        /// The checksum that should hold.
        expected: u32,
        /// The checksum of the bytes at hand.
        actual: u32,
    },
    /// The range starts beyond the end of the chunk.
    #[error("range offset {offset} beyond chunk length {len}")]
    BadRange {
        /// Requested offset.
        offset: u64,
        /// Chunk length.
        len: u64,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    data: Bytes,
    crc: u32,
}

/// Bytes a chunk of `len` bytes under `id` is charged (see the module doc).
pub fn charge(id: &ChunkId, len: usize) -> u64 {
    data_charge(len) + id.len() as u64 + CHUNK_OVERHEAD
}

fn data_charge(len: usize) -> u64 {
    let len = len as u64;
    if len >= COPY_BELOW as u64 {
        len.next_multiple_of(PAGE)
    } else {
        len
    }
}

/// Operation counters since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Chunks stored.
    pub puts: u64,
    /// Chunk reads served.
    pub gets: u64,
    /// Chunks deleted.
    pub deletes: u64,
    /// Bytes stored.
    pub bytes_in: u64,
    /// Bytes read.
    pub bytes_out: u64,
    /// Requests refused (full, not found, corrupt, bad range, malformed).
    pub errors: u64,
}

#[derive(Debug)]
struct Inner {
    chunks: BTreeMap<ChunkId, Entry>,
    used: u64,
    capacity: u64,
    state: NodeState,
    owner: Option<String>,
    counters: Counters,
    resident: Option<Resident>,
}

/// The resident-set bound (see the module doc).
#[derive(Debug)]
struct Resident {
    limit: u64,
    /// Last reading (bytes) and when it was taken; bytes admitted since are added to it.
    reading: u64,
    at: Option<Instant>,
}

impl Resident {
    /// Bytes that may still become resident, at least `wanted` if possible: a reading that
    /// leaves less room is taken again first (memory the heap reused, or that deletes gave
    /// back, shows only in a new reading).
    fn room(&mut self, wanted: u64) -> u64 {
        let stale = self.at.is_none_or(|t| t.elapsed() >= RESIDENT_REFRESH);
        if stale || self.limit.saturating_sub(self.reading) < wanted {
            if let Some(now) = resident_bytes() {
                self.reading = now;
            }
            self.at = Some(Instant::now());
        }
        self.limit.saturating_sub(self.reading)
    }
}

/// This process's resident set size, from `/proc/self/statm` (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE)
}

/// The chunk store. All operations take a short lock; CRCs are computed outside it.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
}

/// What a GET returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadChunk {
    /// Length of the whole chunk.
    pub chunk_len: u64,
    /// Offset of `data` within the chunk.
    pub offset: u64,
    /// CRC32C of `data`.
    pub crc32c: u32,
    /// The bytes (shares the stored buffer).
    pub data: Bytes,
}

impl Store {
    /// An empty store that may hold `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Store {
        Store {
            inner: Mutex::new(Inner {
                chunks: BTreeMap::new(),
                used: 0,
                capacity: capacity_bytes,
                state: NodeState::EMPTY,
                owner: None,
                counters: Counters::default(),
                resident: None,
            }),
        }
    }

    /// Refuse chunks that would take the process's resident set over `limit` bytes (`None`:
    /// no such bound; the default).
    pub fn set_resident_limit(&self, limit: Option<u64>) {
        self.lock().resident = limit.map(|limit| Resident {
            limit,
            reading: 0,
            at: None,
        });
    }

    /// Capacity of a function of `memory_mb` MiB that reserves `overhead_mb` MiB.
    pub fn capacity_for(memory_mb: u64, overhead_mb: u64) -> u64 {
        memory_mb.saturating_sub(overhead_mb) * 1024 * 1024
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is a
        // single insert/remove plus counters), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Would a new chunk of `len` bytes fit (ignoring a chunk it might replace)? Used to refuse
    /// a put before its body is received.
    pub fn fits(&self, len: u64) -> bool {
        let needed = data_charge(usize::try_from(len).unwrap_or(usize::MAX))
            + ChunkId::MAX_LEN as u64
            + CHUNK_OVERHEAD;
        needed <= self.free_for(needed)
    }

    /// Bytes free now: capacity left, and room under the resident limit if one is set.
    pub fn free(&self) -> u64 {
        self.free_for(0)
    }

    fn free_for(&self, wanted: u64) -> u64 {
        let mut g = self.lock();
        let free = g.capacity.saturating_sub(g.used);
        match &mut g.resident {
            Some(r) => free.min(r.room(wanted)),
            None => free,
        }
    }

    /// Store `data` under `id` after checking it against the sender's `crc`. Replaces an
    /// existing chunk of the same id (whose space counts as free for the fit check).
    pub fn put(&self, id: ChunkId, crc: u32, data: Bytes) -> Result<Ack, StoreError> {
        let actual = crc32c::crc32c(&data);
        if actual != crc {
            self.lock().counters.errors += 1;
            return Err(StoreError::Corrupt {
                expected: crc,
                actual,
            });
        }
        // The data is resident already (received); a small chunk's copy adds to it.
        let (data, copied) = if data.len() < COPY_BELOW {
            (Bytes::copy_from_slice(&data), data.len() as u64)
        } else {
            (data, 0)
        };
        let id = id.detached();
        let needed = charge(&id, data.len());
        let mut g = self.lock();
        let replaced = g
            .chunks
            .get(&id)
            .map(|e| charge(&id, e.data.len()))
            .unwrap_or(0);
        let free = g.capacity.saturating_sub(g.used) + replaced;
        let grows = copied + CHUNK_OVERHEAD;
        let room = g.resident.as_mut().map(|r| r.room(grows));
        if needed > free || room.is_some_and(|room| grows > room) {
            g.counters.errors += 1;
            return Err(StoreError::Full {
                needed,
                free: room.map_or(free, |room| free.min(room)),
            });
        }
        if let Some(r) = &mut g.resident {
            r.reading += grows;
        }
        let len = data.len() as u64;
        g.used = g.used - replaced + needed;
        g.state = g.state.advance(Mutation::Put, &id, crc, len);
        g.counters.puts += 1;
        g.counters.bytes_in += len;
        g.chunks.insert(id, Entry { data, crc });
        Ok(ack(&g))
    }

    /// Read `range` of a chunk. The whole stored chunk is re-checked against its CRC first: a
    /// corrupted chunk is an error, never wrong bytes.
    pub fn get(&self, id: &ChunkId, range: ByteRange) -> Result<ReadChunk, StoreError> {
        let entry = {
            let mut g = self.lock();
            match g.chunks.get(id) {
                Some(e) => e.clone(),
                None => {
                    g.counters.errors += 1;
                    return Err(StoreError::NotFound);
                }
            }
        };
        let actual = crc32c::crc32c(&entry.data);
        let len = entry.data.len() as u64;
        let result = if actual != entry.crc {
            Err(StoreError::Corrupt {
                expected: entry.crc,
                actual,
            })
        } else {
            match range.resolve(len) {
                None => Err(StoreError::BadRange {
                    offset: range.offset,
                    len,
                }),
                Some((start, end)) => {
                    let data = entry.data.slice(start as usize..end as usize);
                    let crc32c = if start == 0 && end == len {
                        entry.crc
                    } else {
                        crc32c::crc32c(&data)
                    };
                    Ok(ReadChunk {
                        chunk_len: len,
                        offset: start,
                        crc32c,
                        data,
                    })
                }
            }
        };
        let mut g = self.lock();
        match &result {
            Ok(r) => {
                g.counters.gets += 1;
                g.counters.bytes_out += r.data.len() as u64;
            }
            Err(_) => g.counters.errors += 1,
        }
        result
    }

    /// Remove a chunk; returns whether it was there.
    pub fn delete(&self, id: &ChunkId) -> (bool, Ack) {
        let mut g = self.lock();
        let existed = match g.chunks.remove(id) {
            Some(e) => {
                g.used -= charge(id, e.data.len());
                g.state = g
                    .state
                    .advance(Mutation::Delete, id, e.crc, e.data.len() as u64);
                g.counters.deletes += 1;
                true
            }
            None => false,
        };
        (existed, ack(&g))
    }

    /// Length and CRC of a chunk.
    pub fn stat(&self, id: &ChunkId) -> Result<(u64, u32), StoreError> {
        let g = self.lock();
        g.chunks
            .get(id)
            .map(|e| (e.data.len() as u64, e.crc))
            .ok_or(StoreError::NotFound)
    }

    /// Ids after `after` in ascending order, at most `limit` (clamped to 1..=4096), and whether
    /// more follow.
    pub fn list(&self, after: Option<&ChunkId>, limit: u32) -> (Vec<ChunkInfo>, bool) {
        let limit = limit.clamp(1, MAX_LIST_LIMIT) as usize;
        let g = self.lock();
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut it = g.chunks.range::<ChunkId, _>((lower, Bound::Unbounded));
        let entries: Vec<ChunkInfo> = it
            .by_ref()
            .take(limit)
            .map(|(id, e)| ChunkInfo {
                id: id.clone(),
                len: e.data.len() as u64,
                crc32c: e.crc,
            })
            .collect();
        let more = it.next().is_some();
        (entries, more)
    }

    /// Current state and statistics.
    pub fn ack(&self) -> Ack {
        ack(&self.lock())
    }

    /// Operation counters.
    pub fn counters(&self) -> Counters {
        self.lock().counters
    }

    /// Count an operation refused before it reached the store (a put refused from its header).
    pub fn note_refusal(&self) {
        self.lock().counters.errors += 1;
    }

    /// Drop every chunk; the state becomes empty.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.chunks.clear();
        g.used = 0;
        g.state = NodeState::EMPTY;
        g.owner = None;
    }

    /// Record which node this memory serves; returns the previous owner if it was another node.
    pub fn claim(&self, node_id: &str) -> Option<String> {
        let mut g = self.lock();
        match &g.owner {
            Some(o) if o == node_id => None,
            _ => g.owner.replace(node_id.to_owned()),
        }
    }

    /// Fault injection: flip the first byte of a stored chunk, keeping its recorded CRC.
    pub fn corrupt(&self, id: &ChunkId) -> Result<(), StoreError> {
        let mut g = self.lock();
        let e = g.chunks.get_mut(id).ok_or(StoreError::NotFound)?;
        let mut v = e.data.to_vec();
        match v.first_mut() {
            Some(b) => *b ^= 0xFF,
            None => v.push(0),
        }
        e.data = Bytes::from(v);
        Ok(())
    }
}

fn ack(g: &Inner) -> Ack {
    Ack {
        state: g.state,
        stats: StoreStats {
            used_bytes: g.used,
            chunks: g.chunks.len() as u64,
            capacity_bytes: g.capacity,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &Store, i: u16, data: &[u8]) -> Result<Ack, StoreError> {
        s.put(
            ChunkId::for_object(1, 0, i),
            crc32c::crc32c(data),
            Bytes::copy_from_slice(data),
        )
    }

    #[test]
    fn accounting_and_full() {
        let s = Store::new(10_000);
        let a = put(&s, 0, &[1; 4000]).unwrap();
        assert_eq!(a.stats.used_bytes, 4000 + 22 + CHUNK_OVERHEAD);
        assert_eq!(a.stats.chunks, 1);
        put(&s, 1, &[2; 4000]).unwrap();
        let err = put(&s, 2, &[3; 4000]).unwrap_err();
        assert!(
            matches!(err, StoreError::Full { needed: 4278, free } if free < 4278),
            "{err:?}"
        );
        // replacing a chunk counts its old space as free
        put(&s, 1, &[4; 5000]).unwrap();
        assert_eq!(s.ack().stats.used_bytes, 9000 + 2 * (22 + CHUNK_OVERHEAD));
        let (existed, ack) = s.delete(&ChunkId::for_object(1, 0, 0));
        assert!(existed);
        assert_eq!(ack.stats.chunks, 1);
        put(&s, 2, &[3; 4000]).unwrap();
        assert!(!s.fits(5000));
    }

    /// A chunk's id and bytes arrive as slices of the connection's receive buffer; what the
    /// store keeps must not hold on to that buffer (ids used to: every stored chunk kept the
    /// whole read buffer its request arrived in alive).
    #[test]
    fn a_stored_chunk_pins_only_its_own_bytes() {
        let s = Store::new(1 << 20);
        let mut frame = bytes::BytesMut::with_capacity(64 * 1024);
        frame.extend_from_slice(ChunkId::for_object(5, 0, 0).as_bytes());
        frame.extend_from_slice(&[3u8; 1000]);
        frame.resize(64 * 1024, 0);
        let buf = frame.freeze();
        let id = ChunkId::new(buf.slice(..ChunkId::OBJECT_LEN)).unwrap();
        let data = buf.slice(ChunkId::OBJECT_LEN..ChunkId::OBJECT_LEN + 1000);
        s.put(id, crc32c::crc32c(&data), data).unwrap();
        assert!(
            buf.is_unique(),
            "the store keeps a reference to the receive buffer"
        );
        assert_eq!(
            s.ack().stats.used_bytes,
            charge(&ChunkId::for_object(5, 0, 0), 1000)
        );
    }

    /// Chunks kept in their own mapping are charged whole pages.
    #[test]
    fn large_chunks_are_charged_whole_pages() {
        let s = Store::new(10 << 20);
        let len = COPY_BELOW + 1;
        let a = put(&s, 0, &vec![1; len]).unwrap();
        let pages = (len as u64).div_ceil(PAGE) * PAGE;
        assert_eq!(a.stats.used_bytes, pages + 22 + CHUNK_OVERHEAD);
        let small = put(&s, 1, &[1; 100]).unwrap();
        assert_eq!(
            small.stats.used_bytes - a.stats.used_bytes,
            100 + 22 + CHUNK_OVERHEAD
        );
        assert!(s.fits(5 << 20));
        assert!(!s.fits((10 << 20) - pages));
    }

    /// Over the resident limit, chunks are refused whatever the capacity says.
    #[test]
    fn the_resident_limit_refuses_chunks_the_process_has_no_room_for() {
        let Some(now) = resident_bytes() else {
            return; // not Linux
        };
        let s = Store::new(1 << 30);
        s.set_resident_limit(Some(now + (8 << 20)));
        assert!(s.fits(1 << 20));
        assert!(!s.fits(64 << 20), "64 MiB more would pass the limit");
        assert!(matches!(s.free(), f if f <= 8 << 20));
        s.set_resident_limit(Some(now / 2));
        assert!(matches!(
            put(&s, 0, &[1; 1000]),
            Err(StoreError::Full { free: 0, .. })
        ));
        s.set_resident_limit(None);
        put(&s, 0, &[1; 1000]).unwrap();
    }

    #[test]
    fn crc_checked_on_store_and_read() {
        let s = Store::new(1 << 20);
        let id = ChunkId::for_object(7, 0, 0);
        let err = s
            .put(id.clone(), 1234, Bytes::from_static(b"data"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { expected: 1234, .. }));
        assert_eq!(s.get(&id, ByteRange::ALL), Err(StoreError::NotFound));
        s.put(
            id.clone(),
            crc32c::crc32c(b"hello world"),
            Bytes::from_static(b"hello world"),
        )
        .unwrap();
        let r = s
            .get(
                &id,
                ByteRange {
                    offset: 6,
                    length: Some(5),
                },
            )
            .unwrap();
        assert_eq!(&r.data[..], b"world");
        assert_eq!(r.crc32c, crc32c::crc32c(b"world"));
        assert_eq!((r.chunk_len, r.offset), (11, 6));
        assert!(matches!(
            s.get(
                &id,
                ByteRange {
                    offset: 12,
                    length: None
                }
            ),
            Err(StoreError::BadRange { .. })
        ));
        s.corrupt(&id).unwrap();
        assert!(matches!(
            s.get(&id, ByteRange::ALL),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            s.get(
                &id,
                ByteRange {
                    offset: 6,
                    length: Some(5)
                }
            ),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn state_follows_mutations_and_reset() {
        let s = Store::new(1 << 20);
        assert!(s.ack().state.is_empty());
        let a = put(&s, 0, b"x").unwrap();
        assert_eq!(a.state.term, 1);
        let (_, b) = s.delete(&ChunkId::for_object(1, 0, 0));
        assert_eq!(b.state.term, 2);
        let (existed, c) = s.delete(&ChunkId::for_object(1, 0, 0));
        assert!(!existed);
        assert_eq!(c.state, b.state, "a no-op delete is not a mutation");
        s.reset();
        assert!(s.ack().state.is_empty());
        assert_eq!(s.ack().stats.used_bytes, 0);
    }

    #[test]
    fn list_pages_in_order() {
        let s = Store::new(1 << 20);
        for i in (0..10).rev() {
            put(&s, i, &[i as u8]).unwrap();
        }
        let (page, more) = s.list(None, 4);
        assert!(more);
        assert_eq!(
            page.iter()
                .map(|e| e.id.object_parts().unwrap().2)
                .collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let (page, more) = s.list(Some(&page[3].id), 100);
        assert!(!more);
        assert_eq!(page.len(), 6);
        assert_eq!(page[0].id.object_parts().unwrap().2, 4);
    }

    #[test]
    fn ownership() {
        let s = Store::new(10);
        assert_eq!(s.claim("node-1"), None);
        assert_eq!(s.claim("node-1"), None);
        assert_eq!(s.claim("node-2"), Some("node-1".to_owned()));
    }
}
