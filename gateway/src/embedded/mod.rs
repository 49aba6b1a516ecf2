//! The embedded backing store: s3s-fs in-process, served over HTTP on a loopback port, so the
//! gateway reaches it through the very same `aws_sdk_s3::Client` path as a real S3 bucket.
//!
//! s3s-fs 0.14 lacks object tagging and ListMultipartUploads; [`EmbeddedStore`] adds both on top
//! of its files (tags in `.gateway-tagging.*.json` files beside s3s-fs's own metadata in the
//! store's root; uploads listed from s3s-fs's per-upload metadata files), and forwards every
//! other operation s3s-fs implements. Keys are escaped on the way in ([`keys`]) so that a
//! leading `/` or a `//` reach the files intact. Known limits of the file mapping (documented
//! in the README): a key cannot be both an object and a "directory" prefix of another key (`a`
//! and `a/b`), keys with `.`/`..` segments are refused, and keys with empty segments list in
//! the order of their escaped form.

pub mod keys;
pub mod throttle;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use self::keys::{decode, encode, encode_prefix};
use s3s_fs::FileSystem;
use tokio::net::TcpListener;

use crate::error::GatewayError;

/// A running embedded store.
pub struct EmbeddedHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its directory.
    pub dir: PathBuf,
    /// The store itself (for checks the gateway makes before it acknowledges a write).
    pub store: EmbeddedStore,
    shutdown: crate::server::ShutdownHandle,
}

impl EmbeddedHandle {
    /// The endpoint URL for the backing-store client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (bounded by `grace`).
    pub async fn shutdown(self, grace: std::time::Duration) {
        self.shutdown.shutdown(grace).await;
    }
}

/// Starts the embedded store on `listen` (a loopback address), storing under `dir`, accepting
/// requests signed with `access_key`/`secret_key`.
pub async fn start(
    listen: SocketAddr,
    dir: &Path,
    access_key: &str,
    secret_key: &str,
    profile: throttle::S3Profile,
) -> Result<EmbeddedHandle, GatewayError> {
    std::fs::create_dir_all(dir).map_err(|source| GatewayError::Io {
        context: format!(
            "cannot create the embedded store directory {}",
            dir.display()
        ),
        source,
    })?;
    let fs = FileSystem::new(dir).map_err(|e| GatewayError::Embedded(format!("{e:?}")))?;
    let store = EmbeddedStore {
        fs: Arc::new(fs),
        root: dir.canonicalize().map_err(|source| GatewayError::Io {
            context: format!("cannot resolve {}", dir.display()),
            source,
        })?,
        profile,
    };
    let mut builder = S3ServiceBuilder::new(store.clone());
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| GatewayError::Io {
        context: "embedded store address".into(),
        source,
    })?;
    let shutdown = crate::server::serve_plain(listener, service);
    Ok(EmbeddedHandle {
        addr,
        dir: dir.to_owned(),
        store,
        shutdown,
    })
}

/// s3s-fs plus tagging and ListMultipartUploads.
#[derive(Clone)]
pub struct EmbeddedStore {
    fs: Arc<FileSystem>,
    root: PathBuf,
    profile: throttle::S3Profile,
}

/// Copies the request context (credentials, headers, ...) onto another operation's input.
fn sub_request<T, U>(req: &S3Request<T>, input: U) -> S3Request<U> {
    S3Request {
        input,
        method: req.method.clone(),
        uri: req.uri.clone(),
        headers: req.headers.clone(),
        extensions: http::Extensions::new(),
        credentials: req.credentials.clone(),
        region: req.region.clone(),
        service: req.service.clone(),
        trailing_headers: None,
    }
}

fn decode_opt(s: &mut Option<String>) {
    if let Some(v) = s.as_mut() {
        *v = decode(v);
    }
}

fn decode_listing(contents: &mut Option<Vec<Object>>, prefixes: &mut Option<Vec<CommonPrefix>>) {
    for o in contents.iter_mut().flatten() {
        decode_opt(&mut o.key);
    }
    for p in prefixes.iter_mut().flatten() {
        decode_opt(&mut p.prefix);
    }
}

