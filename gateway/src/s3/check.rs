//! Checking a written-back body against what the client declared (Content-MD5 and the
//! x-amz-checksum-* headers or aws-chunked trailers), before the write is acknowledged.
//! s3s decodes aws-chunked bodies and their trailers but does not compare checksums.

use base64::Engine as _;
use http::HeaderMap;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::Checksum as _;
use s3s::dto::{Checksum, PutObjectInput, UploadPartInput};
use s3s::{S3Error, S3ErrorCode, TrailingHeaders};

/// The algorithms S3 checksums with, and their header names.
const ALGORITHMS: [(&str, &str); 5] = [
    ("CRC32", "x-amz-checksum-crc32"),
    ("CRC32C", "x-amz-checksum-crc32c"),
    ("CRC64NVME", "x-amz-checksum-crc64nvme"),
    ("SHA1", "x-amz-checksum-sha1"),
    ("SHA256", "x-amz-checksum-sha256"),
];

/// What a PUT's body must match.
pub struct BodyCheck {
    hasher: ChecksumHasher,
    content_md5: Option<String>,
    declared: Checksum,
    trailers: Option<TrailingHeaders>,
}

fn enable(h: &mut ChecksumHasher, algorithm: &str) {
    match algorithm.to_ascii_uppercase().as_str() {
        "CRC32" => h.crc32 = Some(s3s::crypto::Crc32::new()),
        "CRC32C" => h.crc32c = Some(s3s::crypto::Crc32c::new()),
        "CRC64NVME" => h.crc64nvme = Some(s3s::crypto::Crc64Nvme::new()),
        "SHA1" => h.sha1 = Some(s3s::crypto::Sha1::new()),
        "SHA256" => h.sha256 = Some(s3s::crypto::Sha256::new()),
        _ => {}
    }
}

/// A [`BodyCheck`] from a PutObject or UploadPart input (same field names).
macro_rules! from_input {
    ($input:expr, $headers:expr, $trailers:expr) => {{
        let input = $input;
        let declared = Checksum {
            checksum_crc32: input.checksum_crc32.clone(),
            checksum_crc32c: input.checksum_crc32c.clone(),
            checksum_crc64nvme: input.checksum_crc64nvme.clone(),
            checksum_sha1: input.checksum_sha1.clone(),
            checksum_sha256: input.checksum_sha256.clone(),
            ..Default::default()
        };
        BodyCheck::new(
            input.checksum_algorithm.as_ref().map(|a| a.as_str()),
            declared,
            input.content_md5.clone(),
            $headers,
            $trailers,
        )
    }};
}

impl BodyCheck {
    /// From a PutObject request: the algorithms named by `x-amz-sdk-checksum-algorithm`,
    /// `x-amz-trailer` and any checksum header present.
    pub fn for_put(
        input: &PutObjectInput,
        headers: &HeaderMap,
        trailers: Option<TrailingHeaders>,
    ) -> Self {
        from_input!(input, headers, trailers)
    }

    /// From an UploadPart request, as [`BodyCheck::for_put`].
    pub fn for_part(
        input: &UploadPartInput,
        headers: &HeaderMap,
        trailers: Option<TrailingHeaders>,
    ) -> Self {
        from_input!(input, headers, trailers)
    }

    /// Checks nothing (a body the gateway read itself).
    pub fn none() -> Self {
        Self::new(None, Checksum::default(), None, &HeaderMap::new(), None)
    }

