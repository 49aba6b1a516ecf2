//! DeleteObject and DeleteObjects: through the journal for keys with unpersisted writes,
//! delegated to the backing store for the others.

use std::collections::HashMap;

use aws_sdk_s3::operation::{delete_object::DeleteObjectError, delete_objects::DeleteObjectsError};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::{S3Handler, proxied};
use crate::error::tier_error;
use tier::{Deletion, WriteGuard};

/// A key with unpersisted writes is deleted through the journal (after them, in order);
/// any other key in the bucket directly, in the key's commit order. A versioned delete is the
/// bucket's business: the key's writes go there first.
pub(super) async fn delete_object(
    gw: &S3Handler,
    mut req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
    let Some(tier) = &gw.tier else {
        return proxied!(gw, delete_object, keyed req, DeleteObjectError);
    };
    if req.input.version_id.is_some() {
        return gw
            .write_through(&bucket, &key, || async move {
                let mut req = req;
                proxied!(gw, delete_object, keyed req, DeleteObjectError)
            })
            .await;
    }
    match tier.delete(&bucket, &key).await.map_err(tier_error)? {
        Deletion::Journaled => Ok(S3Response::new(DeleteObjectOutput::default())),
        Deletion::InBucket(g) => {
            let r = proxied!(gw, delete_object, keyed req, DeleteObjectError);
            tier.end_write(g, r.is_ok()).await;
            r
        }
    }
}

/// Keys with unpersisted writes are deleted through the journal, the others in one request
/// to the bucket, each in its key's commit order (the keys' commit locks are taken in sorted
/// order, so two requests never wait for each other in a cycle); the answer lists them all.
pub(super) async fn delete_objects(
    gw: &S3Handler,
    mut req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let Some(tier) = &gw.tier else {
        return proxied!(gw, delete_objects, req, DeleteObjectsError);
    };
    let bucket = req.input.bucket.clone();
    let objects = std::mem::take(&mut req.input.delete.objects);
    let mut keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut journaled = Vec::new();
    let mut held: HashMap<String, WriteGuard> = HashMap::new();
    for k in keys {
        let versioned = objects.iter().any(|o| o.key == k && o.version_id.is_some());
        if versioned {
            held.insert(
                k.to_owned(),
                tier.begin_write(&bucket, k).await.map_err(tier_error)?,
            );
            continue;
        }
        match tier.delete(&bucket, k).await.map_err(tier_error)? {
            Deletion::Journaled => journaled.push(k.to_owned()),
            Deletion::InBucket(g) => {
                held.insert(k.to_owned(), g);
            }
        }
    }
    let rest: Vec<ObjectIdentifier> = objects
        .into_iter()
        .filter(|o| held.contains_key(&o.key))
        .collect();
    let quiet = req.input.delete.quiet == Some(true);
    let result = if rest.is_empty() {
        Ok(S3Response::new(DeleteObjectsOutput::default()))
    } else {
        req.input.delete.objects = rest;
        proxied!(gw, delete_objects, req, DeleteObjectsError)
    };
    for (k, g) in held {
        let ok = result.as_ref().is_ok_and(|r| {
            !r.output
                .errors
                .iter()
                .flatten()
                .any(|e| e.key.as_deref() == Some(k.as_str()))
        });
        tier.end_write(g, ok).await;
    }
    let mut resp = result?;
    if !quiet && !journaled.is_empty() {
        resp.output
            .deleted
            .get_or_insert_with(Vec::new)
            .extend(journaled.into_iter().map(|key| DeletedObject {
                key: Some(key),
                ..Default::default()
            }));
    }
    Ok(resp)
}
