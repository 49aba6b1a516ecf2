//! CopyObject: delegated to the backing store, which copies server-side.

use aws_sdk_s3::operation::copy_object::CopyObjectError;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::{Gateway, proxied};

pub(super) async fn copy_object(
    gw: &Gateway,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    proxied!(gw, copy_object, req, CopyObjectError)
}
