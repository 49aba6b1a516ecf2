//! The tier's in-memory index: what it knows of each key.
//!
//! A key is absent (the bucket has whatever it has), an object the tier holds (in function
//! memory, in the journal, or both), or deleted-but-not-yet-persisted. The index is rebuilt
//! from the journal at start; clean objects are learnt again on read misses.
//!
//! Fills (objects read from the bucket and admitted) race with writes: a fill may only install
//! what it read if no write or delete of the key happened since it started reading. Mutations
//! are stamped with a global counter; a fill remembers the counter at its start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::ec::Codec;
use super::meta::ObjectMeta;

/// Function index in the deployed pool (`{prefix}{i}`).
pub type FunctionId = u32;

/// Where an object's chunks are: the one record of it (the policy learns placements from the
/// tier's outcomes, see [`crate::Placer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The code.
    pub codec: Codec,
    /// Object bytes per piece (the last piece may be shorter).
    pub piece_size: u64,
    /// For each piece, the function of each of its `d + p` chunks.
    pub functions: Vec<Vec<FunctionId>>,
}

impl Layout {
    /// Number of pieces of an object of `size` bytes.
    pub fn piece_count(size: u64, piece_size: u64) -> u64 {
        size.div_ceil(piece_size.max(1))
    }

    /// Offset and length of piece `i` of an object of `size` bytes.
    pub fn piece_span(&self, size: u64, i: u64) -> (u64, u64) {
        let off = i * self.piece_size;
        (off, self.piece_size.min(size.saturating_sub(off)))
    }
}

/// An object the tier holds (in function memory, in the journal, or both).
#[derive(Debug)]
pub struct CachedObject {
    /// Names its chunks (unique per write).
    pub(crate) id: u128,
    /// Length.
    pub(crate) size: u64,
    /// Metadata.
    pub(crate) meta: ObjectMeta,
    /// Chunks in function memory, if placed.
    pub(crate) layout: Option<Layout>,
    /// The journal record holding its bytes while the bucket does not have them.
    pub(crate) journal_seq: Option<u64>,
}

impl CachedObject {
    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What GET and HEAD answer with (ETag, Last-Modified, headers).
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// Whether its bytes are in the journal: a write the bucket may not have yet (its
    /// metadata, tags included, is then complete; an object read from the bucket has no tags).
    pub fn is_journaled(&self) -> bool {
        self.journal_seq.is_some()
    }
}

/// What the index knows of a key.
#[derive(Debug, Clone)]
pub enum KeyState {
    /// The tier holds this object.
    Object(Arc<CachedObject>),
    /// Deleted; the delete (journal record `seq`) is not yet in the bucket.
    Deleted {
        /// Journal record of the delete.
        seq: u64,
    },
}

type Key = (String, String);

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, KeyState>,
    counter: u64,
    /// Last mutation counter of keys mutated while fills are in flight.
    recent: HashMap<Key, u64>,
    /// Counter at start of each fill in flight (with a multiplicity).
    fills: BTreeMap<u64, usize>,
}

/// The index.
#[derive(Default)]
pub(crate) struct Index {
    inner: Mutex<Inner>,
}

/// A fill in progress; see [`Index::begin_fill`].
#[derive(Debug)]
pub(crate) struct FillTicket {
    start: u64,
}

impl Index {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the index knows of a key.
    pub fn get(&self, bucket: &str, key: &str) -> Option<KeyState> {
        self.lock()
            .slots
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }

    /// Records a write or delete of the key (journal record `seq`): installs `slot` unless a
    /// newer record is already installed. Returns the object it replaced (to free its chunks),
    /// or gives `slot` back when it lost to a newer one.
    pub fn write(
        &self,
        bucket: &str,
        key: &str,
        seq: u64,
        slot: KeyState,
    ) -> Result<Option<Arc<CachedObject>>, KeyState> {
        let mut g = self.lock();
        let k = (bucket.to_owned(), key.to_owned());
        let newer = match g.slots.get(&k) {
            Some(KeyState::Deleted { seq: s }) => *s > seq,
            Some(KeyState::Object(o)) => o.journal_seq.is_some_and(|s| s > seq),
            None => false,
        };
        if newer {
            return Err(slot);
        }
        Self::mutated(&mut g, &k);
        let old = g.slots.insert(k, slot);
        Ok(match old {
            Some(KeyState::Object(o)) => Some(o),
            _ => None,
        })
    }

