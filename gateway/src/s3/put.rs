//! PutObject: written back through the tier, or delegated to the backing store after undoing
//! what the client-side transfer encoding left in the input. A small body is read whole before
//! the bucket is called, so the bucket's first-byte timeout measures the bucket, not the client,
//! and a body the client got wrong (a bad aws-chunked signature, a short body) is answered as
//! the client's fault.

use aws_sdk_s3::operation::put_object::PutObjectError;
use http::HeaderMap;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::check::BodyCheck;
use super::{S3Handler, proxied, tiered};

pub(super) async fn put_object(
    gw: &S3Handler,
    mut req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let input = &mut req.input;
    input.content_length = body_length(&req.headers, input.content_length);
    input.content_encoding = strip_aws_chunked(input.content_encoding.take());
    let len = input.content_length.and_then(|l| u64::try_from(l).ok());
    if let (Some(tier), Some(len)) = (&gw.tier, len)
        && tier.writes_back(len)
        && tiered::write_back_supported(&req.input)
        && bucket_takes(
            gw,
            &req.input.bucket,
            &req.input.key,
            req.input.metadata.as_ref(),
            req.input.tagging.as_ref(),
        )
        .await?
    {
        let check = BodyCheck::for_put(&req.input, &req.headers, req.trailing_headers.clone());
        let meta = tiered::meta_from_put(&req.input, req.input.content_encoding.clone());
        let body = req
            .input
            .body
            .take()
            .unwrap_or_else(|| StreamingBlob::from(s3s::Body::empty()));
        let stored = tier
            .put(
                &req.input.bucket,
                &req.input.key,
                len,
                meta,
                body,
                Box::new(check),
            )
            .await
            .map_err(crate::error::tier_error)?;
        let mut out = PutObjectOutput {
            e_tag: Some(ETag::Strong(stored.etag.clone())),
            ..Default::default()
        };
        for (alg, v) in &stored.checksums {
            let v = Some(v.clone());
            match alg.as_str() {
                "CRC32" => out.checksum_crc32 = v,
                "CRC32C" => out.checksum_crc32c = v,
                "CRC64NVME" => out.checksum_crc64nvme = v,
                "SHA1" => out.checksum_sha1 = v,
                "SHA256" => out.checksum_sha256 = v,
                _ => {}
            }
        }
        return Ok(S3Response::new(out));
    }
    let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
    let small = len.is_some_and(|l| l <= SMALL_BODY);
    if small && let Some(body) = req.input.body.take() {
        req.input.body = Some(read_whole(body).await?);
    }
    gw.write_through(&bucket, &key, || async move {
        let mut req = req;
        if small {
            proxied!(gw, put_object, keyed req, PutObjectError)
        } else {
            proxied!(uploads: gw, put_object, keyed req, PutObjectError)
        }
    })
    .await
}

/// Whether the bucket will take this write (a PUT, or a multipart upload's object), decided
/// before a write-back acknowledges it: what the bucket is known to refuse (S3's limits on
/// metadata and tags, keys the backing store cannot hold) is refused now with the bucket's
/// error; a key not every store takes is passed through (`false`), so the bucket answers for it.
pub(super) async fn bucket_takes(
    gw: &S3Handler,
    bucket: &str,
    key: &str,
    metadata: Option<&Metadata>,
    tagging: Option<&TaggingHeader>,
) -> S3Result<bool> {
    tiered::check_limits(metadata, tagging)?;
    match gw.keys.check(bucket, key).await {
        crate::backend::KeyFit::Holds => Ok(true),
        crate::backend::KeyFit::Unsure => Ok(false),
        crate::backend::KeyFit::Refused(e) => Err(e),
    }
}

/// Pass-through bodies up to this size are read whole before the bucket is called.
pub(super) const SMALL_BODY: u64 = 1 << 20;

/// Reads a (small) request body whole; a failure is the client's
/// ([`crate::error::body_error`]).
pub(super) async fn read_whole(mut body: StreamingBlob) -> S3Result<StreamingBlob> {
    use futures::StreamExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.next().await {
        buf.extend_from_slice(&frame.map_err(|e| crate::error::body_error(e.as_ref()))?);
    }
    Ok(StreamingBlob::from(s3s::Body::from(buf.freeze())))
}

/// The length of the decoded body: s3s has already decoded an aws-chunked body and rewritten
/// `Content-Length` to its decoded length when there was one; a streaming upload sent without
/// `Content-Length` gives it in `x-amz-decoded-content-length`. The backing store needs it,
/// since a PUT to S3 without a length is refused.
pub(super) fn body_length(headers: &HeaderMap, content_length: Option<i64>) -> Option<i64> {
    content_length.or_else(|| {
        headers
            .get("x-amz-decoded-content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    })
}

/// Removes `aws-chunked` from a Content-Encoding: it names the client's transfer framing,
/// which s3s has already removed, not a property of the stored object.
pub(super) fn strip_aws_chunked(enc: Option<String>) -> Option<String> {
    let enc = enc?;
    let rest: Vec<&str> = enc
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!rest.is_empty()).then(|| rest.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_is_stripped() {
        assert_eq!(strip_aws_chunked(Some("aws-chunked".into())), None);
        assert_eq!(
            strip_aws_chunked(Some("aws-chunked, gzip".into())),
            Some("gzip".into())
        );
        assert_eq!(strip_aws_chunked(Some("gzip".into())), Some("gzip".into()));
        assert_eq!(strip_aws_chunked(None), None);
    }

    #[test]
    fn decoded_length_fills_missing_content_length() {
        let mut h = HeaderMap::new();
        assert_eq!(body_length(&h, None), None);
        h.insert("x-amz-decoded-content-length", "42".parse().unwrap());
        assert_eq!(body_length(&h, None), Some(42));
        assert_eq!(body_length(&h, Some(7)), Some(7));
    }
}
