//! Errors, and their conversion to S3 errors at the edge.
//!
//! Every fault says where it comes from: the backing S3 store (upstream), the client, or the
//! gateway itself, and whether retrying can help. `S3Error`s carry the S3 code and HTTP status;
//! the request id is added to every error body by the request middleware.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use http::{HeaderMap, HeaderName, StatusCode};
use s3s::{S3Error, S3ErrorCode};
use tier::{BackendError, BackendFailure, TierError};

/// Faults of the gateway's own machinery (startup, servers).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The embedded backing store could not start.
    #[error("embedded backing store: {0}")]
    Embedded(String),
    /// The tier could not start.
    #[error(transparent)]
    Tier(#[from] TierError),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Whether an upstream failure is worth retrying, as the SDK classifies it.
pub fn is_retryable<E>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => se.raw().status().is_server_error(),
        _ => false,
    }
}

/// Converts a failed backing-store call into the S3 error the client sees
/// ([`backend_error`] of what [`tier::BackendError::from_sdk`] reads from it).
pub fn upstream_error<E>(e: &SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    backend_error(&BackendError::from_sdk(e))
}

/// The S3 error for a failed request to the backing store: a service error keeps the store's
/// code, message and status (and, for 304 and 412, the ETag and Last-Modified headers); a store
/// that cannot be reached or does not answer in time is `503 ServiceUnavailable` with a message
/// saying so.
pub fn backend_error(e: &BackendError) -> S3Error {
    match e.failure {
        BackendFailure::Service => {
            let status = e
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let code = e
                .code
                .as_deref()
                .and_then(|c| S3ErrorCode::from_bytes(c.as_bytes()))
                .unwrap_or_else(|| code_for_status(status));
            let mut err = if e.message.is_empty() {
                S3Error::new(code)
            } else {
                S3Error::with_message(code, e.message.clone())
            };
            err.set_status_code(status);
            let mut headers = HeaderMap::new();
            for (name, value) in &e.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    headers.insert(n, v);
                }
            }
            if !headers.is_empty() {
                err.set_headers(headers);
            }
            err
        }
        BackendFailure::Timeout | BackendFailure::Unreachable | BackendFailure::InvalidResponse => {
            unavailable(e.message.clone())
        }
        BackendFailure::Unparsable | BackendFailure::Construction => {
            S3Error::with_message(S3ErrorCode::InternalError, e.message.clone())
        }
    }
}

/// The S3 error for a failure of the tier: the client's faults are 4xx, a full journal is
/// `503 SlowDown`, the bucket's answers are passed on, the gateway's own failures are 500.
pub fn tier_error(e: TierError) -> S3Error {
    let with_status = |code: S3ErrorCode, status: StatusCode, msg: String| {
        let mut err = S3Error::with_message(code, msg);
        err.set_status_code(status);
        err
    };
    match e {
        TierError::JournalFull { .. } => with_status(
            S3ErrorCode::SlowDown,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; retry later"),
        ),
        TierError::NoSuchBucket(_) => S3Error::with_message(
            S3ErrorCode::NoSuchBucket,
            "The specified bucket does not exist",
        ),
        TierError::FlushTimeout(_) => unavailable(e.to_string()),
        TierError::DeadLetter { .. } => with_status(
            S3ErrorCode::InvalidObjectState,
            StatusCode::FORBIDDEN,
            e.to_string(),
        ),
        TierError::Backend(b) => backend_error(&b),
        TierError::Body(b) => body_error(b.as_ref()),
        TierError::BodyLength { .. } => {
            S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string())
        }
        TierError::BadDigest(m) => S3Error::with_message(S3ErrorCode::BadDigest, m),
        TierError::NoSuchUpload(_) => with_status(
            S3ErrorCode::NoSuchUpload,
            StatusCode::NOT_FOUND,
            e.to_string(),
        ),
        TierError::InvalidPart(m) => S3Error::with_message(S3ErrorCode::InvalidPart, m),
        TierError::InvalidPartOrder => {
            S3Error::with_message(S3ErrorCode::InvalidPartOrder, e.to_string())
        }
        TierError::EntityTooSmall { .. } => {
            S3Error::with_message(S3ErrorCode::EntityTooSmall, e.to_string())
        }
        TierError::MalformedXml(m) => S3Error::with_message(S3ErrorCode::MalformedXML, m),
        TierError::InvalidArgument(m) => S3Error::with_message(S3ErrorCode::InvalidArgument, m),
        other => {
            tracing::warn!(error = %other, "tier failure");
            S3Error::with_message(S3ErrorCode::InternalError, other.to_string())
        }
    }
}

