//! Prometheus metrics of the S3 endpoint (prometheus-client, OpenMetrics text on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// S3 operation (`GetObject`, ...), `Unknown` when the request failed before routing.
    pub operation: String,
    /// HTTP status code.
    pub status: u16,
}

/// Labels by operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// S3 operation.
    pub operation: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The S3 endpoint's metrics.
#[derive(Clone)]
pub struct S3Metrics {
    /// Requests by operation and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time until the response headers, by operation.
    pub latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Request body bytes read, by operation.
    pub bytes_in: Family<OperationLabels, Counter>,
    /// Response body bytes sent, by operation.
    pub bytes_out: Family<OperationLabels, Counter>,
    /// Requests being served.
    pub in_flight: Gauge,
    /// 1 when the last readiness probe reached the backing store.
    pub backend_up: Gauge,
}

impl S3Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            in_flight: Gauge::default(),
            backend_up: Gauge::default(),
        };
        registry.register(
            "gateway_s3_requests",
            "S3 requests by operation and status",
            m.requests.clone(),
        );
        registry.register(
            "gateway_s3_request_duration_seconds",
            "Time from request to response headers, by operation",
            m.latency.clone(),
        );
        registry.register(
            "gateway_s3_received_bytes",
            "Request body bytes read, by operation",
            m.bytes_in.clone(),
        );
        registry.register(
            "gateway_s3_sent_bytes",
            "Response body bytes sent, by operation",
            m.bytes_out.clone(),
        );
        registry.register(
            "gateway_s3_requests_in_flight",
            "S3 requests being served",
            m.in_flight.clone(),
        );
        registry.register(
            "gateway_backend_up",
            "1 when the last readiness probe reached the backing store",
            m.backend_up.clone(),
        );
        m
    }
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_families() {
        let mut reg = Registry::default();
        let m = S3Metrics::register(&mut reg);
        m.requests
            .get_or_create(&RequestLabels {
                operation: "GetObject".into(),
                status: 200,
            })
            .inc();
        m.latency
            .get_or_create(&OperationLabels {
                operation: "GetObject".into(),
            })
            .observe(0.003);
        let text = render(&reg);
        assert!(
            text.contains("gateway_s3_requests_total{operation=\"GetObject\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_s3_request_duration_seconds_bucket{le=\"0.004\",operation=\"GetObject\"} 1"
            ),
            "{text}"
        );
    }
}