fn encode_copy_source(src: &mut CopySource) -> S3Result<()> {
    if let CopySource::Bucket { key, .. } = src {
        *key = encode(key)?.into();
    }
    Ok(())
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn unb64(s: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()
}

fn io_error(e: std::io::Error) -> S3Error {
    S3Error::internal_error(e)
}

/// Parses an `x-amz-tagging` header value (`k1=v1&k2=v2`, form-urlencoded).
pub fn parse_tagging_header(s: &str) -> S3Result<TagSet> {
    let mut tags = Vec::new();
    let mut seen = BTreeSet::new();
    for (k, v) in form_urlencoded::parse(s.as_bytes()) {
        if !seen.insert(k.to_string()) {
            return Err(s3_error!(InvalidTag, "duplicate tag key {k:?}"));
        }
        tags.push(Tag {
            key: Some(k.into_owned()),
            value: Some(v.into_owned()),
        });
    }
    validate_tags(&tags)?;
    Ok(tags)
}

fn validate_tags(tags: &TagSet) -> S3Result<()> {
    if tags.len() > 10 {
        return Err(s3_error!(InvalidTag, "an object can have at most 10 tags"));
    }
    for t in tags {
        let k = t.key.as_deref().unwrap_or("");
        let v = t.value.as_deref().unwrap_or("");
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(s3_error!(
                InvalidTag,
                "tag keys are 1-128 characters, values 0-256"
            ));
        }
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredTags(Vec<(String, String)>);

impl EmbeddedStore {
    fn tagging_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".gateway-tagging.{}.{}.json",
            b64(bucket),
            b64(key)
        ))
    }

    /// s3s-fs's internal record of an object (its ETag and checksums).
    fn internal_info_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            b64(bucket),
            b64(key)
        ))
    }

    fn upload_tagging_path(&self, upload_id: &str) -> PathBuf {
        self.root
            .join(format!(".gateway-upload-tagging.{}.json", b64(upload_id)))
    }

    async fn read_tags_at(path: &Path) -> S3Result<TagSet> {
        match tokio::fs::read(path).await {
            Ok(bytes) => {
                let StoredTags(pairs) =
                    serde_json::from_slice(&bytes).map_err(S3Error::internal_error)?;
                Ok(pairs
                    .into_iter()
                    .map(|(k, v)| Tag {
                        key: Some(k),
                        value: Some(v),
                    })
                    .collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn write_tags_at(path: &Path, tags: &TagSet) -> S3Result<()> {
        if tags.is_empty() {
            return Self::remove_file(path).await;
        }
        let pairs = tags
            .iter()
            .map(|t| {
                (
                    t.key.clone().unwrap_or_default(),
                    t.value.clone().unwrap_or_default(),
                )
            })
            .collect();
        let bytes = serde_json::to_vec(&StoredTags(pairs)).map_err(S3Error::internal_error)?;
        let tmp = path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, bytes).await.map_err(io_error)?;
        tokio::fs::rename(&tmp, path).await.map_err(io_error)
    }

    async fn remove_file(path: &Path) -> S3Result<()> {
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Whether the (encoded) key is a directory of the file mapping: `a` while `a/b` exists.
    /// S3 holds no such object, so reads answer `NoSuchKey` and deletes succeed.
    async fn is_directory(&self, bucket: &str, key: &str) -> bool {
        !key.ends_with('/') && self.metadata(bucket, key).await.is_some_and(|m| m.is_dir())
    }

    /// What the file system holds at the (encoded) key's path, if anything.
    async fn metadata(&self, bucket: &str, key: &str) -> Option<std::fs::Metadata> {
        tokio::fs::metadata(self.root.join(bucket).join(key))
            .await
            .ok()
    }

    /// `NoSuchKey` for a copy source that is a directory of the file mapping.
    async fn no_directory_source(&self, src: &CopySource) -> S3Result<()> {
        match src {
            CopySource::Bucket { bucket, key, .. } => self.no_directory(bucket, key).await,
            _ => Ok(()),
        }
    }

    /// `NoSuchKey` for a key that is a directory of the file mapping.
    async fn no_directory(&self, bucket: &str, key: &str) -> S3Result<()> {
        if self.is_directory(bucket, key).await {
            return Err(s3_error!(NoSuchKey));
        }
        Ok(())
    }

    /// The error a PutObject of `key` would get for a key the file mapping cannot hold, if any
    /// (the gateway asks before it acknowledges a write-back of it).
    pub async fn refusal(&self, bucket: &str, key: &str) -> Option<S3Error> {
        let encoded = match encode(key) {
            Ok(k) => k,
            Err(e) => return Some(e),
        };
        self.check_writable(bucket, &encoded, false).await.err()
    }

    /// Refuses, with a clear error, a write the file mapping cannot hold: `a` while keys under
    /// `a/` exist, `a/b` while `a` is an object, or a key [`keys::check_holdable`] refuses.
    async fn check_writable(&self, bucket: &str, key: &str, multipart: bool) -> S3Result<()> {
        keys::check_holdable(bucket, key, multipart)?;
        let conflict = |other: &str| {
            s3_error!(
                InvalidArgument,
                "the embedded store cannot hold both {:?} and {:?}: a key cannot also be a \
                 '/'-prefix of other keys (a limit of its file mapping, not of S3)",
                decode(key),
                decode(other)
            )
        };
        if self.is_directory(bucket, key).await {
            return Err(conflict(&format!("{key}/…")));
        }
        let mut end = 0;
        while let Some(i) = key[end..].find('/') {
            end += i;
            let parent = &key[..end];
            if self
                .metadata(bucket, parent)
                .await
                .is_some_and(|m| m.is_file())
            {
                return Err(conflict(parent));
            }
            end += 1;
        }
        Ok(())
    }

    async fn object_exists<T>(&self, req: &S3Request<T>, bucket: &str, key: &str) -> S3Result<()> {
        self.no_directory(bucket, key).await?;
        let input = HeadObjectInput::builder()
            .bucket(bucket.to_owned())
            .key(key.to_owned())
            .build()
            .map_err(S3Error::internal_error)?;
        match self.fs.head_object(sub_request(req, input)).await {
            Ok(_) => Ok(()),
            Err(e)
                if e.status_code() == Some(http::StatusCode::NOT_FOUND)
                    || *e.code() == S3ErrorCode::NoSuchKey =>
            {
                Err(s3_error!(NoSuchKey))
            }
            Err(e) => Err(e),
        }
    }

    async fn tag_count(&self, bucket: &str, key: &str) -> S3Result<Option<i32>> {
        let n = Self::read_tags_at(&self.tagging_path(bucket, key))
            .await?
            .len();
        Ok((n > 0).then(|| i32::try_from(n).unwrap_or(i32::MAX)))
    }

    /// In-progress uploads of `bucket`, from s3s-fs's per-upload metadata files
    /// (`.bucket-<b64>.object-<b64>.upload-<uuid>.metadata.json`), sorted by key then time.
    async fn uploads_of(
        &self,
        bucket: &str,
    ) -> S3Result<Vec<(String, String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.root).await.map_err(io_error)?;
        let want = format!(".bucket-{}.object-", b64(bucket));
        while let Some(entry) = dir.next_entry().await.map_err(io_error)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(&want) else {
                continue;
            };
            let Some(rest) = rest.strip_suffix(".metadata.json") else {
                continue;
            };
            let Some((key_b64, upload)) = rest.split_once(".upload-") else {
                continue;
            };
            let Some(key) = unb64(key_b64).map(|k| decode(&k)) else {
                continue;
            };
            let modified = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            out.push((key, upload.to_owned(), modified));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)).then(a.1.cmp(&b.1)));
        Ok(out)
    }
}

