//! Metrics of the tier: hits, misses, bytes by source, decodes, dirty data, persistence.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The tier's metrics.
#[derive(Clone, Default)]
pub struct TierMetrics {
    /// GETs served from function memory.
    pub hits: Counter,
    /// GETs the tier could not serve (read from the bucket).
    pub misses: Counter,
    /// GETs of dirty objects served from the local journal.
    pub journal_reads: Counter,
    /// Object bytes sent from function memory.
    pub bytes_from_tier: Counter,
    /// Object bytes sent from the bucket.
    pub bytes_from_bucket: Counter,
    /// Object bytes sent from the journal.
    pub bytes_from_journal: Counter,
    /// Pieces rebuilt with parity (a data chunk was missing or late).
    pub decodes: Counter,
    /// Pieces read without parity.
    pub direct_pieces: Counter,
    /// Objects admitted into function memory (writes and read misses).
    pub admitted: Counter,
    /// Objects not admitted: chunks could not be placed, or a background fill's bucket read
    /// failed.
    pub admission_failures: Counter,
    /// Whole-object admissions started by ranged GET misses.
    pub background_fills: Counter,
    /// Ranged GET misses not admitted because `background_fills` were already running.
    pub background_fills_skipped: Counter,
    /// Multipart uploads written back, open (created, not completed or aborted).
    pub multipart_uploads: Gauge,
    /// Multipart uploads written back and completed (acknowledged without the bucket).
    pub multipart_completed: Counter,
    /// Multipart uploads moved to the bucket because the journal could not hold a part.
    pub multipart_forwarded: Counter,
    /// Bytes acknowledged but not yet in the bucket.
    pub dirty_bytes: Gauge,
    /// Keys with writes not yet in the bucket.
    pub dirty_objects: Gauge,
    /// Seconds the oldest unpersisted write has waited.
    pub persistence_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Writes persisted to the bucket.
    pub persisted: Counter,
    /// Failed persistence attempts (retried, or dead-lettered when refused).
    pub persist_failures: Counter,
    /// Keys whose newest write the bucket refused (dead letters: served, not retried).
    pub dead_letters: Gauge,
    /// Bytes of dead letters (they hold journal space).
    pub dead_letter_bytes: Gauge,
    /// Writes that became dead letters.
    pub dead_lettered: Counter,
    /// PUTs refused with 503 SlowDown because the journal was full.
    pub slowdowns: Counter,
    /// Chunks moved by promotion or repair after reads.
    pub relocated_chunks: Counter,
}

