//! The multipart family: delegated to the backing store.

use aws_sdk_s3::operation::{
    abort_multipart_upload::AbortMultipartUploadError,
    complete_multipart_upload::CompleteMultipartUploadError,
    create_multipart_upload::CreateMultipartUploadError,
    list_multipart_uploads::ListMultipartUploadsError, list_parts::ListPartsError,
    upload_part::UploadPartError, upload_part_copy::UploadPartCopyError,
};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::list::{ListEncoding, encode_opt};
use super::put::{body_length, strip_aws_chunked};
use super::{S3Handler, proxied};

pub(super) async fn create_multipart_upload(
    gw: &S3Handler,
    mut req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    req.input.content_encoding = strip_aws_chunked(req.input.content_encoding.take());
    proxied!(gw, create_multipart_upload, keyed req, CreateMultipartUploadError)
}

pub(super) async fn upload_part(
    gw: &S3Handler,
    mut req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    req.input.content_length = body_length(&req.headers, req.input.content_length);
    proxied!(uploads: gw, upload_part, keyed req, UploadPartError)
}

pub(super) async fn upload_part_copy(
    gw: &S3Handler,
    mut req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
        gw.flushed(bucket, &[key.as_ref()]).await?;
    }
    proxied!(uploads: gw, upload_part_copy, keyed req, UploadPartCopyError)
}

/// The assembled object replaces the key: its earlier writes go to the bucket first, and the
/// tier forgets the key (a later read admits the new object).
pub(super) async fn complete_multipart_upload(
    gw: &S3Handler,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
    gw.write_through(&bucket, &key, || async move {
        let mut req = req;
        proxied!(
            uploads: gw,
            complete_multipart_upload,
            keyed req,
            CompleteMultipartUploadError
        )
    })
    .await
}

pub(super) async fn abort_multipart_upload(
    gw: &S3Handler,
    mut req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    proxied!(gw, abort_multipart_upload, keyed req, AbortMultipartUploadError)
}

pub(super) async fn list_parts(
    gw: &S3Handler,
    mut req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    proxied!(gw, list_parts, keyed req, ListPartsError)
}

pub(super) async fn list_multipart_uploads(
    gw: &S3Handler,
    mut req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let enc = ListEncoding::take(&mut req.input.encoding_type);
    let mut resp = proxied!(gw, list_multipart_uploads, req, ListMultipartUploadsError)?;
    let out = &mut resp.output;
    if enc.url() {
        for s in [
            &mut out.prefix,
            &mut out.delimiter,
            &mut out.key_marker,
            &mut out.next_key_marker,
        ] {
            encode_opt(s);
        }
        for u in out.uploads.iter_mut().flatten() {
            encode_opt(&mut u.key);
        }
        for p in out.common_prefixes.iter_mut().flatten() {
            encode_opt(&mut p.prefix);
        }
    }
    out.encoding_type = enc.output();
    Ok(resp)
}