#[async_trait::async_trait]
impl S3 for EmbeddedStore {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects(
        &self,
        mut req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let (prefix, marker) = (req.input.prefix.clone(), req.input.marker.clone());
        req.input.prefix = prefix.as_deref().map(encode_prefix);
        req.input.marker = marker.as_deref().map(encode_prefix);
        let mut resp = self.fs.list_objects(req).await?;
        let out = &mut resp.output;
        decode_listing(&mut out.contents, &mut out.common_prefixes);
        decode_opt(&mut out.next_marker);
        out.prefix = prefix;
        out.marker = marker;
        Ok(resp)
    }

    async fn list_objects_v2(
        &self,
        mut req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let (prefix, start_after) = (req.input.prefix.clone(), req.input.start_after.clone());
        req.input.prefix = prefix.as_deref().map(encode_prefix);
        req.input.start_after = start_after.as_deref().map(encode_prefix);
        let mut resp = self.fs.list_objects_v2(req).await?;
        let out = &mut resp.output;
        decode_listing(&mut out.contents, &mut out.common_prefixes);
        out.prefix = prefix;
        out.start_after = start_after;
        Ok(resp)
    }

    async fn get_object(
        &self,
        mut req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        req.input.key = encode(&req.input.key)?;
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.no_directory(&bucket, &key).await?;
        let mut resp = self.fs.get_object(req).await?;
        resp.output.tag_count = self.tag_count(&bucket, &key).await?;
        if self.profile.is_active()
            && let Some(body) = resp.output.body.take()
        {
            resp.output.body = Some(self.profile.wrap(body));
        }
        Ok(resp)
    }

