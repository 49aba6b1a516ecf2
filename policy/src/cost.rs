//! The cost model: usage counters in, dollars out.
//!
//! Prices are configuration; the defaults are on-demand us-east-1 list prices as recorded in
//! `shared/docs/trace-dal09.md` (sources: the AWS Lambda, S3 and ElastiCache pricing pages).

use serde::{Deserialize, Serialize};

/// Milliseconds per hour.
pub const MS_PER_HOUR: f64 = 3_600_000.0;

/// Unit prices, USD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// Lambda: per invocation request ($0.20 per 1M; AWS Lambda pricing, x86, us-east-1).
    pub lambda_per_request: f64,
    /// Lambda: per GB-second of configured memory x billed duration ($0.0000166667, x86; billed
    /// per 1 ms; arm64 is $0.0000133334). GB here is 1024 MB, as Lambda bills 1536 MB as 1.5 GB.
    pub lambda_per_gb_second: f64,
    /// S3 Standard PUT/COPY/POST/LIST, per 1,000 requests ($0.005; Amazon S3 pricing).
    pub s3_put_per_1k: f64,
    /// S3 Standard GET, per 1,000 requests ($0.0004).
    pub s3_get_per_1k: f64,
    /// S3 Standard storage per GB-month ($0.023, first 50 TB; GB = 2^30 bytes).
    pub s3_per_gb_month: f64,
    /// Hours in a billing month (AWS prorates storage by the hour over 730 h).
    pub hours_per_month: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            lambda_per_request: 0.20 / 1_000_000.0,
            lambda_per_gb_second: 0.000_016_666_7,
            s3_put_per_1k: 0.005,
            s3_get_per_1k: 0.0004,
            s3_per_gb_month: 0.023,
            hours_per_month: 730.0,
        }
    }
}

/// What was consumed. Integer counters, so equal runs give bit-equal costs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Lambda invocations (serving, warm-ups, recovery).
    pub lambda_requests: u64,
    /// Sum over invocations of billed milliseconds x configured memory in MB.
    #[serde(serialize_with = "u128_as_f64")]
    pub lambda_mb_ms: u128,
    /// S3 PUT-class requests (PUT, multipart create/part/complete).
    pub s3_put_requests: u64,
    /// S3 GET requests (including ranged GETs).
    pub s3_get_requests: u64,
    /// S3 storage: bytes x milliseconds stored.
    #[serde(serialize_with = "u128_as_f64")]
    pub s3_byte_ms: u128,
    /// Provisioned nodes x milliseconds.
    #[serde(serialize_with = "u128_as_f64")]
    pub node_ms: u128,
}

/// JSON numbers are at most 64-bit integers: write large counters as floats.
fn u128_as_f64<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*v as f64)
}

/// Dollars by part.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CostBreakdown {
    /// Lambda request charges.
    pub lambda_requests: f64,
    /// Lambda duration (GB-seconds) charges.
    pub lambda_duration: f64,
    /// S3 request charges.
    pub s3_requests: f64,
    /// S3 storage charges.
    pub s3_storage: f64,
    /// Provisioned node-hours.
    pub nodes: f64,
}

impl CostBreakdown {
    /// Sum of the parts.
    pub fn total(&self) -> f64 {
        self.lambda_requests
            + self.lambda_duration
            + self.s3_requests
            + self.s3_storage
            + self.nodes
    }

    /// The memory tier alone: Lambda and nodes, without the S3 parts.
    pub fn cache_tier(&self) -> f64 {
        self.lambda_requests + self.lambda_duration + self.nodes
    }
}

impl Usage {
    /// Lambda GB-seconds billed.
    pub fn lambda_gb_seconds(&self) -> f64 {
        self.lambda_mb_ms as f64 / 1024.0 / 1000.0
    }

    /// Prices this usage. `node_hourly_usd` is the price of one provisioned node-hour.
    pub fn cost(&self, prices: &Prices, node_hourly_usd: f64) -> CostBreakdown {
        let gb_month = self.s3_byte_ms as f64
            / crate::types::GIB as f64
            / (prices.hours_per_month * MS_PER_HOUR);
        CostBreakdown {
            lambda_requests: self.lambda_requests as f64 * prices.lambda_per_request,
            lambda_duration: self.lambda_gb_seconds() * prices.lambda_per_gb_second,
            s3_requests: self.s3_put_requests as f64 * prices.s3_put_per_1k / 1000.0
                + self.s3_get_requests as f64 * prices.s3_get_per_1k / 1000.0,
            s3_storage: gb_month * prices.s3_per_gb_month,
            nodes: self.node_ms as f64 / MS_PER_HOUR * node_hourly_usd,
        }
    }
}
