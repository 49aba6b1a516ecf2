//! CopyObject: delegated to the backing store, which copies server-side, once both keys'
//! writes are in the bucket; the destination is then forgotten by the tier.

use aws_sdk_s3::operation::copy_object::CopyObjectError;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::{S3Handler, proxied};

pub(super) async fn copy_object(
    gw: &S3Handler,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
        gw.flushed(bucket, &[key.as_ref()]).await?;
    }
    let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
    gw.write_through(&bucket, &key, || async move {
        let mut req = req;
        proxied!(uploads: gw, copy_object, keyed req, CopyObjectError)
    })
    .await
}