    async fn head_object(
        &self,
        mut req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.no_directory(&req.input.bucket, &req.input.key).await?;
        self.fs.head_object(req).await
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.check_writable(&req.input.bucket, &req.input.key, false)
            .await?;
        let tags = match req.input.tagging.as_deref() {
            Some(t) => parse_tagging_header(t)?,
            None => Vec::new(),
        };
        let path = self.tagging_path(&req.input.bucket, &req.input.key);
        let resp = self.fs.put_object(req).await?;
        Self::write_tags_at(&path, &tags).await?;
        Ok(resp)
    }

    async fn copy_object(
        &self,
        mut req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        req.input.key = encode(&req.input.key)?;
        encode_copy_source(&mut req.input.copy_source)?;
        self.no_directory_source(&req.input.copy_source).await?;
        self.check_writable(&req.input.bucket, &req.input.key, false)
            .await?;
        let replace = req
            .input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        let tags = if replace {
            match req.input.tagging.as_deref() {
                Some(t) => parse_tagging_header(t)?,
                None => Vec::new(),
            }
        } else {
            match &req.input.copy_source {
                CopySource::Bucket { bucket, key, .. } => {
                    Self::read_tags_at(&self.tagging_path(bucket, key)).await?
                }
                _ => Vec::new(),
            }
        };
        let path = self.tagging_path(&req.input.bucket, &req.input.key);
        let resp = self.fs.copy_object(req).await?;
        Self::write_tags_at(&path, &tags).await?;
        Ok(resp)
    }

    async fn delete_object(
        &self,
        mut req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        req.input.key = encode(&req.input.key)?;
        if self.is_directory(&req.input.bucket, &req.input.key).await {
            return Ok(S3Response::new(DeleteObjectOutput::default()));
        }
        let path = self.tagging_path(&req.input.bucket, &req.input.key);
        let resp = self.fs.delete_object(req).await?;
        Self::remove_file(&path).await?;
        Ok(resp)
    }

    async fn delete_objects(
        &self,
        mut req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        for o in &mut req.input.delete.objects {
            o.key = encode(&o.key)?;
        }
        let bucket = req.input.bucket.clone();
        // Directories of the file mapping are no objects: deleted, as any missing key.
        let mut directories = Vec::new();
        let mut objects = Vec::new();
        for o in std::mem::take(&mut req.input.delete.objects) {
            if self.is_directory(&bucket, &o.key).await {
                directories.push(DeletedObject {
                    key: Some(o.key),
                    version_id: o.version_id,
                    ..Default::default()
                });
            } else {
                objects.push(o);
            }
        }
        req.input.delete.objects = objects;
        let mut resp = self.fs.delete_objects(req).await?;
        resp.output
            .deleted
            .get_or_insert_with(Vec::new)
            .extend(directories);
        for d in resp.output.deleted.iter_mut().flatten() {
            if let Some(key) = &d.key {
                Self::remove_file(&self.tagging_path(&bucket, key)).await?;
            }
            decode_opt(&mut d.key);
        }
        for e in resp.output.errors.iter_mut().flatten() {
            decode_opt(&mut e.key);
        }
        Ok(resp)
    }

    async fn create_multipart_upload(
        &self,
        mut req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.check_writable(&req.input.bucket, &req.input.key, true)
            .await?;
        let tags = match req.input.tagging.as_deref() {
            Some(t) => parse_tagging_header(t)?,
            None => Vec::new(),
        };
        let mut resp = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &resp.output.upload_id {
            Self::write_tags_at(&self.upload_tagging_path(id), &tags).await?;
        }
        decode_opt(&mut resp.output.key);
        Ok(resp)
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.fs.upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        mut req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        req.input.key = encode(&req.input.key)?;
        encode_copy_source(&mut req.input.copy_source)?;
        self.no_directory_source(&req.input.copy_source).await?;
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        mut req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        req.input.key = encode(&req.input.key)?;
        let mut resp = self.fs.list_parts(req).await?;
        decode_opt(&mut resp.output.key);
        Ok(resp)
    }

