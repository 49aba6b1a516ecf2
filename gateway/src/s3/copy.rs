//! CopyObject. A source the tier holds with unpersisted writes is copied from the tier: its
//! bytes are read from memory (or the journal) and the destination is written back like a PUT,
//! without waiting for the bucket. Otherwise the copy is delegated to the backing store, which
//! copies server-side, once both keys' writes are in the bucket; the destination is then
//! forgotten by the tier.

use aws_sdk_s3::operation::copy_object::CopyObjectError;
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

use super::check::BodyCheck;
use super::conditions::{Conditions, Outcome, copy_source_conditions_of};
use super::{S3Handler, proxied, tiered};
use crate::error::tier_error;
use tier::{CachedObject, KeyState, Range, Tier};

pub(super) async fn copy_object(
    gw: &S3Handler,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    if let Some(tier) = &gw.tier
        && let Some(src) = dirty_source(tier, &req.input.copy_source)
        && tier.writes_back(src.obj.size())
        && copy_supported(&req.input)
        && matches!(
            gw.keys.check(&req.input.bucket, &req.input.key).await,
            crate::backend::KeyFit::Holds
        )
    {
        return copy_from_tier(tier, &req.input, src).await;
    }
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

/// A copy source the tier holds: its bucket, key and current version.
pub(super) struct HeldSource<'a> {
    bucket: &'a str,
    key: &'a str,
    pub(super) obj: std::sync::Arc<CachedObject>,
}

/// The source when the tier holds its current version with writes the bucket may not have
/// yet (its metadata, tags included, is then the tier's to give).
fn dirty_source<'a>(tier: &Tier, source: &'a CopySource) -> Option<HeldSource<'a>> {
    held_source(tier, source).filter(|s| s.obj.is_journaled())
}

/// The source when the tier holds its current version.
pub(super) fn held_source<'a>(tier: &Tier, source: &'a CopySource) -> Option<HeldSource<'a>> {
    let CopySource::Bucket {
        bucket,
        key,
        version_id: None,
    } = source
    else {
        return None;
    };
    match tier.lookup(bucket, key)? {
        KeyState::Object(obj) => Some(HeldSource { bucket, key, obj }),
        KeyState::Deleted { .. } => None,
    }
}

/// Whether the tier can make this copy: storage options it replays (as for a PUT), and no
/// customer key for the source.
fn copy_supported(input: &CopyObjectInput) -> bool {
    tiered::copy_supported(input)
        && input.copy_source_sse_customer_algorithm.is_none()
        && input.copy_source_sse_customer_key.is_none()
}

/// The copy-source conditions, evaluated as S3 does for a copy: any that fails is 412.
pub(super) fn check_source(cond: &Conditions, obj: &CachedObject) -> S3Result<()> {
    let meta = obj.meta();
    let etag = ETag::Strong(meta.etag.clone());
    let last_modified = tiered::timestamp_ms(meta.last_modified_ms);
    match cond.evaluate(Some(&etag), Some(&last_modified)) {
        Outcome::Proceed => Ok(()),
        _ => {
            let mut e = s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            );
            e.set_status_code(http::StatusCode::PRECONDITION_FAILED);
            Err(e)
        }
    }
}

/// A byte range of a held source's body, as a stream the tier's writes take.
pub(super) fn source_body(
    tier: &std::sync::Arc<Tier>,
    src: HeldSource<'_>,
    range: Range,
) -> impl futures::Stream<Item = Result<bytes::Bytes, tier::BoxError>> + Unpin + Send + use<> {
    tier.read(src.bucket, src.key, src.obj, range)
        .map(|r| r.map_err(|e| Box::new(e) as tier::BoxError))
}

/// `x-amz-copy-source-range` (`bytes=first-last`) of a source of `size` bytes.
pub(super) fn source_range(range: Option<&str>, size: u64) -> S3Result<Range> {
    let Some(r) = range else {
        return Ok(Range {
            start: 0,
            end: size,
        });
    };
    let invalid = || {
        s3_error!(
            InvalidArgument,
            "Range specified is not valid for source object of size: {size}"
        )
    };
    let (a, b) = r
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(invalid)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| invalid())?,
        b.trim().parse().map_err(|_| invalid())?,
    );
    if a > b || b >= size {
        return Err(invalid());
    }
    Ok(Range {
        start: a,
        end: b + 1,
    })
}

async fn copy_from_tier(
    tier: &std::sync::Arc<Tier>,
    input: &CopyObjectInput,
    src: HeldSource<'_>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    check_source(&copy_source_conditions_of!(input), &src.obj)?;
    let replace_meta = input
        .metadata_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    let replace_tags = input
        .tagging_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
    let same_key = matches!(&input.copy_source,
        CopySource::Bucket { bucket, key, .. } if **bucket == *input.bucket && **key == *input.key);
    if same_key
        && !replace_meta
        && input.storage_class.is_none()
        && input.website_redirect_location.is_none()
    {
        return Err(s3_error!(
            InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself \
             without changing the object's metadata, storage class, website redirect location or \
             encryption attributes."
        ));
    }
    tiered::check_limits(input.metadata.as_ref(), input.tagging.as_ref())?;
    let source_meta = src.obj.meta().clone();
    let mut meta = if replace_meta {
        tiered::meta_from_copy(input)
    } else {
        tier::ObjectMeta {
            etag: String::new(),
            checksums: Default::default(),
            ..source_meta.clone()
        }
    };
    meta.tagging = if replace_tags {
        input.tagging.clone()
    } else {
        source_meta.tagging.clone()
    };
    if let Some(class) = &input.storage_class {
        meta.storage_class = Some(class.as_str().to_owned());
    }
    let size = src.obj.size();
    let body = source_body(
        tier,
        src,
        Range {
            start: 0,
            end: size,
        },
    );
    let stored = tier
        .put(
            &input.bucket,
            &input.key,
            size,
            meta,
            body,
            Box::new(BodyCheck::none()),
        )
        .await
        .map_err(tier_error)?;
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(ETag::Strong(stored.etag)),
            last_modified: Some(tiered::timestamp_ms(stored.last_modified_ms)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_ranges() {
        assert_eq!(
            source_range(Some("bytes=0-9"), 100).unwrap(),
            Range { start: 0, end: 10 }
        );
        assert_eq!(
            source_range(None, 100).unwrap(),
            Range { start: 0, end: 100 }
        );
        for bad in ["bytes=5-100", "bytes=9-3", "bytes=-5", "0-9", "bytes=a-b"] {
            assert!(source_range(Some(bad), 100).is_err(), "{bad}");
        }
    }
}