    fn mutated(g: &mut Inner, k: &Key) {
        g.counter += 1;
        if !g.fills.is_empty() {
            let c = g.counter;
            g.recent.insert(k.clone(), c);
        }
    }

    /// Forgets the key (an invalidation by an operation the tier passes through, such as
    /// CopyObject or CompleteMultipartUpload onto it). Returns the object to free.
    pub fn invalidate(&self, bucket: &str, key: &str) -> Option<Arc<CachedObject>> {
        let mut g = self.lock();
        let k = (bucket.to_owned(), key.to_owned());
        Self::mutated(&mut g, &k);
        match g.slots.remove(&k) {
            Some(KeyState::Object(o)) => Some(o),
            _ => None,
        }
    }

    /// The bucket now holds record `seq`: the object is clean (or the delete is done).
    pub fn persisted(&self, bucket: &str, key: &str, seq: u64) {
        let mut g = self.lock();
        let k = (bucket.to_owned(), key.to_owned());
        let replace = match g.slots.get(&k) {
            Some(KeyState::Deleted { seq: s }) if *s == seq => {
                g.slots.remove(&k);
                return;
            }
            Some(KeyState::Object(o)) if o.journal_seq == Some(seq) => o.clone(),
            _ => return,
        };
        if replace.layout.is_none() {
            // Neither in memory nor dirty: nothing left to hold.
            g.slots.remove(&k);
            return;
        }
        let clean = CachedObject {
            id: replace.id,
            size: replace.size,
            meta: replace.meta.clone(),
            layout: replace.layout.clone(),
            journal_seq: None,
        };
        g.slots.insert(k, KeyState::Object(Arc::new(clean)));
    }

    /// Write `id` of the key leaves memory: its layout is dropped and returned (for the caller
    /// to delete the chunks). A dirty object stays, served from the journal; a clean one is
    /// forgotten. `None` if the key holds another write, or this one is not in memory.
    pub fn evict(&self, bucket: &str, key: &str, id: u128) -> Option<Layout> {
        let mut g = self.lock();
        let k = (bucket.to_owned(), key.to_owned());
        let Some(KeyState::Object(o)) = g.slots.get(&k) else {
            return None;
        };
        if o.id != id {
            return None;
        }
        let layout = o.layout.clone()?;
        if o.journal_seq.is_none() {
            g.slots.remove(&k);
        } else {
            let kept = CachedObject {
                id: o.id,
                size: o.size,
                meta: o.meta.clone(),
                layout: None,
                journal_seq: o.journal_seq,
            };
            g.slots.insert(k, KeyState::Object(Arc::new(kept)));
        }
        Some(layout)
    }

    /// Starts a fill: reading the key from the bucket to admit it.
    pub fn begin_fill(&self) -> FillTicket {
        let mut g = self.lock();
        let start = g.counter;
        *g.fills.entry(start).or_default() += 1;
        FillTicket { start }
    }

    fn end_fill(g: &mut Inner, t: &FillTicket) {
        if let Some(n) = g.fills.get_mut(&t.start) {
            *n -= 1;
            if *n == 0 {
                g.fills.remove(&t.start);
            }
        }
        match g.fills.keys().next() {
            None => g.recent.clear(),
            Some(&oldest) => g.recent.retain(|_, c| *c > oldest),
        }
    }

    /// Finishes a fill: installs `obj` if the key was neither written nor deleted since the
    /// fill began and the tier does not already hold it. Returns whether it was installed.
    pub fn finish_fill(&self, t: FillTicket, bucket: &str, key: &str, obj: CachedObject) -> bool {
        let mut g = self.lock();
        let k = (bucket.to_owned(), key.to_owned());
        let raced = g.recent.get(&k).is_some_and(|c| *c > t.start);
        let ok = !raced && !g.slots.contains_key(&k);
        if ok {
            g.slots.insert(k, KeyState::Object(Arc::new(obj)));
        }
        Self::end_fill(&mut g, &t);
        ok
    }

    /// Abandons a fill.
    pub fn abandon_fill(&self, t: FillTicket) {
        let mut g = self.lock();
        Self::end_fill(&mut g, &t);
    }

