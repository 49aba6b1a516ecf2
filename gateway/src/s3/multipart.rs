//! The multipart family. With write-back on, an upload is owned by the gateway (its parts go to
//! the journal, the completed object is written back like a PUT: `tier/src/multipart.rs`);
//! uploads with options the tier does not replay, uploads past `max_multipart_uploads`, and
//! every upload id the gateway did not issue are the backing store's.

use aws_sdk_s3::operation::{
    abort_multipart_upload::AbortMultipartUploadError,
    complete_multipart_upload::CompleteMultipartUploadError,
    create_multipart_upload::CreateMultipartUploadError,
    list_multipart_uploads::ListMultipartUploadsError, list_parts::ListPartsError,
    upload_part::UploadPartError, upload_part_copy::UploadPartCopyError,
};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::check::BodyCheck;
use super::list::{ListEncoding, encode_opt};
use super::put::{body_length, bucket_takes, strip_aws_chunked};
use super::{S3Handler, proxied, tiered};
use crate::error::tier_error;
use tier::{CompletedPartRef, PartRoute, Tier};

/// The tier, for an upload id the gateway issued (its uploads need the tier).
fn owner<'a>(gw: &'a S3Handler, upload_id: &str) -> S3Result<Option<&'a std::sync::Arc<Tier>>> {
    if !Tier::owns_upload(upload_id) {
        return Ok(None);
    }
    match &gw.tier {
        Some(t) => Ok(Some(t)),
        None => Err(tier_error(tier::TierError::NoSuchUpload(
            upload_id.to_owned(),
        ))),
    }
}

pub(super) async fn create_multipart_upload(
    gw: &S3Handler,
    mut req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    req.input.content_encoding = strip_aws_chunked(req.input.content_encoding.take());
    if let Some(tier) = &gw.tier
        && tiered::upload_supported(&req.input)
    {
        let input = &req.input;
        let holds = bucket_takes(
            gw,
            &input.bucket,
            &input.key,
            input.metadata.as_ref(),
            input.tagging.as_ref(),
        )
        .await?;
        if holds
            && let Some(id) = tier
                .create_upload(&input.bucket, &input.key, tiered::meta_from_create(input))
                .await
                .map_err(tier_error)?
        {
            return Ok(S3Response::new(CreateMultipartUploadOutput {
                bucket: Some(input.bucket.clone()),
                key: Some(input.key.clone()),
                upload_id: Some(id),
                checksum_algorithm: input.checksum_algorithm.clone(),
                ..Default::default()
            }));
        }
    }
    proxied!(gw, create_multipart_upload, keyed req, CreateMultipartUploadError)
}

/// Sets the `checksum_*` fields of an output from the tier's map (by algorithm).
macro_rules! set_checksums {
    ($out:expr, $map:expr) => {
        for (alg, v) in $map {
            let v = Some(v.clone());
            match alg.as_str() {
                "CRC32" => $out.checksum_crc32 = v,
                "CRC32C" => $out.checksum_crc32c = v,
                "CRC64NVME" => $out.checksum_crc64nvme = v,
                "SHA1" => $out.checksum_sha1 = v,
                "SHA256" => $out.checksum_sha256 = v,
                _ => {}
            }
        }
    };
}

pub(super) async fn upload_part(
    gw: &S3Handler,
    mut req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    req.input.content_length = body_length(&req.headers, req.input.content_length);
    let Some(tier) = owner(gw, &req.input.upload_id)? else {
        return proxied!(uploads: gw, upload_part, keyed req, UploadPartError);
    };
    let Some(len) = req.input.content_length.and_then(|l| u64::try_from(l).ok()) else {
        return Err(s3s::s3_error!(
            MissingContentLength,
            "You must provide the Content-Length HTTP header."
        ));
    };
    let number = part_number(req.input.part_number)?;
    let route = tier
        .route_part(&req.input.upload_id, &req.input.bucket, &req.input.key, len)
        .await
        .map_err(tier_error)?;
    if let PartRoute::Bucket(to) = route {
        // Moved to the bucket: the journal cannot hold it.
        req.input.upload_id = to;
        return proxied!(uploads: gw, upload_part, keyed req, UploadPartError);
    }
    let check = BodyCheck::for_part(&req.input, &req.headers, req.trailing_headers.clone());
    let body = req
        .input
        .body
        .take()
        .unwrap_or_else(|| StreamingBlob::from(s3s::Body::empty()));
    let input = &req.input;
    let part = tier
        .upload_part(
            &input.upload_id,
            &input.bucket,
            &input.key,
            number,
            len,
            body,
            Box::new(check),
        )
        .await
        .map_err(tier_error)?;
    let mut out = UploadPartOutput {
        e_tag: Some(ETag::Strong(part.etag.clone())),
        ..Default::default()
    };
    set_checksums!(out, &part.checksums);
    Ok(S3Response::new(out))
}

