//! GetObject, HeadObject and GetObjectAttributes.

use aws_sdk_s3::operation::{get_object::GetObjectError, head_object::HeadObjectError};
use aws_sdk_s3::types::ChecksumMode;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::conditions::conditions_of;
use super::{S3Handler, proxied, tiered};
use crate::error::{not_found_as, upstream_error};
use tier::{CachedObject, KeyState, Range, Tier};

pub(super) async fn get_object(
    gw: &S3Handler,
    mut req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let cond = conditions_of!(req.input);
    let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
    let current = req.input.version_id.is_none() && req.input.sse_customer_key.is_none();
    let plain = current && req.input.part_number.is_none();
    if let Some(tier) = &gw.tier {
        match tier.lookup(&bucket, &key) {
            Some(KeyState::Deleted { .. }) => return Err(no_such_key()),
            Some(KeyState::Object(obj)) if plain => {
                return serve_from_tier(tier, &bucket, &key, obj, &req.input, &cond, None);
            }
            // A part of an object whose part boundaries the tier knows.
            Some(KeyState::Object(obj))
                if current
                    && req.input.range.is_none()
                    && let Some(n) = req.input.part_number
                    && let Some(part) = part_of(&obj, n)? =>
            {
                return serve_from_tier(tier, &bucket, &key, obj, &req.input, &cond, Some(part));
            }
            // partNumber and versions are the bucket copy's business: it must be current.
            Some(KeyState::Object(_)) => gw.flushed(&bucket, &[key.as_str()]).await?,
            None => {}
        }
    }
    let whole = plain && req.input.range.is_none();
    let mut resp = match proxied!(gw, get_object, keyed req, GetObjectError) {
        Ok(r) => r,
        Err(e) => return Err(missing_bucket_or(gw, &bucket, e).await),
    };
    cond.check(
        resp.output.e_tag.as_ref(),
        resp.output.last_modified.as_ref(),
    )?;
    if let Some(tier) = &gw.tier
        && let Some(body) = resp.output.body.take()
    {
        let len = resp
            .output
            .content_length
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(0);
        let meta = tiered::meta_from_get(&resp.output);
        // A ranged miss (parallel downloads are made of them) admits the whole object in
        // the background, once per key.
        if plain
            && !whole
            && let Some(size) = resp.output.content_range.as_deref().and_then(total_size)
        {
            tier.admit_in_background(&bucket, &key, size, meta.clone());
        }
        resp.output.body = Some(super::body::blob(
            tier.fill(&bucket, &key, len, meta, body, whole),
        ));
    }
    Ok(resp)
}

/// The object's size from a `Content-Range` answer (`bytes 0-99/1234`); `None` for `*`.
fn total_size(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.trim().parse().ok()
}

/// Part `n` of an object the tier holds: its byte range and the object's part count, when the
/// tier knows the boundaries (uniform parts of `meta.part_size`, as a multipart ETag `-N`
/// says; one part for an object with a plain ETag); `Ok(None)` when it does not (the bucket
/// answers). A part past the last is S3's 416 InvalidPartNumber.
fn part_of(obj: &CachedObject, n: i32) -> S3Result<Option<(Range, i32)>> {
    let meta = obj.meta();
    let size = obj.size();
    let count: u64 = match meta.etag.rsplit_once('-') {
        None => 1,
        Some((_, c)) => match c.parse() {
            Ok(c) if c > 0 => c,
            _ => return Ok(None),
        },
    };
    let ps = if count == 1 { size } else { meta.part_size };
    if count > 1 && (ps == 0 || size.div_ceil(ps) != count) {
        return Ok(None);
    }
    let n = u64::try_from(n).unwrap_or(0);
    if n == 0 || n > count {
        let mut e = S3Error::with_message(
            S3ErrorCode::Custom("InvalidPartNumber".into()),
            "The requested partnumber is not satisfiable",
        );
        e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
        return Err(e);
    }
    let start = (n - 1) * ps;
    let end = (n * ps).min(size);
    Ok(Some((
        Range { start, end },
        i32::try_from(count).unwrap_or(i32::MAX),
    )))
}

fn no_such_key() -> S3Error {
    s3_error!(NoSuchKey, "The specified key does not exist.")
}

