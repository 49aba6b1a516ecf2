//! GetObject, HeadObject and GetObjectAttributes.

use aws_sdk_s3::operation::{get_object::GetObjectError, head_object::HeadObjectError};
use aws_sdk_s3::types::ChecksumMode;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::conditions::conditions_of;
use super::{Gateway, proxied};
use crate::error::{not_found_as, upstream_error};

pub(super) async fn get_object(
    gw: &Gateway,
    req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let cond = conditions_of!(req.input);
    let bucket = req.input.bucket.clone();
    let resp = match proxied!(gw, get_object, req, GetObjectError) {
        Ok(r) => r,
        Err(e) => return Err(missing_bucket_or(gw, &bucket, e).await),
    };
    cond.check(
        resp.output.e_tag.as_ref(),
        resp.output.last_modified.as_ref(),
    )?;
    Ok(resp)
}

pub(super) async fn head_object(
    gw: &Gateway,
    req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let cond = conditions_of!(req.input);
    let resp = proxied!(gw, head_object, req, HeadObjectError)?;
    cond.check(
        resp.output.e_tag.as_ref(),
        resp.output.last_modified.as_ref(),
    )?;
    Ok(resp)
}

/// A store may answer NoSuchKey for an object in a bucket that does not exist (s3s-fs does);
/// S3 answers NoSuchBucket. Checked only on that error path.
async fn missing_bucket_or(gw: &Gateway, bucket: &str, e: S3Error) -> S3Error {
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
    gw: &Gateway,
    req: S3Request<GetObjectAttributesInput>,
) -> S3Result<S3Response<GetObjectAttributesOutput>> {
    let input = req.input;
    let want = wanted(&input.object_attributes)?;
    let head = |part: Option<i32>| {
        let mut h = gw
            .client
            .head_object()
            .bucket(&input.bucket)
            .key(&input.key)
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