    /// Objects whose chunks live on function `f`.
    pub fn objects_on(&self, f: FunctionId) -> Vec<(String, String, Arc<CachedObject>)> {
        self.lock()
            .slots
            .iter()
            .filter_map(|((b, k), s)| match s {
                KeyState::Object(o)
                    if o.layout
                        .as_ref()
                        .is_some_and(|l| l.functions.iter().any(|p| p.contains(&f))) =>
                {
                    Some((b.clone(), k.clone(), o.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Chunks the layouts put on each function (functions with none left out).
    pub fn chunk_counts(&self) -> std::collections::BTreeMap<FunctionId, u64> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.lock().slots.values() {
            if let KeyState::Object(o) = s
                && let Some(l) = &o.layout
            {
                for f in l.functions.iter().flatten() {
                    *out.entry(*f).or_default() += 1;
                }
            }
        }
        out
    }

    /// Replaces the layout of object `id` (after relocation or recovery).
    pub fn set_layout(&self, bucket: &str, key: &str, id: u128, layout: Layout) -> bool {
        let mut g = self.lock();
        let k = (bucket.to_owned(), key.to_owned());
        let Some(KeyState::Object(o)) = g.slots.get(&k) else {
            return false;
        };
        if o.id != id {
            return false;
        }
        let moved = CachedObject {
            id: o.id,
            size: o.size,
            meta: o.meta.clone(),
            layout: Some(layout),
            journal_seq: o.journal_seq,
        };
        g.slots.insert(k, KeyState::Object(Arc::new(moved)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: u128, seq: Option<u64>) -> CachedObject {
        CachedObject {
            id,
            size: 10,
            meta: ObjectMeta::default(),
            layout: Some(Layout {
                codec: Codec::new(2, 1).unwrap(),
                piece_size: 10,
                functions: vec![vec![0, 1, 2]],
            }),
            journal_seq: seq,
        }
    }

    #[test]
    fn newer_writes_win() {
        let ix = Index::default();
        assert!(
            ix.write("b", "k", 5, KeyState::Object(Arc::new(obj(1, Some(5)))))
                .unwrap()
                .is_none()
        );
        // an older record arriving late loses
        assert!(
            ix.write("b", "k", 4, KeyState::Object(Arc::new(obj(2, Some(4)))))
                .is_err()
        );
        // a newer delete wins and hands back the object to free
        let old = ix
            .write("b", "k", 6, KeyState::Deleted { seq: 6 })
            .unwrap()
            .unwrap();
        assert_eq!(old.id, 1);
        // persisting the stale record changes nothing; persisting the delete clears the key
        ix.persisted("b", "k", 5);
        assert!(matches!(
            ix.get("b", "k"),
            Some(KeyState::Deleted { seq: 6 })
        ));
        ix.persisted("b", "k", 6);
        assert!(ix.get("b", "k").is_none());
    }

    #[test]
    fn persisted_objects_become_clean() {
        let ix = Index::default();
        ix.write("b", "k", 1, KeyState::Object(Arc::new(obj(1, Some(1)))))
            .unwrap();
        ix.persisted("b", "k", 1);
        let Some(KeyState::Object(o)) = ix.get("b", "k") else {
            panic!()
        };
        assert_eq!(o.journal_seq, None);
        // losing the chunks of a clean object forgets it
        assert!(ix.evict("b", "k", 1).is_some());
        assert!(ix.get("b", "k").is_none());
    }

    #[test]
    fn fills_lose_to_concurrent_writes() {
        let ix = Index::default();
        let t = ix.begin_fill();
        ix.write("b", "k", 1, KeyState::Deleted { seq: 1 }).unwrap();
        ix.persisted("b", "k", 1);
        // the key is absent again, but it changed during the fill: the fill must not install
        assert!(!ix.finish_fill(t, "b", "k", obj(9, None)));
        assert!(ix.get("b", "k").is_none());
        // an undisturbed fill installs
        let t = ix.begin_fill();
        ix.write("b", "other", 2, KeyState::Deleted { seq: 2 })
            .unwrap();
        assert!(ix.finish_fill(t, "b", "k", obj(10, None)));
        assert!(matches!(ix.get("b", "k"), Some(KeyState::Object(o)) if o.id == 10));
    }
}