pub(super) async fn upload_part_copy(
    gw: &S3Handler,
    mut req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let owned = owner(gw, &req.input.upload_id)?;
    if let Some(tier) = owned
        && let Some(to) = tier
            .forwarded(&req.input.upload_id, &req.input.bucket, &req.input.key)
            .map_err(tier_error)?
    {
        // Moved to the bucket: its parts are the bucket's.
        if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
            gw.flushed(bucket, &[key.as_ref()]).await?;
        }
        req.input.upload_id = to;
        return proxied!(uploads: gw, upload_part_copy, keyed req, UploadPartCopyError);
    }
    // Into an upload the gateway owns, from a source the tier holds: no bucket involved.
    if let Some(tier) = owned
        && let Some(src) = super::copy::held_source(tier, &req.input.copy_source)
    {
        return copy_held_part(tier, &req.input, src).await;
    }
    if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
        gw.flushed(bucket, &[key.as_ref()]).await?;
    }
    if let Some(tier) = owned {
        return copy_into_owned_part(gw, tier, &req.input).await;
    }
    proxied!(uploads: gw, upload_part_copy, keyed req, UploadPartCopyError)
}

/// UploadPartCopy into an upload the gateway owns from a source the tier holds.
async fn copy_held_part(
    tier: &std::sync::Arc<Tier>,
    input: &UploadPartCopyInput,
    src: super::copy::HeldSource<'_>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    super::copy::check_source(
        &super::conditions::copy_source_conditions_of!(input),
        &src.obj,
    )?;
    let number = part_number(input.part_number)?;
    let range = super::copy::source_range(input.copy_source_range.as_deref(), src.obj.size())?;
    let body = super::copy::source_body(tier, src, range);
    copied_part(tier, input, number, range.len(), body).await
}

/// Writes a copied part into an upload the gateway owns.
async fn copied_part<B>(
    tier: &Tier,
    input: &UploadPartCopyInput,
    number: u32,
    len: u64,
    body: B,
) -> S3Result<S3Response<UploadPartCopyOutput>>
where
    B: futures::Stream<Item = Result<bytes::Bytes, tier::BoxError>> + Unpin + Send,
{
    let part = tier
        .upload_part(
            &input.upload_id,
            &input.bucket,
            &input.key,
            number,
            len,
            body,
            Box::new(BodyCheck::none()),
        )
        .await
        .map_err(tier_error)?;
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(ETag::Strong(part.etag)),
            last_modified: Some(tiered::timestamp_ms(part.last_modified_ms)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// A part number as the tier takes it (negative ones are out of S3's range).
fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n).map_err(|_| {
        s3s::s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        )
    })
}