/// A GET the tier answers: from function memory, or from the journal for a write whose
/// chunks could not be placed.
fn serve_from_tier(
    tier: &std::sync::Arc<Tier>,
    bucket: &str,
    key: &str,
    obj: std::sync::Arc<CachedObject>,
    input: &GetObjectInput,
    cond: &super::conditions::Conditions,
    part: Option<(Range, i32)>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let meta = obj.meta();
    let last_modified = tiered::timestamp_ms(meta.last_modified_ms);
    cond.check(Some(&ETag::Strong(meta.etag.clone())), Some(&last_modified))?;
    let size = obj.size();
    let span = match (&input.range, part) {
        (_, Some((r, _))) => r.start..r.end,
        (None, None) => 0..size,
        (Some(r), None) => r
            .check(size)
            .map_err(|_| s3_error!(InvalidRange, "The requested range is not satisfiable"))?,
    };
    let mut out = tiered::get_output(meta, span.end - span.start);
    // S3 answers a part with 206 and its range, and names the part count of a multipart object.
    out.parts_count = part.map(|(_, count)| count).filter(|c| *c > 1);
    let partial = input.range.is_some() || part.is_some();
    if partial {
        out.content_range = Some(format!(
            "bytes {}-{}/{}",
            span.start,
            span.end.saturating_sub(1),
            size
        ));
    }
    out.body = Some(super::body::blob(tier.read(
        bucket,
        key,
        obj,
        Range {
            start: span.start,
            end: span.end,
        },
    )));
    let mut resp = S3Response::new(out);
    if partial {
        resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
    }
    Ok(resp)
}

pub(super) async fn head_object(
    gw: &S3Handler,
    mut req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let cond = conditions_of!(req.input);
    let current = req.input.version_id.is_none() && req.input.sse_customer_key.is_none();
    let plain = current && req.input.part_number.is_none();
    if let Some(tier) = &gw.tier {
        match tier.lookup(&req.input.bucket, &req.input.key) {
            Some(KeyState::Deleted { .. }) => return Err(no_such_key()),
            Some(KeyState::Object(obj)) if plain => {
                let meta = obj.meta();
                let last_modified = tiered::timestamp_ms(meta.last_modified_ms);
                cond.check(Some(&ETag::Strong(meta.etag.clone())), Some(&last_modified))?;
                return Ok(S3Response::new(tiered::head_output(meta, obj.size())));
            }
            Some(KeyState::Object(obj))
                if current
                    && req.input.range.is_none()
                    && let Some(n) = req.input.part_number
                    && let Some((span, count)) = part_of(&obj, n)? =>
            {
                let meta = obj.meta();
                let last_modified = tiered::timestamp_ms(meta.last_modified_ms);
                cond.check(Some(&ETag::Strong(meta.etag.clone())), Some(&last_modified))?;
                let mut out = tiered::head_output(meta, span.len());
                out.parts_count = (count > 1).then_some(count);
                out.content_range = Some(format!(
                    "bytes {}-{}/{}",
                    span.start,
                    span.end.saturating_sub(1),
                    obj.size()
                ));
                let mut resp = S3Response::new(out);
                resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
                return Ok(resp);
            }
            Some(KeyState::Object(_)) => {
                gw.flushed(&req.input.bucket, &[req.input.key.as_str()])
                    .await?;
            }
            None => {}
        }
    }
    let resp = proxied!(gw, head_object, keyed req, HeadObjectError)?;
    cond.check(
        resp.output.e_tag.as_ref(),
        resp.output.last_modified.as_ref(),
    )?;
    Ok(resp)
}

/// A store may answer NoSuchKey for an object in a bucket that does not exist (s3s-fs does);
/// S3 answers NoSuchBucket. Checked only on that error path.
async fn missing_bucket_or(gw: &S3Handler, bucket: &str, e: S3Error) -> S3Error {
    if *e.code() != S3ErrorCode::NoSuchKey {
        return e;
    }
    match gw.client.head_bucket().bucket(bucket).send().await {
        Err(he)
            if he
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404) =>
        {
            s3_error!(NoSuchBucket, "The specified bucket does not exist")
        }
        _ => e,
    }
}

/// The attributes a client may ask for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    etag: bool,
    checksum: bool,
    parts: bool,
    storage_class: bool,
    size: bool,
}

/// Reads `x-amz-object-attributes`: SDKs send one comma-separated header value, which s3s
/// hands over as a single list item.
fn wanted(list: &[ObjectAttributes]) -> S3Result<Wanted> {
    let mut w = Wanted::default();
    for name in list
        .iter()
        .flat_map(|a| a.as_str().split(','))
        .map(str::trim)
    {
        match name {
            "" => {}
            "ETag" => w.etag = true,
            "Checksum" => w.checksum = true,
            "ObjectParts" => w.parts = true,
            "StorageClass" => w.storage_class = true,
            "ObjectSize" => w.size = true,
            other => {
                return Err(s3_error!(
                    InvalidArgument,
                    "Invalid attribute name specified: {other:?}"
                ));
            }
        }
    }
    if w == Wanted::default() {
        return Err(s3_error!(
            InvalidArgument,
            "x-amz-object-attributes names no attribute"
        ));
    }
    Ok(w)
}