/// `503 ServiceUnavailable` with a message.
pub fn unavailable(msg: String) -> S3Error {
    let mut err = S3Error::with_message(S3ErrorCode::ServiceUnavailable, msg);
    err.set_status_code(StatusCode::SERVICE_UNAVAILABLE);
    err
}

/// A 404 from a HEAD carries no code; as the answer to a request with a body, it is `code`
/// (NoSuchKey, NoSuchBucket).
pub fn not_found_as(mut e: S3Error, code: S3ErrorCode, message: &'static str) -> S3Error {
    if e.status_code() == Some(StatusCode::NOT_FOUND) && matches!(e.code(), S3ErrorCode::Custom(_))
    {
        e.set_code(code);
        e.set_message(message);
    }
    e
}

/// The S3 code for an error response that has no body (HEAD, 304).
fn code_for_status(status: StatusCode) -> S3ErrorCode {
    match status {
        StatusCode::NOT_MODIFIED => S3ErrorCode::NotModified,
        StatusCode::NOT_FOUND => S3ErrorCode::Custom("NotFound".into()),
        StatusCode::FORBIDDEN => S3ErrorCode::AccessDenied,
        StatusCode::PRECONDITION_FAILED => S3ErrorCode::PreconditionFailed,
        StatusCode::RANGE_NOT_SATISFIABLE => S3ErrorCode::InvalidRange,
        StatusCode::BAD_REQUEST => S3ErrorCode::InvalidRequest,
        StatusCode::SERVICE_UNAVAILABLE => S3ErrorCode::ServiceUnavailable,
        _ => S3ErrorCode::InternalError,
    }
}

/// Re-maps an error returned by `s3s_aws::Proxy` for an operation whose SDK error type is `E`:
/// the proxy's own mapping loses the headers of a 304 and calls an unreachable store an
/// internal error.
pub fn refine_proxy_error<E>(err: S3Error) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err
        .source()
        .and_then(|s| s.downcast_ref::<SdkError<E, HttpResponse>>())
    {
        Some(sdk) => upstream_error(sdk),
        None => err,
    }
}

/// The S3 error for a request body that could not be read: a wrong aws-chunked signature is
/// `403 SignatureDoesNotMatch`, anything else `400 IncompleteBody`. (s3s 0.14 keeps its
/// aws-chunked error type private, so the signature case is recognized by its message.)
pub fn body_error(e: &(dyn std::error::Error + 'static)) -> S3Error {
    let text = crate::error::error_chain(e);
    if text.contains("SignatureMismatch") {
        S3Error::with_message(
            S3ErrorCode::SignatureDoesNotMatch,
            "the signature of a chunk of the request body does not match",
        )
    } else {
        S3Error::with_message(
            S3ErrorCode::IncompleteBody,
            format!("reading the request body: {text}"),
        )
    }
}

/// The error and its sources, joined by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let part = inner.to_string();
        if !s.ends_with(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("inner")
        }
    }
    impl std::error::Error for Inner {}
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_joins_sources() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
    }

    #[test]
    fn status_codes_without_body() {
        assert_eq!(
            code_for_status(StatusCode::NOT_MODIFIED),
            S3ErrorCode::NotModified
        );
        assert_eq!(
            code_for_status(StatusCode::RANGE_NOT_SATISFIABLE),
            S3ErrorCode::InvalidRange
        );
    }
}
