//! ListObjects (v1, v2) with `encoding-type=url` done by the gateway; with the tier on, paged
//! by the gateway with the tier's unpersisted writes merged in ([`super::merge`]).
//!
//! Backing stores differ: some ignore `encoding-type` and return raw keys (s3s-fs), some
//! encode. The gateway asks the backing store for raw keys and encodes the listing itself when
//! the client asked, so `a+b c.txt` comes back to the aws CLI as `a+b c.txt` whatever the store.

use aws_sdk_s3::operation::{list_objects::ListObjectsError, list_objects_v2::ListObjectsV2Error};
use percent_encoding::utf8_percent_encode;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

use super::merge::{self, Query};
use super::{S3Handler, proxied};

use crate::backend::KEY_SET;

/// Percent-encodes a key as S3 does for `encoding-type=url`.
pub(super) fn encode_key(s: &str) -> String {
    utf8_percent_encode(s, KEY_SET).to_string()
}

/// Encodes an optional field in place.
pub(super) fn encode_opt(s: &mut Option<String>) {
    if let Some(v) = s.as_mut() {
        *v = encode_key(v);
    }
}

/// What the client asked for; the request to the backing store asks for raw keys.
pub(super) struct ListEncoding(bool);

impl ListEncoding {
    /// Takes the client's `encoding-type` out of the input.
    pub(super) fn take(enc: &mut Option<EncodingType>) -> Self {
        Self(
            enc.take()
                .is_some_and(|e| e.as_str().eq_ignore_ascii_case(EncodingType::URL)),
        )
    }

    /// Whether keys must be URL-encoded.
    pub(super) fn url(&self) -> bool {
        self.0
    }

    /// The `EncodingType` element of the response.
    pub(super) fn output(&self) -> Option<EncodingType> {
        self.0.then(|| EncodingType::from_static(EncodingType::URL))
    }
}

/// An empty `delimiter=` (rclone sends one) means no delimiter, as in S3; some backing stores
/// (s3s-fs) would split every key at its first character.
fn no_empty_delimiter(d: &mut Option<Delimiter>) {
    if d.as_deref() == Some("") {
        *d = None;
    }
}

fn encode_objects(contents: &mut Option<Vec<Object>>, prefixes: &mut Option<Vec<CommonPrefix>>) {
    for o in contents.iter_mut().flatten() {
        encode_opt(&mut o.key);
    }
    for p in prefixes.iter_mut().flatten() {
        encode_opt(&mut p.prefix);
    }
}

pub(super) async fn list_objects(
    gw: &S3Handler,
    mut req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let enc = ListEncoding::take(&mut req.input.encoding_type);
    no_empty_delimiter(&mut req.input.delimiter);
    let mut resp = match &gw.tier {
        Some(tier) => {
            let input = &req.input;
            let q = Query {
                bucket: input.bucket.clone(),
                prefix: input.prefix.clone().unwrap_or_default(),
                delimiter: input.delimiter.clone(),
                after: input.marker.clone().filter(|m| !m.is_empty()),
                max_keys: merge::max_keys(input.max_keys)?,
                fetch_owner: true,
                expected_bucket_owner: input.expected_bucket_owner.clone(),
            };
            let page = merge::list(gw, tier, &q).await?;
            S3Response::new(ListObjectsOutput {
                name: Some(q.bucket.clone()),
                prefix: Some(q.prefix.clone()),
                delimiter: q.delimiter.clone(),
                marker: Some(input.marker.clone().unwrap_or_default()),
                max_keys: Some(i32::try_from(q.max_keys).unwrap_or(1000)),
                is_truncated: Some(page.truncated),
                next_marker: page.truncated.then(|| page.last.clone()).flatten(),
                contents: (!page.contents.is_empty()).then_some(page.contents),
                common_prefixes: common_prefixes(page.prefixes),
                ..Default::default()
            })
        }
        None => proxied!(gw, list_objects, req, ListObjectsError)?,
    };
    let out = &mut resp.output;
    if enc.url() {
        for s in [
            &mut out.prefix,
            &mut out.delimiter,
            &mut out.marker,
            &mut out.next_marker,
        ] {
            encode_opt(s);
        }
        encode_objects(&mut out.contents, &mut out.common_prefixes);
    }
    out.encoding_type = enc.output();
    Ok(resp)
}

fn common_prefixes(prefixes: Vec<String>) -> Option<Vec<CommonPrefix>> {
    (!prefixes.is_empty()).then(|| {
        prefixes
            .into_iter()
            .map(|p| CommonPrefix { prefix: Some(p) })
            .collect()
    })
}

pub(super) async fn list_objects_v2(
    gw: &S3Handler,
    mut req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let enc = ListEncoding::take(&mut req.input.encoding_type);
    no_empty_delimiter(&mut req.input.delimiter);
    let mut resp = match &gw.tier {
        Some(tier) => {
            let input = &req.input;
            let after = match input.continuation_token.as_deref() {
                Some(t) => Some(merge::resume_after(t)?),
                None => input.start_after.clone().filter(|s| !s.is_empty()),
            };
            let q = Query {
                bucket: input.bucket.clone(),
                prefix: input.prefix.clone().unwrap_or_default(),
                delimiter: input.delimiter.clone(),
                after,
                max_keys: merge::max_keys(input.max_keys)?,
                fetch_owner: input.fetch_owner.unwrap_or(false),
                expected_bucket_owner: input.expected_bucket_owner.clone(),
            };
            let page = merge::list(gw, tier, &q).await?;
            let count = page.contents.len() + page.prefixes.len();
            S3Response::new(ListObjectsV2Output {
                name: Some(q.bucket.clone()),
                prefix: Some(q.prefix.clone()),
                delimiter: q.delimiter.clone(),
                max_keys: Some(i32::try_from(q.max_keys).unwrap_or(1000)),
                key_count: Some(i32::try_from(count).unwrap_or(i32::MAX)),
                continuation_token: input.continuation_token.clone(),
                start_after: input.start_after.clone(),
                is_truncated: Some(page.truncated),
                next_continuation_token: page
                    .truncated
                    .then(|| page.last.as_deref().map(merge::token))
                    .flatten(),
                contents: (!page.contents.is_empty()).then_some(page.contents),
                common_prefixes: common_prefixes(page.prefixes),
                ..Default::default()
            })
        }
        None => proxied!(gw, list_objects_v2, req, ListObjectsV2Error)?,
    };
    let out = &mut resp.output;
    if enc.url() {
        for s in [&mut out.prefix, &mut out.delimiter, &mut out.start_after] {
            encode_opt(s);
        }
        encode_objects(&mut out.contents, &mut out.common_prefixes);
    }
    out.encoding_type = enc.output();
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_like_s3() {
        assert_eq!(encode_key("a+b c.txt"), "a%2Bb%20c.txt");
        assert_eq!(encode_key("dir/sub/é%#?"), "dir/sub/%C3%A9%25%23%3F");
        assert_eq!(encode_key("safe-_.~"), "safe-_.~");
    }
}
