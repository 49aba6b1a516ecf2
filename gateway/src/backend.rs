//! The backing S3 store: an `aws_sdk_s3::Client` built from configuration, the same code path
//! for AWS S3, any S3-compatible server and the embedded store.

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

use crate::config::BackendConfig;

/// Time `/readyz` waits for the backing store to answer.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether `endpoint` (`http://host:port`) is on this machine.
pub fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An HTTP client for the AWS SDKs that never goes through a proxy: for loopback endpoints
/// (the embedded store, the local emulator), which `HTTP_PROXY` must not capture. Other
/// endpoints use the SDK's default client, which honours the proxy settings.
pub fn direct_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_https()
}

/// Builds the client for the backing store at `endpoint` (the configured URL, or the embedded
/// store's address).
pub async fn build_client(cfg: &BackendConfig, endpoint: &str) -> aws_sdk_s3::Client {
    let credentials =
        crate::credentials::provider(&cfg.access_key, &cfg.secret_key, &cfg.region).await;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout)
        .build();
    let mut conf = aws_sdk_s3::Config::builder();
    if is_loopback(endpoint) {
        conf = conf.http_client(direct_http_client());
    }
    let conf = conf
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

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_endpoints() {
        for e in [
            "http://127.0.0.1:9000",
            "http://localhost:1",
            "http://[::1]:80/x",
            "127.0.0.5",
        ] {
            assert!(super::is_loopback(e), "{e}");
        }
        for e in [
            "https://s3.us-east-1.amazonaws.com",
            "http://10.0.0.1:9000",
            "http://example.com",
        ] {
            assert!(!super::is_loopback(e), "{e}");
        }
    }
}
