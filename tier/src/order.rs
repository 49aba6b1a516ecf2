//! The order of a key's writes: one commit at a time per key.
//!
//! A key's current version is decided at one point, its commit: a write-back PUT or journaled
//! DELETE takes the key's lock, then its journal sequence number, makes the record durable,
//! installs it in the index and hands it to the persister, and only then lets the next writer
//! of the key in. So for every key, sequence order = commit order = index order = the order
//! the persister receives records in, and the write acknowledged last is the one the index
//! serves and the bucket ends up with (last writer wins by commit time, as in S3). Writes the
//! tier passes straight to the bucket (a small PUT, CopyObject or CompleteMultipartUpload onto
//! the key, a DELETE of a clean key, tagging) hold the same lock around their bucket call, so
//! they too are ordered with the write-back commits of the key. Different keys never wait for
//! each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Path = (String, String);

/// The per-key locks (an entry exists only while someone holds or waits for it).
#[derive(Default)]
pub(crate) struct KeyLocks {
    map: Mutex<HashMap<Path, Arc<tokio::sync::Mutex<()>>>>,
}

/// The right to commit a write of one key; released on drop.
pub struct KeyGuard {
    guard: Option<OwnedMutexGuard<()>>,
    locks: Arc<KeyLocks>,
    path: Path,
}

impl KeyGuard {
    /// Bucket and key.
    pub fn bucket(&self) -> &str {
        &self.path.0
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.path.1
    }
}

impl KeyLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Path, Arc<tokio::sync::Mutex<()>>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for the key's lock.
    pub(crate) async fn lock(self: &Arc<Self>, bucket: &str, key: &str) -> KeyGuard {
        let path = (bucket.to_owned(), key.to_owned());
        let m = self.map().entry(path.clone()).or_default().clone();
        let guard = m.lock_owned().await;
        KeyGuard {
            guard: Some(guard),
            locks: self.clone(),
            path,
        }
    }

    /// Keys with a lock entry (held or awaited).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // Every holder and waiter owns a clone taken under the map's lock: only the map's own
        // reference left means nobody needs the entry.
        if map
            .get(&self.path)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_key_and_entries_are_dropped() {
        let locks = Arc::new(KeyLocks::default());
        let a = locks.lock("b", "k").await;
        // another key is not held up
        let other = tokio::time::timeout(Duration::from_millis(100), locks.lock("b", "j"))
            .await
            .expect("a different key");
        drop(other);
        // the same key waits until the first guard is dropped
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.lock("b", "k").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "a second writer of the key must wait"
        );
        drop(a);
        let b = waiter.await.unwrap();
        assert_eq!((b.bucket(), b.key()), ("b", "k"));
        drop(b);
        assert_eq!(locks.len(), 0, "no entry is left behind");
    }
}
