//! Chunk bookkeeping shared by the function-memory policies: which object has which chunk on
//! which function, and how many bytes every function holds. Deterministic (slot order, BTree
//! sets), no policy logic.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;

use crate::types::FunctionId;

/// SipHash with fixed keys: deterministic across runs (we never iterate the map anyway).
type FixedState = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// Handle of an object in the table.
pub(crate) type ObjRef = u32;

#[derive(Debug, Clone)]
pub(crate) struct Obj {
    pub key: Box<str>,
    pub chunk_size: u64,
    pub chunks_per_piece: u32,
    pub data_chunks: u32,
    pub chunks: Vec<Option<FunctionId>>,
    /// Bucket sequence (sliding window) or LRU stamp (pool).
    pub tag: u64,
}

impl Obj {
    /// Every piece still has at least `d` chunks.
    pub fn decodable(&self) -> bool {
        let cpp = self.chunks_per_piece.max(1) as usize;
        self.chunks
            .chunks(cpp)
            .all(|piece| piece.iter().filter(|c| c.is_some()).count() >= self.data_chunks as usize)
    }
}

#[derive(Debug, Clone, Default)]
struct FnMem {
    used: u64,
    chunks: BTreeSet<(ObjRef, u32)>,
}

#[derive(Debug, Clone)]
pub(crate) struct ChunkTable {
    objs: Vec<Option<Obj>>,
    free: Vec<ObjRef>,
    index: HashMap<Box<str>, ObjRef, FixedState>,
    fns: Vec<FnMem>,
    stored: u64,
    count: u64,
}

impl ChunkTable {
    pub fn new(functions: u32) -> Self {
        ChunkTable {
            objs: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            fns: vec![FnMem::default(); functions as usize],
            stored: 0,
            count: 0,
        }
    }

    pub fn slot(&self, key: &str) -> Option<ObjRef> {
        self.index.get(key).copied()
    }

    pub fn obj(&self, slot: ObjRef) -> &Obj {
        self.objs[slot as usize].as_ref().expect("live slot")
    }

    pub fn obj_mut(&mut self, slot: ObjRef) -> &mut Obj {
        self.objs[slot as usize].as_mut().expect("live slot")
    }

    pub fn used(&self, f: FunctionId) -> u64 {
        self.fns[f.index()].used
    }

    pub fn chunk_count(&self, f: FunctionId) -> u64 {
        self.fns[f.index()].chunks.len() as u64
    }

    /// Chunks on `f`, in (slot, index) order.
    pub fn chunks_on(&self, f: FunctionId) -> impl Iterator<Item = (ObjRef, u32)> + '_ {
        self.fns[f.index()].chunks.iter().copied()
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    /// Inserts an object whose chunks are all placed. The key must not be present.
    pub fn insert(&mut self, obj: Obj) -> ObjRef {
        debug_assert!(!self.index.contains_key(&obj.key));
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.objs.push(None);
                (self.objs.len() - 1) as ObjRef
            }
        };
        for (i, f) in obj.chunks.iter().enumerate() {
            if let Some(f) = f {
                let m = &mut self.fns[f.index()];
                m.used += obj.chunk_size;
                m.chunks.insert((slot, i as u32));
                self.stored += obj.chunk_size;
            }
        }
        self.index.insert(obj.key.clone(), slot);
        self.objs[slot as usize] = Some(obj);
        self.count += 1;
        slot
    }

    /// Removes an object and frees its chunks.
    pub fn remove(&mut self, slot: ObjRef) -> Obj {
        let obj = self.objs[slot as usize].take().expect("live slot");
        for (i, f) in obj.chunks.iter().enumerate() {
            if let Some(f) = f {
                let m = &mut self.fns[f.index()];
                m.used -= obj.chunk_size;
                m.chunks.remove(&(slot, i as u32));
                self.stored -= obj.chunk_size;
            }
        }
        self.index.remove(&obj.key);
        self.free.push(slot);
        self.count -= 1;
        obj
    }

    /// Moves chunk `index` of `slot` to `to` (from wherever it was, or from nowhere if lost).
    pub fn move_chunk(&mut self, slot: ObjRef, index: u32, to: FunctionId) {
        let obj = self.objs[slot as usize].as_mut().expect("live slot");
        let size = obj.chunk_size;
        if let Some(from) = obj.chunks[index as usize] {
            let m = &mut self.fns[from.index()];
            m.used -= size;
            m.chunks.remove(&(slot, index));
            self.stored -= size;
        }
        obj.chunks[index as usize] = Some(to);
        let m = &mut self.fns[to.index()];
        m.used += size;
        m.chunks.insert((slot, index));
        self.stored += size;
    }

    /// `f`'s memory is gone: marks its chunks lost and returns the slots that had chunks there.
    pub fn lose_function(&mut self, f: FunctionId) -> Vec<ObjRef> {
        let m = std::mem::take(&mut self.fns[f.index()]);
        let mut slots: Vec<ObjRef> = Vec::new();
        for (slot, index) in m.chunks {
            let obj = self.objs[slot as usize].as_mut().expect("live slot");
            obj.chunks[index as usize] = None;
            self.stored -= obj.chunk_size;
            if slots.last() != Some(&slot) {
                slots.push(slot);
            }
        }
        slots
    }
}