impl TierMetrics {
    /// Registers every metric under `gateway_tier_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("gateway_tier");
        r.register("hits", "GETs served from function memory", m.hits.clone());
        r.register("misses", "GETs read from the bucket", m.misses.clone());
        r.register(
            "journal_reads",
            "GETs of unpersisted objects served from the journal",
            m.journal_reads.clone(),
        );
        r.register(
            "bytes_from_tier",
            "Object bytes sent from function memory",
            m.bytes_from_tier.clone(),
        );
        r.register(
            "bytes_from_bucket",
            "Object bytes sent from the bucket",
            m.bytes_from_bucket.clone(),
        );
        r.register(
            "bytes_from_journal",
            "Object bytes sent from the journal",
            m.bytes_from_journal.clone(),
        );
        r.register("decodes", "Pieces rebuilt from parity", m.decodes.clone());
        r.register(
            "direct_pieces",
            "Pieces read from their data chunks",
            m.direct_pieces.clone(),
        );
        r.register(
            "admitted",
            "Objects placed into function memory",
            m.admitted.clone(),
        );
        r.register(
            "admission_failures",
            "Objects not admitted: chunks not placed, or a background fill's bucket read failed",
            m.admission_failures.clone(),
        );
        r.register(
            "background_fills",
            "Whole-object admissions started by ranged GET misses",
            m.background_fills.clone(),
        );
        r.register(
            "background_fills_skipped",
            "Ranged GET misses not admitted because the background fills were all busy",
            m.background_fills_skipped.clone(),
        );
        r.register(
            "multipart_uploads",
            "Multipart uploads written back by the gateway, open",
            m.multipart_uploads.clone(),
        );
        r.register(
            "multipart_completed",
            "Multipart uploads written back by the gateway and completed",
            m.multipart_completed.clone(),
        );
        r.register(
            "multipart_forwarded",
            "Multipart uploads moved to the bucket because the journal could not hold a part",
            m.multipart_forwarded.clone(),
        );
        r.register(
            "dirty_bytes",
            "Acknowledged bytes not yet in the bucket",
            m.dirty_bytes.clone(),
        );
        r.register(
            "dirty_objects",
            "Keys with writes not yet in the bucket",
            m.dirty_objects.clone(),
        );
        r.register(
            "persistence_lag_seconds",
            "Age of the oldest write not yet in the bucket",
            m.persistence_lag_seconds.clone(),
        );
        r.register(
            "persisted",
            "Writes persisted to the bucket",
            m.persisted.clone(),
        );
        r.register(
            "persist_failures",
            "Failed persistence attempts (retried, or dead-lettered when refused)",
            m.persist_failures.clone(),
        );
        r.register(
            "dead_letters",
            "Keys whose newest acknowledged write the bucket refused (served, not retried)",
            m.dead_letters.clone(),
        );
        r.register(
            "dead_letter_bytes",
            "Bytes of dead letters in the journal",
            m.dead_letter_bytes.clone(),
        );
        r.register(
            "dead_lettered",
            "Acknowledged writes the bucket refused for good",
            m.dead_lettered.clone(),
        );
        r.register(
            "slowdowns",
            "PUTs refused with SlowDown: journal full",
            m.slowdowns.clone(),
        );
        r.register(
            "relocated_chunks",
            "Chunks moved by promotion or repair",
            m.relocated_chunks.clone(),
        );
        m
    }
}

/// Labels of recovery counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PhaseLabels {
    /// `started`, `finished` or `failed`.
    pub phase: String,
}

/// Recovery of reclaimed functions.
#[derive(Clone)]
pub struct RecoveryMetrics {
    /// Recoveries started.
    pub started: Counter,
    /// Recoveries that restored every chunk.
    pub finished: Counter,
    /// Recoveries with chunks that could not be restored.
    pub failed: Counter,
    /// Chunks restored.
    pub chunks: Counter,
    /// Time from start to the last chunk restored.
    pub duration: prometheus_client::metrics::histogram::Histogram,
    /// Pieces with a chunk being restored (returns to 0).
    pub below_redundancy: Gauge,
}

impl RecoveryMetrics {
    /// Registers `gateway_recoveries_total{phase}`, `gateway_recovery_duration_seconds`,
    /// `gateway_recovered_chunks_total` and `gateway_pieces_below_redundancy`.
    pub fn register(registry: &mut Registry) -> Self {
        let phases: prometheus_client::metrics::family::Family<PhaseLabels, Counter> =
            Default::default();
        let phase = |p: &str| {
            phases
                .get_or_create(&PhaseLabels { phase: p.into() })
                .clone()
        };
        let m = Self {
            started: phase("started"),
            finished: phase("finished"),
            failed: phase("failed"),
            chunks: Counter::default(),
            duration: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 14),
            ),
            below_redundancy: Gauge::default(),
        };
        registry.register(
            "gateway_recoveries",
            "Recoveries of reclaimed functions, by phase",
            phases,
        );
        registry.register(
            "gateway_recovery_duration_seconds",
            "Time to restore a reclaimed function's chunks",
            m.duration.clone(),
        );
        registry.register(
            "gateway_recovered_chunks",
            "Chunks restored onto replacement instances",
            m.chunks.clone(),
        );
        registry.register(
            "gateway_pieces_below_redundancy",
            "Pieces with a chunk waiting to be restored",
            m.below_redundancy.clone(),
        );
        m
    }
}
