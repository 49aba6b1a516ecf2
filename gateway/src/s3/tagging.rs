//! Object tagging: delegated to the backing store, once the key's writes are in it.

use aws_sdk_s3::operation::{
    delete_object_tagging::DeleteObjectTaggingError, get_object_tagging::GetObjectTaggingError,
    put_object_tagging::PutObjectTaggingError,
};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::{S3Handler, proxied};

pub(super) async fn get_object_tagging(
    gw: &S3Handler,
    mut req: S3Request<GetObjectTaggingInput>,
) -> S3Result<S3Response<GetObjectTaggingOutput>> {
    gw.flushed(&req.input.bucket, &[req.input.key.as_str()])
        .await?;
    proxied!(gw, get_object_tagging, keyed req, GetObjectTaggingError)
}

pub(super) async fn put_object_tagging(
    gw: &S3Handler,
    mut req: S3Request<PutObjectTaggingInput>,
) -> S3Result<S3Response<PutObjectTaggingOutput>> {
    gw.flushed(&req.input.bucket, &[req.input.key.as_str()])
        .await?;
    proxied!(gw, put_object_tagging, keyed req, PutObjectTaggingError)
}

pub(super) async fn delete_object_tagging(
    gw: &S3Handler,
    mut req: S3Request<DeleteObjectTaggingInput>,
) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
    gw.flushed(&req.input.bucket, &[req.input.key.as_str()])
        .await?;
    proxied!(gw, delete_object_tagging, keyed req, DeleteObjectTaggingError)
}
