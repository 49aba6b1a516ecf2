//! DeleteObject and DeleteObjects: delegated to the backing store.

use aws_sdk_s3::operation::{delete_object::DeleteObjectError, delete_objects::DeleteObjectsError};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::{Gateway, proxied};

pub(super) async fn delete_object(
    gw: &Gateway,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    proxied!(gw, delete_object, req, DeleteObjectError)
}

pub(super) async fn delete_objects(
    gw: &Gateway,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    proxied!(gw, delete_objects, req, DeleteObjectsError)
}
