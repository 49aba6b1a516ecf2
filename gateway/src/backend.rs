//! The backing S3 store: `aws_sdk_s3::Client`s built from configuration, the same code path
//! for AWS S3, any S3-compatible server and the embedded store.
//!
//! Two clients share one configuration and differ in one limit. [`BackendClients::client`]
//! gives the bucket `backend.first_byte_timeout` per attempt to start answering: every request
//! whose body the gateway already holds (listings, HEAD, GET, DELETE, small PUTs, which are
//! read whole first) answers `503` within a few seconds of the bucket freezing. The SDK's read
//! timeout runs from the start of the request, body included, so requests that stream a large
//! body from a client (PUT, UploadPart) go through [`BackendClients::uploads`], limited by the
//! client's request deadline instead; the gateway's own uploads (persistence) set a limit per
//! request from their length.
//!
//! **Blank keys** (a key of only whitespace, which the SDK takes for a missing one): see
//! [`tier::backend`]; both clients carry its interceptor.

use std::time::Duration;

pub use tier::backend::{BackendClients, BlankKeys, KEY_SET, sdk_key};

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

/// Builds the clients for the backing store at `endpoint` (the configured URL, or the embedded
/// store's address).
pub async fn build_clients(cfg: &BackendConfig, endpoint: &str) -> BackendClients {
    let credentials =
        crate::credentials::provider(&cfg.access_key, &cfg.secret_key, &cfg.region).await;
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
        .retry_config(RetryConfig::standard().with_max_attempts(cfg.max_attempts))
        // Checksums are forwarded when the client sent them; adding our own to every request
        // would wrap each body in aws-chunked framing that not every S3-compatible server takes.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .interceptor(BlankKeys);
    let quick = conf.clone().timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.first_byte_timeout)
            .build(),
    );
    let uploads = conf.timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout)
            .build(),
    );
    BackendClients {
        client: aws_sdk_s3::Client::from_conf(quick.build()),
        uploads: aws_sdk_s3::Client::from_conf(uploads.build()),
        first_byte_timeout: cfg.first_byte_timeout,
    }
}

/// What the gateway knows of the keys its backing store holds, to decide before it
/// acknowledges a write-back whether the bucket will take it.
#[derive(Clone)]
pub enum KeyRules {
    /// Any S3-compatible store: keys some stores refuse (see [`portable`]) are not written back
    /// but passed through, so the bucket's own answer is the client's.
    Portable,
    /// The embedded store: its rules are known exactly; what it would refuse is refused first.
    Embedded(crate::embedded::EmbeddedStore),
}

/// What [`KeyRules::check`] says of a key.
#[derive(Debug)]
pub enum KeyFit {
    /// The bucket takes it: it may be written back.
    Holds,
    /// Not every store takes it: pass the write through.
    Unsure,
    /// The bucket refuses it, with this error.
    Refused(s3s::S3Error),
}

impl KeyRules {
    /// Whether the bucket will take a write of `key`.
    pub async fn check(&self, bucket: &str, key: &str) -> KeyFit {
        match self {
            KeyRules::Portable if portable(key) => KeyFit::Holds,
            KeyRules::Portable => KeyFit::Unsure,
            KeyRules::Embedded(store) => match store.refusal(bucket, key).await {
                Some(e) => KeyFit::Refused(e),
                None => KeyFit::Holds,
            },
        }
    }
}

/// Whether common S3-compatible stores take `key` (AWS S3 takes any key of up to 1,024 bytes;
/// file-backed stores such as SeaweedFS refuse control characters, `.` and `..` segments and
/// segments longer than a file name).
pub fn portable(key: &str) -> bool {
    !key.chars().any(char::is_control)
        && key
            .split('/')
            .all(|seg| seg != "." && seg != ".." && seg.len() <= 255)
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
    fn portable_keys() {
        for k in ["a/b c", "é/+%#", " ", "a//b", "..a/b..", &"x".repeat(255)] {
            assert!(super::portable(k), "{k:?}");
        }
        for k in ["a\0b", "x/../y", "x/./y", "..", "a\u{1}", &"x".repeat(256)] {
            assert!(!super::portable(k), "{k:?}");
        }
    }

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
