//! Bucket operations: delegated to the backing store (bucket names map 1:1).

use aws_sdk_s3::operation::{
    create_bucket::CreateBucketError, delete_bucket::DeleteBucketError,
    head_bucket::HeadBucketError, list_buckets::ListBucketsError,
};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use crate::error::{not_found_as, upstream_error};

use super::{S3Handler, proxied};

pub(super) async fn create_bucket(
    gw: &S3Handler,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let bucket = req.input.bucket.clone();
    let resp = proxied!(gw, create_bucket, req, CreateBucketError)?;
    if let Some(t) = &gw.tier {
        t.note_bucket(&bucket, true);
    }
    Ok(resp)
}

pub(super) async fn delete_bucket(
    gw: &S3Handler,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    let bucket = req.input.bucket.clone();
    if let Some(t) = &gw.tier {
        t.flush_prefix(&bucket, "")
            .await
            .map_err(crate::error::tier_error)?;
        if t.dead_letters().iter().any(|d| d.bucket == bucket) {
            let mut e = S3Error::with_message(
                S3ErrorCode::BucketNotEmpty,
                "the gateway holds writes to this bucket that the backing store refused (dead \
                 letters); retry or discard them first",
            );
            e.set_status_code(http::StatusCode::CONFLICT);
            return Err(e);
        }
    }
    let resp = proxied!(gw, delete_bucket, req, DeleteBucketError)?;
    if let Some(t) = &gw.tier {
        t.note_bucket(&bucket, false);
    }
    Ok(resp)
}

pub(super) async fn head_bucket(
    gw: &S3Handler,
    req: S3Request<HeadBucketInput>,
) -> S3Result<S3Response<HeadBucketOutput>> {
    proxied!(gw, head_bucket, req, HeadBucketError)
}

/// The gateway's own region, once the bucket is known to exist: clients sign for the gateway,
/// whatever region the backing store is in (some S3-compatible stores also answer this
/// operation with a body the SDK cannot read).
pub(super) async fn get_bucket_location(
    gw: &S3Handler,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    gw.client
        .head_bucket()
        .bucket(&req.input.bucket)
        .set_expected_bucket_owner(req.input.expected_bucket_owner.clone())
        .send()
        .await
        .map_err(|e| {
            not_found_as(
                upstream_error(&e),
                S3ErrorCode::NoSuchBucket,
                "The specified bucket does not exist",
            )
        })?;
    // us-east-1 is reported as an empty constraint, as S3 does.
    let location_constraint =
        (gw.region != "us-east-1").then(|| BucketLocationConstraint::from(gw.region.clone()));
    Ok(S3Response::new(GetBucketLocationOutput {
        location_constraint,
    }))
}

pub(super) async fn list_buckets(
    gw: &S3Handler,
    req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    proxied!(gw, list_buckets, req, ListBucketsError)
}
