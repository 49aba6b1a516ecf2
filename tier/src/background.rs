//! Whole-object admissions started by ranged GET misses.
//!
//! The aws CLI, boto3's `download_file`, s5cmd and rclone download a large object as parallel
//! ranged GETs. A ranged miss cannot be admitted from its own body (it holds one range), so the
//! first ranged miss of a key starts **one** background GET of the whole object from the bucket
//! (`If-Match` the ETag the range came with, so the version admitted is the one the client is
//! reading) whose bytes are admitted as a whole-object miss's are ([`Tier::start_admission`]):
//! the other ranged GETs of the same download find the fill in flight and start nothing.
//! A whole-object miss is admitted from its own body as it streams to the client; when the
//! client outruns that admission (it never waits for it), a background fill takes over.
//!
//! Bounded: at most `tier.background_fills` run at once (a ranged miss past that is served from
//! the bucket and not admitted, counted in `gateway_tier_background_fills_skipped_total`); a
//! fill whose bucket goes quiet for [`IDLE`] is abandoned; no client ever waits for one. A fill
//! that raced a write of its key is discarded ([`crate::index::Index::begin_fill`] is taken
//! before the bucket is read). A partially admitted object is not served: a download's ranges
//! come from memory once the whole object is placed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Tier;
use crate::index::FillTicket;
use crate::meta::ObjectMeta;

/// Longest a background fill waits for the bucket (its answer, then each part of its body).
pub(crate) const IDLE: Duration = Duration::from_secs(30);

/// The background fills in flight: one per key, at most `slots` at once.
pub(crate) struct BackgroundFills {
    keys: Mutex<HashSet<(String, String)>>,
    slots: Arc<Semaphore>,
}

impl BackgroundFills {
    /// At most `n` fills at once.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            keys: Mutex::default(),
            slots: Arc::new(Semaphore::new(n)),
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fills in flight.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.keys().len()
    }
}

/// A key's fill in flight: its slot, released (and the key free for another fill) on drop.
struct InFlight {
    tier: Arc<Tier>,
    path: (String, String),
    _slot: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tier.background.keys().remove(&self.path);
    }
}

/// Why a background fill was not started.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotStarted {
    /// The tier does not admit objects of this size, or the range carried no ETag.
    NotAdmitted,
    /// One is running for the key.
    Running,
    /// The tier holds the key now (written or admitted since the miss).
    Held,
    /// `background_fills` are running.
    Busy,
}

impl Tier {
    /// A ranged GET of `bucket/key` missed and was served from the bucket, whose answer says
    /// the object has `size` bytes and `meta`: starts reading the whole object from the bucket
    /// in the background and admitting it, unless the tier would not admit it, a fill of the
    /// key is running, the tier holds the key by now, or `background_fills` are busy. Returns
    /// at once.
    pub fn admit_in_background(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        size: u64,
        meta: ObjectMeta,
    ) {
        let _ = self.start_background_fill(bucket, key, size, meta);
    }

    pub(crate) fn start_background_fill(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        size: u64,
        meta: ObjectMeta,
    ) -> Result<(), NotStarted> {
        if !self.admits(size) || meta.etag.is_empty() {
            return Err(NotStarted::NotAdmitted);
        }
        let path = (bucket.to_owned(), key.to_owned());
        let slot = {
            let mut keys = self.background.keys();
            if keys.contains(&path) {
                return Err(NotStarted::Running);
            }
            let Ok(slot) = self.background.slots.clone().try_acquire_owned() else {
                self.metrics.background_fills_skipped.inc();
                return Err(NotStarted::Busy);
            };
            keys.insert(path.clone());
            slot
        };
        let flight = InFlight {
            tier: self.clone(),
            path,
            _slot: slot,
        };
        // Taken before the bucket is read: a write of the key from now on makes the fill stale.
        let ticket = self.index.begin_fill();
        if self.lookup(bucket, key).is_some() {
            self.index.abandon_fill(ticket);
            return Err(NotStarted::Held);
        }
        self.metrics.background_fills.inc();
        let tier = self.clone();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        tokio::spawn(async move {
            tier.fill_from_bucket(&bucket, &key, size, meta, ticket)
                .await;
            drop(flight);
        });
        Ok(())
    }

    /// Reads the whole object from the bucket and admits it.
    async fn fill_from_bucket(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        size: u64,
        meta: ObjectMeta,
        ticket: FillTicket,
    ) {
        let get = self
            .client
            .get_object()
            .bucket(bucket)
            .key(crate::backend::sdk_key(key))
            .if_match(format!("\"{}\"", meta.etag))
            .send();
        let out = match tokio::time::timeout(IDLE, get).await {
            Ok(Ok(out)) if out.content_length == i64::try_from(size).ok() => out,
            other => {
                let why = match other {
                    Ok(Ok(out)) => format!(
                        "the bucket answered {:?} bytes, the range said {size}",
                        out.content_length
                    ),
                    Ok(Err(e)) => crate::error::BackendError::from_sdk(&e).to_string(),
                    Err(_) => format!("no answer within {IDLE:?}"),
                };
                tracing::debug!(bucket, key, why, "background fill not started");
                self.index.abandon_fill(ticket);
                self.metrics.admission_failures.inc();
                return;
            }
        };
        let Some(tx) = self.start_admission(bucket, key, size, meta, ticket, false) else {
            return;
        };
        let mut body = out.body;
        loop {
            match tokio::time::timeout(IDLE, body.next()).await {
                Ok(Some(Ok(b))) => {
                    if tx.send(b).await.is_err() {
                        // The admission gave up (a piece could not be placed).
                        return;
                    }
                }
                // All of it sent; the admission installs the object.
                Ok(None) => return,
                // Dropping `tx` short of `size` bytes abandons the admission.
                Ok(Some(Err(e))) => {
                    tracing::debug!(bucket, key, error = %e, "background fill: the bucket's body failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(bucket, key, "background fill: the bucket went quiet");
                    return;
                }
            }
        }
    }
}
