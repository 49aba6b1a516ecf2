//! The backing S3 store: an `aws_sdk_s3::Client` built from configuration, the same code path
//! for AWS S3, any S3-compatible server and the embedded store.

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

use crate::config::BackendConfig;

/// Time `/readyz` waits for the backing store to answer.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds the client for the backing store at `endpoint` (the configured URL, or the embedded
/// store's address).
pub fn build_client(cfg: &BackendConfig, endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = Credentials::new(
        cfg.access_key.clone(),
        cfg.secret_key.clone(),
        None,
        None,
        "gateway-config",
    );
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout)
        .build();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .force_path_style(cfg.force_path_style)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(cfg.max_attempts))
        // Checksums are forwarded when the client sent them; adding our own to every request
        // would wrap each body in aws-chunked framing that not every S3-compatible server takes.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Whether the backing store answers: HeadBucket on `health_bucket` when configured, otherwise
/// ListBuckets. `Err` carries a message for `/readyz`.
pub async fn probe(client: &aws_sdk_s3::Client, health_bucket: &str) -> Result<(), String> {
    let fut = async {
        if health_bucket.is_empty() {
            client
                .list_buckets()
                .send()
                .await
                .map(|_| ())
                .map_err(|e| describe(&e))
        } else {
            client
                .head_bucket()
                .bucket(health_bucket)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| describe(&e))
        }
    };
    match tokio::time::timeout(READINESS_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {READINESS_TIMEOUT:?}")),
    }
}

fn describe<E: std::error::Error>(e: &E) -> String {
    aws_sdk_s3::error::DisplayErrorContext(e).to_string()
}
