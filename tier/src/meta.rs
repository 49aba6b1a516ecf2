//! What the tier keeps about an object besides its bytes: enough to answer GET and HEAD
//! and to replay the PUT to the bucket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An object's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectMeta {
    /// ETag as the bucket will hold it, without quotes (`<md5>` or `<md5-of-md5s>-<parts>`).
    pub etag: String,
    /// Last-Modified, milliseconds since the Unix epoch.
    pub last_modified_ms: u64,
    /// Content-Type.
    pub content_type: Option<String>,
    /// Content-Encoding (without `aws-chunked`).
    pub content_encoding: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Content-Language.
    pub content_language: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Expires, as sent (an HTTP date).
    pub expires: Option<String>,
    /// x-amz-website-redirect-location.
    pub website_redirect_location: Option<String>,
    /// User metadata (x-amz-meta-*).
    pub metadata: BTreeMap<String, String>,
    /// x-amz-tagging, as sent (form-encoded).
    pub tagging: Option<String>,
    /// Storage class requested.
    pub storage_class: Option<String>,
    /// Part size the bucket copy is uploaded with (multipart when the object is larger).
    pub part_size: u64,
    /// Checksums the client declared and the gateway verified, by algorithm (`CRC32`, ...),
    /// base64; passed on to the bucket with the object.
    pub checksums: BTreeMap<String, String>,
}