    async fn complete_multipart_upload(
        &self,
        mut req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.check_writable(&req.input.bucket, &req.input.key, true)
            .await?;
        let pending = self.upload_tagging_path(&req.input.upload_id);
        let path = self.tagging_path(&req.input.bucket, &req.input.key);
        // s3s-fs completes onto the key's old internal record (ETag and checksums) and only
        // replaces the ETag: the old object's checksums would stay, and SDKs reject the new
        // object's body on GET. The old record goes first, and comes back if the completion
        // fails.
        let info = self.internal_info_path(&req.input.bucket, &req.input.key);
        let old_info = tokio::fs::read(&info).await.ok();
        if old_info.is_some() {
            Self::remove_file(&info).await?;
        }
        let completed = self.fs.complete_multipart_upload(req).await;
        if completed.is_err()
            && let Some(bytes) = old_info
        {
            let _ = tokio::fs::write(&info, bytes).await;
        }
        let mut resp = completed?;
        let tags = Self::read_tags_at(&pending).await?;
        Self::write_tags_at(&path, &tags).await?;
        Self::remove_file(&pending).await?;
        decode_opt(&mut resp.output.key);
        Ok(resp)
    }

    async fn abort_multipart_upload(
        &self,
        mut req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        req.input.key = encode(&req.input.key)?;
        let pending = self.upload_tagging_path(&req.input.upload_id);
        let resp = self.fs.abort_multipart_upload(req).await?;
        Self::remove_file(&pending).await?;
        Ok(resp)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let head = HeadBucketInput::builder()
            .bucket(req.input.bucket.clone())
            .build()
            .map_err(S3Error::internal_error)?;
        self.fs.head_bucket(sub_request(&req, head)).await?;
        let input = &req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = usize::try_from(input.max_uploads.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let id_marker = input.upload_id_marker.clone().unwrap_or_default();
        let mut uploads = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut last: Option<(String, String)> = None;
        for (key, id, initiated) in self.uploads_of(&input.bucket).await? {
            if !key.starts_with(&prefix) {
                continue;
            }
            if !key_marker.is_empty()
                && (key < key_marker
                    || (key == key_marker && (id_marker.is_empty() || id <= id_marker)))
            {
                continue;
            }
            if let Some(d) = input.delimiter.as_deref().filter(|d| !d.is_empty())
                && let Some(pos) = key[prefix.len()..].find(d)
            {
                let cp = key[..prefix.len() + pos + d.len()].to_owned();
                if prefixes.last() != Some(&cp) {
                    if uploads.len() + prefixes.len() >= max {
                        truncated = true;
                        break;
                    }
                    prefixes.push(cp);
                    last = Some((key.clone(), id.clone()));
                }
                continue;
            }
            if uploads.len() + prefixes.len() >= max {
                truncated = true;
                break;
            }
            last = Some((key.clone(), id.clone()));
            uploads.push(MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                initiated: Some(Timestamp::from(initiated)),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            });
        }
        let output = ListMultipartUploadsOutput {
            bucket: Some(input.bucket.clone()),
            prefix: input.prefix.clone(),
            delimiter: input.delimiter.clone(),
            key_marker: input.key_marker.clone(),
            upload_id_marker: input.upload_id_marker.clone(),
            max_uploads: Some(i32::try_from(max).unwrap_or(1000)),
            is_truncated: Some(truncated),
            next_key_marker: truncated
                .then(|| last.as_ref().map(|l| l.0.clone()))
                .flatten(),
            next_upload_id_marker: truncated
                .then(|| last.as_ref().map(|l| l.1.clone()))
                .flatten(),
            uploads: Some(uploads),
            common_prefixes: Some(
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn get_object_tagging(
        &self,
        mut req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.object_exists(&req, &req.input.bucket, &req.input.key)
            .await?;
        let tag_set =
            Self::read_tags_at(&self.tagging_path(&req.input.bucket, &req.input.key)).await?;
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set,
            version_id: None,
        }))
    }

    async fn put_object_tagging(
        &self,
        mut req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.object_exists(&req, &req.input.bucket, &req.input.key)
            .await?;
        validate_tags(&req.input.tagging.tag_set)?;
        let path = self.tagging_path(&req.input.bucket, &req.input.key);
        Self::write_tags_at(&path, &req.input.tagging.tag_set).await?;
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    async fn delete_object_tagging(
        &self,
        mut req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        req.input.key = encode(&req.input.key)?;
        self.object_exists(&req, &req.input.bucket, &req.input.key)
            .await?;
        Self::remove_file(&self.tagging_path(&req.input.bucket, &req.input.key)).await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_header() {
        let tags = parse_tagging_header("a=1&b%20c=x%2By").unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[1].key.as_deref(), Some("b c"));
        assert_eq!(tags[1].value.as_deref(), Some("x+y"));
        assert!(parse_tagging_header("a=1&a=2").is_err());
    }
}
