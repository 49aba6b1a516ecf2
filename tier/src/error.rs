//! The tier's errors: whose fault each is (the client's, the bucket's, a function's, the
//! gateway's own disk) and whether retrying can help. The S3 edge (the gateway's `s3` module)
//! turns them into S3 errors; nothing in the tier speaks S3 error codes.

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId as _;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::chunks::ChunkError;
use crate::ec::EcError;
use crate::journal::JournalError;

/// A boxed error from outside the tier (a client's request body, say).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a tier operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The tier's configuration is unusable (a code the coder does not take).
    #[error("tier configuration: {0}")]
    Config(String),
    /// The callback listener functions dial cannot listen.
    #[error("cannot listen on {addr} for function dial-backs: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No journal space freed up in time (the writer may retry: S3's SlowDown).
    #[error("the write-back journal is full ({used} of {capacity} bytes dirty); waited {waited:?}")]
    JournalFull {
        /// Bytes in use.
        used: u64,
        /// Capacity.
        capacity: u64,
        /// Time waited.
        waited: Duration,
    },
    /// The journal on the gateway's disk failed (I/O, a damaged record): nothing was
    /// acknowledged.
    #[error("local journal: {0}")]
    Journal(JournalError),
    /// The bucket does not exist.
    #[error("the bucket {0} does not exist")]
    NoSuchBucket(String),
    /// The keys' acknowledged writes did not reach the bucket in time (it may be unreachable).
    #[error(
        "writes to this bucket are not yet persisted (waited {0:?}); the backing store may be unreachable"
    )]
    FlushTimeout(Duration),
    /// The key's newest write was refused by the bucket and is held as a dead letter: the
    /// bucket does not hold what the tier serves.
    #[error(
        "the newest write of {bucket}/{key} was refused by the backing store and is held by the gateway as a dead letter; an operator can retry or discard it"
    )]
    DeadLetter {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// A request to the bucket failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The client's request body could not be read (the client's fault).
    #[error("reading the request body: {0}")]
    Body(BoxError),
    /// The request body was shorter or longer than declared (the client's fault).
    #[error("the request body has {received} bytes, {declared} declared")]
    BodyLength {
        /// Bytes received (at least).
        received: u64,
        /// Declared length.
        declared: u64,
    },
    /// The body did not match a digest or checksum the client declared (the client's fault).
    #[error("{0}")]
    BadDigest(String),
    /// A piece could not be read from function memory, the journal or the bucket.
    #[error("piece {piece} of {bucket}/{key} is unreadable: {cause}")]
    Unreadable {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Piece index.
        piece: u64,
        /// What went wrong last.
        cause: Box<TierError>,
    },
    /// Decoding a piece failed (too few chunks, or damaged ones).
    #[error("decoding: {source} ({} chunk failures)", failures.len())]
    Decode {
        /// The coder's error.
        source: EcError,
        /// The chunks that failed.
        failures: Vec<ChunkError>,
    },
    /// A chunk operation failed.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// No open multipart upload of that id (for that key): never created, completed, aborted
    /// or expired.
    #[error(
        "The specified multipart upload does not exist ({0}): it may have been aborted or completed"
    )]
    NoSuchUpload(String),
    /// A part named by a completion was not uploaded, or does not match (the client's fault).
    #[error("{0}")]
    InvalidPart(String),
    /// A completion's parts are not in ascending order (the client's fault).
    #[error("The list of parts was not in ascending order. Parts must be ordered by part number.")]
    InvalidPartOrder,
    /// A part other than the last is smaller than S3's minimum (the client's fault).
    #[error(
        "Your proposed upload is smaller than the minimum allowed size: part {part} has {size} bytes, parts but the last need at least 5 MiB"
    )]
    EntityTooSmall {
        /// Part number.
        part: u32,
        /// Its size.
        size: u64,
    },
    /// A completion names no part (the client's fault).
    #[error("{0}")]
    MalformedXml(String),
    /// An argument out of range (the client's fault).
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<JournalError> for TierError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Full {
                used,
                capacity,
                waited,
            } => TierError::JournalFull {
                used,
                capacity,
                waited,
            },
            other => TierError::Journal(other),
        }
    }
}

/// What kind of failure a request to the bucket had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFailure {
    /// The bucket answered with an error (`status`, `code`).
    Service,
    /// No answer in time.
    Timeout,
    /// The bucket could not be reached.
    Unreachable,
    /// The answer could not be read (a broken connection, a malformed answer).
    InvalidResponse,
    /// A success answer the SDK could not parse.
    Unparsable,
    /// The request could not be built (for this key or input).
    Construction,
}

