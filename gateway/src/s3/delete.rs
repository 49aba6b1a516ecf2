//! DeleteObject and DeleteObjects: delegated to the backing store.

use aws_sdk_s3::operation::{delete_object::DeleteObjectError, delete_objects::DeleteObjectsError};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::{Gateway, proxied};

/// A key with unpersisted writes is deleted through the journal (after them, in order);
/// any other key in the bucket directly, after the tier forgets it.
pub(super) async fn delete_object(
    gw: &Gateway,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    if let Some(tier) = &gw.tier
        && req.input.version_id.is_none()
    {
        if let Some(r) = tier.delete_dirty(&req.input.bucket, &req.input.key).await {
            r?;
            return Ok(S3Response::new(DeleteObjectOutput::default()));
        }
        tier.invalidate(&req.input.bucket, &req.input.key);
    } else {
        gw.settle(&req.input.bucket, &[req.input.key.as_str()], true)
            .await?;
    }
    proxied!(gw, delete_object, req, DeleteObjectError)
}

/// Keys with unpersisted writes are deleted through the journal, the others in one request
/// to the bucket; the answer lists them all.
pub(super) async fn delete_objects(
    gw: &Gateway,
    mut req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let Some(tier) = &gw.tier else {
        return proxied!(gw, delete_objects, req, DeleteObjectsError);
    };
    let bucket = req.input.bucket.clone();
    let mut journaled = Vec::new();
    let mut rest = Vec::new();
    for o in std::mem::take(&mut req.input.delete.objects) {
        if o.version_id.is_none()
            && let Some(r) = tier.delete_dirty(&bucket, &o.key).await
        {
            r?;
            journaled.push(DeletedObject {
                key: Some(o.key),
                ..Default::default()
            });
        } else {
            if o.version_id.is_some() {
                gw.settle(&bucket, &[o.key.as_str()], false).await?;
            }
            tier.invalidate(&bucket, &o.key);
            rest.push(o);
        }
    }
    let quiet = req.input.delete.quiet == Some(true);
    let mut resp = if rest.is_empty() {
        S3Response::new(DeleteObjectsOutput::default())
    } else {
        req.input.delete.objects = rest;
        proxied!(gw, delete_objects, req, DeleteObjectsError)?
    };
    if !quiet && !journaled.is_empty() {
        resp.output
            .deleted
            .get_or_insert_with(Vec::new)
            .extend(journaled);
    }
    Ok(resp)
}
