//! Conversions between S3 inputs/outputs and the tier's object metadata.

use s3s::dto::*;

use tier::ObjectMeta;

fn fmt_http_date(t: &Timestamp) -> Option<String> {
    let mut buf = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut buf).ok()?;
    String::from_utf8(buf).ok()
}

fn parse_http_date(s: &str) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, s).ok()
}

/// Timestamp from milliseconds since the epoch.
pub fn timestamp_ms(ms: u64) -> Timestamp {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(Timestamp::from)
        .unwrap_or_else(|_| Timestamp::from(time::OffsetDateTime::UNIX_EPOCH))
}

/// Whether a PutObject, CreateMultipartUpload or CopyObject input (same field names) can be
/// written back by the tier: options that change how the bucket stores the object (customer
/// keys, KMS, object lock, ACLs other than the default `private`, grants) go straight to the
/// bucket instead.
macro_rules! storage_options_supported {
    ($input:expr) => {{
        let input = $input;
        input.sse_customer_algorithm.is_none()
            && input.sse_customer_key.is_none()
            && input.ssekms_key_id.is_none()
            && input.ssekms_encryption_context.is_none()
            && input
                .server_side_encryption
                .as_ref()
                .is_none_or(|s| s.as_str() == ServerSideEncryption::AES256)
            && input.object_lock_mode.is_none()
            && input.object_lock_retain_until_date.is_none()
            && input.object_lock_legal_hold_status.is_none()
            // `private` is what an object gets without an ACL (rclone sends it by default).
            && input
                .acl
                .as_ref()
                .is_none_or(|a| a.as_str() == ObjectCannedACL::PRIVATE)
            && input.grant_full_control.is_none()
            && input.grant_read.is_none()
            && input.grant_read_acp.is_none()
            && input.grant_write_acp.is_none()
    }};
}

/// Whether a PutObject can be written back by the tier: storage options it does not replay
/// ([`storage_options_supported`]) or a conditional write go straight to the bucket instead.
pub fn write_back_supported(input: &PutObjectInput) -> bool {
    storage_options_supported!(input)
        && input.if_match.is_none()
        && input.if_none_match.is_none()
        && input.write_offset_bytes.is_none()
}

/// Whether a multipart upload can be written back (as for a PUT).
pub fn upload_supported(input: &CreateMultipartUploadInput) -> bool {
    storage_options_supported!(input)
}

/// Whether a CopyObject's destination can be written back (as for a PUT).
pub fn copy_supported(input: &CopyObjectInput) -> bool {
    storage_options_supported!(input)
}

/// Most bytes of user metadata (keys and values, UTF-8) S3 takes on an object.
pub const MAX_USER_METADATA: usize = 2048;

/// Refuses, as S3 would, a PUT or CreateMultipartUpload whose user metadata or tags S3 does
/// not take (checked before a write-back is acknowledged, since the bucket sees it only later).
pub fn check_limits(
    metadata: Option<&Metadata>,
    tagging: Option<&TaggingHeader>,
) -> s3s::S3Result<()> {
    let meta: usize = metadata
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if meta > MAX_USER_METADATA {
        return Err(s3s::s3_error!(
            MetadataTooLarge,
            "user metadata is {meta} bytes; S3 takes at most {MAX_USER_METADATA}"
        ));
    }
    if let Some(t) = tagging {
        crate::embedded::parse_tagging_header(t)?;
    }
    Ok(())
}

/// The metadata a PutObject or CreateMultipartUpload input (same field names) stores.
macro_rules! meta_from_input {
    ($input:expr, $content_encoding:expr) => {{
        let input = $input;
        ObjectMeta {
            content_type: input.content_type.clone(),
            content_encoding: $content_encoding,
            content_disposition: input.content_disposition.clone(),
            content_language: input.content_language.clone(),
            cache_control: input.cache_control.clone(),
            expires: input.expires.as_ref().and_then(fmt_http_date),
            website_redirect_location: input.website_redirect_location.clone(),
            metadata: input
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            tagging: input.tagging.clone(),
            storage_class: input.storage_class.as_ref().map(|s| s.as_str().to_owned()),
            ..Default::default()
        }
    }};
}

/// The metadata a PUT stores (ETag and time are filled in by the tier).
pub fn meta_from_put(input: &PutObjectInput, content_encoding: Option<String>) -> ObjectMeta {
    meta_from_input!(input, content_encoding)
}

/// The metadata a CopyObject with `x-amz-metadata-directive: REPLACE` gives its destination.
pub fn meta_from_copy(input: &CopyObjectInput) -> ObjectMeta {
    meta_from_input!(input, input.content_encoding.clone())
}

/// The metadata a multipart upload's object is stored with.
pub fn meta_from_create(input: &CreateMultipartUploadInput) -> ObjectMeta {
    meta_from_input!(input, input.content_encoding.clone())
}

/// The metadata of an object read from the bucket.
pub fn meta_from_get(out: &GetObjectOutput) -> ObjectMeta {
    ObjectMeta {
        etag: out
            .e_tag
            .as_ref()
            .map(|e| e.value().to_owned())
            .unwrap_or_default(),
        last_modified_ms: out
            .last_modified
            .clone()
            .map(|t| {
                let dt = time::OffsetDateTime::from(t);
                u64::try_from(dt.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
            })
            .unwrap_or(0),
        content_type: out.content_type.clone(),
        content_encoding: out.content_encoding.clone(),
        content_disposition: out.content_disposition.clone(),
        content_language: out.content_language.clone(),
        cache_control: out.cache_control.clone(),
        expires: out.expires.as_ref().and_then(fmt_http_date),
        website_redirect_location: out.website_redirect_location.clone(),
        metadata: out
            .metadata
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        tagging: None,
        storage_class: out.storage_class.as_ref().map(|s| s.as_str().to_owned()),
        part_size: 0,
        checksums: Default::default(),
    }
}

/// A GetObject or HeadObject output (same field names) from the tier's metadata.
macro_rules! output_from_meta {
    ($ty:ident, $meta:expr, $len:expr) => {{
        let meta: &ObjectMeta = $meta;
        $ty {
            accept_ranges: Some("bytes".into()),
            content_length: Some(i64::try_from($len).unwrap_or(i64::MAX)),
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_disposition: meta.content_disposition.clone(),
            content_language: meta.content_language.clone(),
            cache_control: meta.cache_control.clone(),
            expires: meta.expires.as_deref().and_then(parse_http_date),
            website_redirect_location: meta.website_redirect_location.clone(),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp_ms(meta.last_modified_ms)),
            metadata: (!meta.metadata.is_empty())
                .then(|| meta.metadata.clone().into_iter().collect()),
            storage_class: meta.storage_class.clone().map(StorageClass::from),
            ..Default::default()
        }
    }};
}

/// A GetObject answer from the tier's metadata (the body is set by the caller).
pub fn get_output(meta: &ObjectMeta, content_length: u64) -> GetObjectOutput {
    output_from_meta!(GetObjectOutput, meta, content_length)
}

/// A HeadObject answer from the tier's metadata.
pub fn head_output(meta: &ObjectMeta, size: u64) -> HeadObjectOutput {
    output_from_meta!(HeadObjectOutput, meta, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = timestamp_ms(1_700_000_000_123);
        let s = fmt_http_date(&t).unwrap();
        assert_eq!(s, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert!(parse_http_date(&s).is_some());
    }
}