/// A HEAD answers 404 without a body; as a GET, the error is NoSuchKey.
fn not_found_is_no_such_key(e: S3Error) -> S3Error {
    not_found_as(
        e,
        S3ErrorCode::NoSuchKey,
        "The specified key does not exist.",
    )
}

/// Answered from the backing store's HeadObject, so it works with every S3-compatible store
/// (s3s-fs has no GetObjectAttributes). ObjectParts reports the part count only.
pub(super) async fn get_object_attributes(
    gw: &S3Handler,
    req: S3Request<GetObjectAttributesInput>,
) -> S3Result<S3Response<GetObjectAttributesOutput>> {
    let input = req.input;
    let want = wanted(&input.object_attributes)?;
    gw.flushed(&input.bucket, &[input.key.as_str()]).await?;
    let head = |part: Option<i32>| {
        let mut h = gw
            .client
            .head_object()
            .bucket(&input.bucket)
            .key(crate::backend::sdk_key(&input.key))
            .set_version_id(input.version_id.clone())
            .set_sse_customer_algorithm(input.sse_customer_algorithm.clone())
            .set_sse_customer_key(input.sse_customer_key.clone())
            .set_sse_customer_key_md5(input.sse_customer_key_md5.clone())
            .set_expected_bucket_owner(input.expected_bucket_owner.clone())
            .set_part_number(part);
        if want.checksum {
            h = h.checksum_mode(ChecksumMode::Enabled);
        }
        h.send()
    };
    let h = match head(None).await {
        Ok(h) => h,
        Err(e) => {
            return Err(missing_bucket_or(
                gw,
                &input.bucket,
                not_found_is_no_such_key(upstream_error(&e)),
            )
            .await);
        }
    };
    let mut out = GetObjectAttributesOutput {
        last_modified: h
            .last_modified
            .map(s3s_aws::conv::try_from_aws::<Timestamp>)
            .transpose()?,
        version_id: h.version_id.clone(),
        ..Default::default()
    };
    if want.etag {
        out.e_tag = h.e_tag.as_deref().map(|t| {
            ETag::parse_http_header(t.as_bytes())
                .unwrap_or_else(|_| ETag::Strong(t.trim_matches('"').to_owned()))
        });
    }
    if want.size {
        out.object_size = h.content_length;
    }
    if want.storage_class {
        let class = h
            .storage_class
            .as_ref()
            .map_or("STANDARD", |c| c.as_str())
            .to_owned();
        out.storage_class = Some(StorageClass::from(class));
    }
    if want.checksum
        && (h.checksum_crc32.is_some()
            || h.checksum_crc32_c.is_some()
            || h.checksum_sha1.is_some()
            || h.checksum_sha256.is_some()
            || h.checksum_crc64_nvme.is_some())
    {
        out.checksum = Some(Checksum {
            checksum_crc32: h.checksum_crc32.clone(),
            checksum_crc32c: h.checksum_crc32_c.clone(),
            checksum_crc64nvme: h.checksum_crc64_nvme.clone(),
            checksum_sha1: h.checksum_sha1.clone(),
            checksum_sha256: h.checksum_sha256.clone(),
            ..Default::default()
        });
    }
    if want.parts {
        let first = head(Some(1))
            .await
            .map_err(|e| not_found_is_no_such_key(upstream_error(&e)))?;
        if let Some(n) = first.parts_count.filter(|n| *n > 0) {
            out.object_parts = Some(GetObjectAttributesParts {
                total_parts_count: Some(n),
                ..Default::default()
            });
        }
    }
    Ok(S3Response::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_size_from_content_range() {
        assert_eq!(total_size("bytes 0-99/1234"), Some(1234));
        assert_eq!(total_size("bytes 0-99/*"), None);
        assert_eq!(total_size("garbage"), None);
    }

    #[test]
    fn attribute_lists_are_split() {
        let w = wanted(&[ObjectAttributes::from("ETag,ObjectSize".to_string())]).unwrap();
        assert!(w.etag && w.size && !w.parts);
        let w = wanted(&[
            ObjectAttributes::from("StorageClass".to_string()),
            ObjectAttributes::from(" Checksum ".to_string()),
        ])
        .unwrap();
        assert!(w.storage_class && w.checksum);
        assert!(wanted(&[ObjectAttributes::from("Bogus".to_string())]).is_err());
    }
}