    fn new(
        algorithm: Option<&str>,
        declared: Checksum,
        content_md5: Option<String>,
        headers: &HeaderMap,
        trailers: Option<TrailingHeaders>,
    ) -> Self {
        let mut hasher = ChecksumHasher::default();
        if let Some(a) = algorithm {
            enable(&mut hasher, a);
        }
        if let Some(t) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            for name in t.split(',').map(str::trim) {
                if let Some((alg, _)) = ALGORITHMS
                    .iter()
                    .find(|(_, h)| h.eq_ignore_ascii_case(name))
                {
                    enable(&mut hasher, alg);
                }
            }
        }
        for (alg, present) in [
            ("CRC32", declared.checksum_crc32.is_some()),
            ("CRC32C", declared.checksum_crc32c.is_some()),
            ("CRC64NVME", declared.checksum_crc64nvme.is_some()),
            ("SHA1", declared.checksum_sha1.is_some()),
            ("SHA256", declared.checksum_sha256.is_some()),
        ] {
            if present {
                enable(&mut hasher, alg);
            }
        }
        Self {
            hasher,
            content_md5,
            declared,
            trailers,
        }
    }

    /// Feeds body bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// Compares with what was declared, once the body has ended (so trailers are in). Returns
    /// the checksums computed (to store with the object).
    pub fn verify(self, md5: &[u8; 16]) -> Result<Checksum, S3Error> {
        if let Some(expected) = &self.content_md5 {
            let got = base64::engine::general_purpose::STANDARD.encode(md5);
            if got != expected.trim() {
                return Err(S3Error::with_message(
                    S3ErrorCode::BadDigest,
                    "The Content-MD5 you specified did not match what we received.",
                ));
            }
        }
        let mut declared = self.declared.clone();
        if let Some(t) = self.trailers.as_ref().and_then(TrailingHeaders::take) {
            let get = |name: &str| t.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            declared.checksum_crc32 = declared
                .checksum_crc32
                .or_else(|| get("x-amz-checksum-crc32"));
            declared.checksum_crc32c = declared
                .checksum_crc32c
                .or_else(|| get("x-amz-checksum-crc32c"));
            declared.checksum_crc64nvme = declared
                .checksum_crc64nvme
                .or_else(|| get("x-amz-checksum-crc64nvme"));
            declared.checksum_sha1 = declared
                .checksum_sha1
                .or_else(|| get("x-amz-checksum-sha1"));
            declared.checksum_sha256 = declared
                .checksum_sha256
                .or_else(|| get("x-amz-checksum-sha256"));
        }
        let got = self.hasher.finalize();
        for (name, want, have) in [
            ("CRC32", &declared.checksum_crc32, &got.checksum_crc32),
            ("CRC32C", &declared.checksum_crc32c, &got.checksum_crc32c),
            (
                "CRC64NVME",
                &declared.checksum_crc64nvme,
                &got.checksum_crc64nvme,
            ),
            ("SHA1", &declared.checksum_sha1, &got.checksum_sha1),
            ("SHA256", &declared.checksum_sha256, &got.checksum_sha256),
        ] {
            if let (Some(w), Some(h)) = (want, have)
                && w.trim() != h
            {
                return Err(S3Error::with_message(
                    S3ErrorCode::BadDigest,
                    format!("The {name} you specified did not match the calculated checksum."),
                ));
            }
        }
        Ok(got)
    }
}

impl tier::BodyCheck for BodyCheck {
    fn update(&mut self, data: &[u8]) {
        BodyCheck::update(self, data);
    }

    fn finish(
        self: Box<Self>,
        md5: &[u8; 16],
    ) -> Result<std::collections::BTreeMap<String, String>, tier::TierError> {
        self.verify(md5)
            .map(|c| to_map(&c))
            .map_err(|e| tier::TierError::BadDigest(e.message().unwrap_or_default().to_owned()))
    }
}

/// The checksums as stored in [`tier::ObjectMeta::checksums`].
pub fn to_map(c: &Checksum) -> std::collections::BTreeMap<String, String> {
    [
        ("CRC32", &c.checksum_crc32),
        ("CRC32C", &c.checksum_crc32c),
        ("CRC64NVME", &c.checksum_crc64nvme),
        ("SHA1", &c.checksum_sha1),
        ("SHA256", &c.checksum_sha256),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    #[test]
    fn detects_mismatches() {
        let mut input = PutObjectInput::builder()
            .bucket("b".into())
            .key("k".into())
            .build()
            .unwrap();
        input.checksum_crc32 = Some("AAAAAA==".into());
        let mut c = BodyCheck::for_put(&input, &HeaderMap::new(), None);
        c.update(b"hello");
        let md5: [u8; 16] = md5::Md5::digest(b"hello").into();
        assert!(c.verify(&md5).is_err());

        // CRC32("hello") = 0x3610a686
        input.checksum_crc32 =
            Some(base64::engine::general_purpose::STANDARD.encode(0x3610_a686u32.to_be_bytes()));
        input.content_md5 = Some(base64::engine::general_purpose::STANDARD.encode(md5));
        let mut c = BodyCheck::for_put(&input, &HeaderMap::new(), None);
        c.update(b"hello");
        let got = c.verify(&md5).unwrap();
        assert_eq!(got.checksum_crc32, input.checksum_crc32);
    }
}