/// UploadPartCopy into an upload the gateway owns: the source range is read from the bucket
/// (after the source key's writes reached it) and written as the part.
async fn copy_into_owned_part(
    gw: &S3Handler,
    tier: &Tier,
    input: &UploadPartCopyInput,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let CopySource::Bucket {
        bucket: src_bucket,
        key: src_key,
        version_id,
    } = &input.copy_source
    else {
        return Err(s3s::s3_error!(
            NotImplemented,
            "copying a part from an access point into a write-back upload"
        ));
    };
    let number = part_number(input.part_number)?;
    let etag_condition = |e: ETagCondition| s3s_aws::conv::try_into_aws::<ETagCondition>(e).ok();
    let fmt_time = |t: &Timestamp| s3s_aws::conv::try_into_aws::<Timestamp>(t.clone()).ok();
    let out = gw
        .client
        .get_object()
        .bucket(src_bucket.as_ref())
        .key(crate::backend::sdk_key(src_key))
        .set_version_id(version_id.as_deref().map(str::to_owned))
        .set_range(input.copy_source_range.clone())
        .set_if_match(input.copy_source_if_match.clone().and_then(etag_condition))
        .set_if_none_match(
            input
                .copy_source_if_none_match
                .clone()
                .and_then(etag_condition),
        )
        .set_if_modified_since(
            input
                .copy_source_if_modified_since
                .as_ref()
                .and_then(fmt_time),
        )
        .set_if_unmodified_since(
            input
                .copy_source_if_unmodified_since
                .as_ref()
                .and_then(fmt_time),
        )
        .send()
        .await
        .map_err(|e| {
            let err = crate::error::upstream_error(&e);
            // A copy's unmet condition is 412 whichever header it was.
            if err.status_code() == Some(http::StatusCode::NOT_MODIFIED) {
                s3s::s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                )
            } else {
                err
            }
        })?;
    let len = out
        .content_length
        .and_then(|l| u64::try_from(l).ok())
        .unwrap_or(0);
    let body = futures::stream::unfold(out.body, |mut b| async move {
        b.next()
            .await
            .map(|r| (r.map_err(|e| Box::new(e) as tier::BoxError), b))
    });
    copied_part(tier, input, number, len, Box::pin(body)).await
}

/// A gateway-owned upload is completed by the tier (no bytes copied, the bucket not needed).
/// Otherwise the assembled object replaces the key in the bucket: its earlier writes go to the
/// bucket first, and the tier forgets the key (a later read admits the new object).
pub(super) async fn complete_multipart_upload(
    gw: &S3Handler,
    mut req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let mut moved = None;
    if let Some(tier) = owner(gw, &req.input.upload_id)?
        && let Some(to) = tier
            .forwarded(&req.input.upload_id, &req.input.bucket, &req.input.key)
            .map_err(tier_error)?
    {
        // Moved to the bucket: the bucket completes it.
        moved = Some((
            tier.clone(),
            std::mem::replace(&mut req.input.upload_id, to),
        ));
    } else if let Some(tier) = owner(gw, &req.input.upload_id)? {
        let input = &req.input;
        let parts: Vec<CompletedPartRef> = input
            .multipart_upload
            .iter()
            .flat_map(|m| m.parts.iter().flatten())
            .map(|p| CompletedPartRef {
                number: p
                    .part_number
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                etag: p
                    .e_tag
                    .as_ref()
                    .map(|e| e.value().to_owned())
                    .unwrap_or_default(),
                checksums: super::check::to_map(&Checksum {
                    checksum_crc32: p.checksum_crc32.clone(),
                    checksum_crc32c: p.checksum_crc32c.clone(),
                    checksum_crc64nvme: p.checksum_crc64nvme.clone(),
                    checksum_sha1: p.checksum_sha1.clone(),
                    checksum_sha256: p.checksum_sha256.clone(),
                    ..Default::default()
                }),
            })
            .collect();
        let meta = tier
            .complete_upload(&input.upload_id, &input.bucket, &input.key, &parts)
            .await
            .map_err(tier_error)?;
        return Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(ETag::Strong(meta.etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }));
    }
    let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
    let done = gw
        .write_through(&bucket, &key, || async move {
            let mut req = req;
            proxied!(
                uploads: gw,
                complete_multipart_upload,
                keyed req,
                CompleteMultipartUploadError
            )
        })
        .await?;
    if let Some((tier, id)) = moved {
        tier.forget_upload(&id).await;
    }
    Ok(done)
}

pub(super) async fn abort_multipart_upload(
    gw: &S3Handler,
    mut req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    if let Some(tier) = owner(gw, &req.input.upload_id)? {
        let input = &req.input;
        tier.abort_upload(&input.upload_id, &input.bucket, &input.key)
            .await
            .map_err(tier_error)?;
        return Ok(S3Response::new(AbortMultipartUploadOutput::default()));
    }
    proxied!(gw, abort_multipart_upload, keyed req, AbortMultipartUploadError)
}