/// A failed request to the bucket, as far as it matters to the tier and to clients.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct BackendError {
    /// What kind of failure.
    pub failure: BackendFailure,
    /// HTTP status of the bucket's answer (service errors).
    pub status: Option<u16>,
    /// The bucket's error code (`AccessDenied`, ...).
    pub code: Option<String>,
    /// The bucket's message, or what went wrong.
    pub message: String,
    /// ETag, Last-Modified, x-amz-version-id of a 304 or 412 (they tell the client which
    /// version it is about).
    pub headers: Vec<(String, String)>,
}

/// Response headers an error answer must keep.
const KEPT_HEADERS: [&str; 3] = ["etag", "last-modified", "x-amz-version-id"];

/// 4xx codes that are not a refusal of the request itself: throttling, timeouts, credentials
/// being refreshed, a clock off, a multipart upload that vanished (it is started anew).
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ExpiredToken",
    "TokenRefreshRequired",
    "OperationAborted",
    "NoSuchUpload",
];

impl BackendError {
    /// Reads a failed SDK call.
    pub fn from_sdk<E>(e: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let plain = |failure, what: &str| BackendError {
            failure,
            status: None,
            code: None,
            message: format!("{what}: {}", DisplayErrorContext(e)),
            headers: Vec::new(),
        };
        match e {
            SdkError::ServiceError(se) => {
                let raw = se.raw();
                let status = raw.status().as_u16();
                let meta = se.err().meta();
                if let Some(id) = meta.request_id() {
                    tracing::debug!(
                        upstream_request_id = id,
                        status,
                        "backing store refused the request"
                    );
                }
                if (200..300).contains(&status) {
                    return plain(
                        BackendFailure::Unparsable,
                        "the backing store sent a response the gateway cannot read",
                    );
                }
                let headers = if status == 304 || status == 412 {
                    KEPT_HEADERS
                        .iter()
                        .filter_map(|n| {
                            raw.headers()
                                .get(*n)
                                .map(|v| ((*n).to_owned(), v.to_owned()))
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                BackendError {
                    failure: BackendFailure::Service,
                    status: Some(status),
                    code: meta.code().map(str::to_owned),
                    message: meta.message().unwrap_or_default().to_owned(),
                    headers,
                }
            }
            SdkError::TimeoutError(_) => plain(
                BackendFailure::Timeout,
                "the backing store did not answer in time",
            ),
            SdkError::DispatchFailure(_) => plain(
                BackendFailure::Unreachable,
                "the backing store is unreachable",
            ),
            SdkError::ResponseError(_) => plain(
                BackendFailure::InvalidResponse,
                "the backing store sent an invalid response",
            ),
            _ => plain(
                BackendFailure::Construction,
                "cannot build the backing-store request",
            ),
        }
    }

    /// Whether the bucket refused the request for good: a 4xx other than throttling and
    /// timeouts, or a request that cannot be built. Retrying does not help.
    pub fn is_refusal(&self) -> bool {
        match self.failure {
            BackendFailure::Construction => true,
            BackendFailure::Service => self.status.is_some_and(|s| {
                (400..500).contains(&s)
                    && s != 408
                    && s != 429
                    && !self
                        .code
                        .as_deref()
                        .is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }),
            _ => false,
        }
    }

    /// Whether the bucket said it does not exist.
    pub fn is_no_such_bucket(&self) -> bool {
        self.code.as_deref() == Some("NoSuchBucket")
            || (self.failure == BackendFailure::Service
                && self.status == Some(404)
                && self.code.is_none())
    }

    fn describe(&self) -> String {
        match &self.code {
            Some(c) => format!("{c}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: Option<&str>) -> BackendError {
        BackendError {
            failure: BackendFailure::Service,
            status: Some(status),
            code: code.map(str::to_owned),
            message: String::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn refusals_are_4xx_other_than_throttling_and_timeouts() {
        for (status, code) in [
            (400, Some("InvalidRequest")),
            (400, Some("KeyTooLongError")),
            (403, Some("AccessDenied")),
            (400, Some("KMS.DisabledException")),
            (404, Some("NoSuchBucket")),
            (400, None),
        ] {
            assert!(service(status, code).is_refusal(), "{status} {code:?}");
        }
        for (status, code) in [
            (500, Some("InternalError")),
            (503, Some("SlowDown")),
            (400, Some("RequestTimeout")),
            (400, Some("ExpiredToken")),
            (403, Some("RequestTimeTooSkewed")),
            (404, Some("NoSuchUpload")),
            (408, None),
            (429, None),
        ] {
            assert!(!service(status, code).is_refusal(), "{status} {code:?}");
        }
        let construction = BackendError {
            failure: BackendFailure::Construction,
            ..service(0, None)
        };
        assert!(construction.is_refusal());
        let timeout = BackendError {
            failure: BackendFailure::Timeout,
            ..service(0, None)
        };
        assert!(!timeout.is_refusal());
    }
}