pub(super) async fn list_parts(
    gw: &S3Handler,
    mut req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let Some(tier) = owner(gw, &req.input.upload_id)? else {
        return proxied!(gw, list_parts, keyed req, ListPartsError);
    };
    if let Some(to) = tier
        .forwarded(&req.input.upload_id, &req.input.bucket, &req.input.key)
        .map_err(tier_error)?
    {
        let id = std::mem::replace(&mut req.input.upload_id, to);
        let key = req.input.key.clone();
        let mut resp = proxied!(gw, list_parts, keyed req, ListPartsError)?;
        resp.output.upload_id = Some(id);
        resp.output.key = Some(key);
        return Ok(resp);
    }
    let input = &req.input;
    let (info, parts) = tier
        .list_parts(&input.upload_id, &input.bucket, &input.key)
        .map_err(tier_error)?;
    let max = usize::try_from(input.max_parts.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
    let after = u32::try_from(input.part_number_marker.unwrap_or(0)).unwrap_or(0);
    let rest: Vec<_> = parts.into_iter().filter(|p| p.number > after).collect();
    let truncated = rest.len() > max;
    let page: Vec<Part> = rest
        .into_iter()
        .take(max)
        .map(|p| {
            let mut part = Part {
                part_number: i32::try_from(p.number).ok(),
                size: i64::try_from(p.size).ok(),
                e_tag: Some(ETag::Strong(p.etag.clone())),
                last_modified: Some(tiered::timestamp_ms(p.last_modified_ms)),
                ..Default::default()
            };
            set_checksums!(part, &p.checksums);
            part
        })
        .collect();
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(input.bucket.clone()),
        key: Some(input.key.clone()),
        upload_id: Some(info.id),
        max_parts: i32::try_from(max).ok(),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: page.last().and_then(|p| p.part_number),
        is_truncated: Some(truncated),
        storage_class: Some(StorageClass::from(
            info.storage_class
                .unwrap_or_else(|| StorageClass::STANDARD.to_owned()),
        )),
        parts: Some(page),
        ..Default::default()
    }))
}

pub(super) async fn list_multipart_uploads(
    gw: &S3Handler,
    mut req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let enc = ListEncoding::take(&mut req.input.encoding_type);
    let moved = gw
        .tier
        .as_ref()
        .map(|t| t.forwarded_ids())
        .unwrap_or_default();
    let mine = match &gw.tier {
        Some(t) if req.input.key_marker.is_none() && req.input.upload_id_marker.is_none() => {
            t.uploads_under(&req.input.bucket, req.input.prefix.as_deref().unwrap_or(""))
        }
        _ => Vec::new(),
    };
    let mut resp = proxied!(gw, list_multipart_uploads, req, ListMultipartUploadsError)?;
    let out = &mut resp.output;
    // The gateway's own uploads first (on the first page), then the bucket's (those it holds
    // for uploads the gateway moved there are listed under the gateway's ids).
    if let Some(uploads) = out.uploads.as_mut() {
        uploads.retain(|u| u.upload_id.as_ref().is_none_or(|id| !moved.contains(id)));
    }
    if !mine.is_empty() {
        let mut uploads: Vec<MultipartUpload> = mine
            .into_iter()
            .map(|u| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.id),
                initiated: Some(tiered::timestamp_ms(u.initiated_ms)),
                storage_class: Some(StorageClass::from(
                    u.storage_class
                        .unwrap_or_else(|| StorageClass::STANDARD.to_owned()),
                )),
                ..Default::default()
            })
            .collect();
        uploads.extend(out.uploads.take().unwrap_or_default());
        out.uploads = Some(uploads);
    }
    if enc.url() {
        for s in [
            &mut out.prefix,
            &mut out.delimiter,
            &mut out.key_marker,
            &mut out.next_key_marker,
        ] {
            encode_opt(s);
        }
        for u in out.uploads.iter_mut().flatten() {
            encode_opt(&mut u.key);
        }
        for p in out.common_prefixes.iter_mut().flatten() {
            encode_opt(&mut p.prefix);
        }
    }
    out.encoding_type = enc.output();
    Ok(resp)
}
