//! The S3 surface: [`S3Handler`] implements `s3s::S3` (the running process, with its servers,
//! is [`crate::Gateway`]).
//!
//! Every operation listed here is either implemented by the gateway or explicitly delegated to
//! the backing store through `s3s_aws::Proxy` (with the gateway's error mapping, see
//! [`crate::error::refine_proxy_error`]); anything else answers 501 NotImplemented. One file
//! per family of operations, as in garage's `api/s3/`.

mod body;
mod bucket;
mod check;
mod conditions;
mod copy;
mod delete;
mod get;
mod list;
mod merge;
mod multipart;
mod put;
mod tagging;
mod tiered;

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

/// Calls `Proxy::$op` and re-maps its error through the gateway's upstream error mapping.
/// `proxied!(gw, ...)` goes through the client with the first-byte timeout, `proxied!(uploads:
/// gw, ...)` through the one for bodies streamed from the client (see [`crate::backend`]).
///
/// `keyed req` first hands the SDK [`crate::backend::sdk_key`] of the request's key (a key of
/// only whitespace would otherwise be refused by the SDK).
macro_rules! proxied {
    (uploads: $gw:expr, $op:ident, keyed $req:ident, $err:ty) => {{
        $req.input.key = crate::backend::sdk_key(&$req.input.key).into_owned();
        proxied!(uploads: $gw, $op, $req, $err)
    }};
    ($gw:expr, $op:ident, keyed $req:ident, $err:ty) => {{
        $req.input.key = crate::backend::sdk_key(&$req.input.key).into_owned();
        proxied!($gw, $op, $req, $err)
    }};
    (uploads: $gw:expr, $op:ident, $req:expr, $err:ty) => {
        $gw.uploads
            .$op($req)
            .await
            .map_err(crate::error::refine_proxy_error::<$err>)
    };
    ($gw:expr, $op:ident, $req:expr, $err:ty) => {
        $gw.proxy
            .$op($req)
            .await
            .map_err(crate::error::refine_proxy_error::<$err>)
    };
}
pub(crate) use proxied;

/// The gateway's S3 operations (`s3s::S3`): buckets map 1:1 onto the backing store's.
pub struct S3Handler {
    /// Forwards operations to the backing store, converting s3s types to the SDK's.
    pub(crate) proxy: s3s_aws::Proxy,
    /// The same, for requests streaming a large body from the client.
    pub(crate) uploads: s3s_aws::Proxy,
    /// The backing store, for calls the gateway composes itself.
    pub(crate) client: aws_sdk_s3::Client,
    /// The region this endpoint reports.
    pub(crate) region: String,
    /// The serverless-memory tier, when enabled.
    pub(crate) tier: Option<std::sync::Arc<tier::Tier>>,
    /// Which keys the backing store takes (checked before a write-back is acknowledged).
    pub(crate) keys: crate::backend::KeyRules,
}

impl S3Handler {
    /// A gateway in front of the store `client` talks to, reporting `region`, with the tier
    /// in front of it when given.
    pub fn new(
        backend: &crate::backend::BackendClients,
        region: String,
        tier: Option<std::sync::Arc<tier::Tier>>,
        keys: crate::backend::KeyRules,
    ) -> Self {
        Self {
            proxy: s3s_aws::Proxy::from(backend.client.clone()),
            uploads: s3s_aws::Proxy::from(backend.uploads.clone()),
            client: backend.client.clone(),
            region,
            tier,
            keys,
        }
    }

    /// Before an operation passed straight to the bucket reads the bucket's copy of these keys:
    /// their unpersisted writes go first (see [`tier::Tier::flush`]).
    pub(crate) async fn flushed(&self, bucket: &str, keys: &[&str]) -> s3s::S3Result<()> {
        let Some(tier) = &self.tier else {
            return Ok(());
        };
        let owned: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        tier.flush(bucket, &owned)
            .await
            .map_err(crate::error::tier_error)
    }

    /// Runs `op`, a write of `key` passed straight to the bucket, in the key's commit order:
    /// after its acknowledged writes are in the bucket, with no write-back commit of the key
    /// meanwhile, and the tier forgets the key's old contents afterwards (see
    /// [`tier::Tier::begin_write`]).
    pub(crate) async fn write_through<T, Fut>(
        &self,
        bucket: &str,
        key: &str,
        op: impl FnOnce() -> Fut,
    ) -> s3s::S3Result<T>
    where
        Fut: std::future::Future<Output = s3s::S3Result<T>>,
    {
        let Some(tier) = &self.tier else {
            return op().await;
        };
        let g = tier
            .begin_write(bucket, key)
            .await
            .map_err(crate::error::tier_error)?;
        let r = op().await;
        tier.end_write(g, r.is_ok()).await;
        r
    }
}

#[async_trait::async_trait]
impl S3 for S3Handler {
    // --- buckets (bucket.rs)
    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        bucket::create_bucket(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        bucket::delete_bucket(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        bucket::head_bucket(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        bucket::get_bucket_location(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        bucket::list_buckets(self, req).await
    }

    // --- listings (list.rs)
    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        list::list_objects(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        list::list_objects_v2(self, req).await
    }

    // --- reads (get.rs)
    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        get::get_object(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        get::head_object(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        get::get_object_attributes(self, req).await
    }

    // --- writes (put.rs, delete.rs, copy.rs)
    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        put::put_object(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        delete::delete_object(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        delete::delete_objects(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        copy::copy_object(self, req).await
    }

    // --- multipart (multipart.rs)
    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        multipart::create_multipart_upload(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key, part = req.input.part_number))]
    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        multipart::upload_part(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key, part = req.input.part_number))]
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        multipart::upload_part_copy(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        multipart::complete_multipart_upload(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        multipart::abort_multipart_upload(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        multipart::list_parts(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket))]
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        multipart::list_multipart_uploads(self, req).await
    }

    // --- tagging (tagging.rs)
    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        tagging::get_object_tagging(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        tagging::put_object_tagging(self, req).await
    }

    #[tracing::instrument(skip_all, fields(bucket = %req.input.bucket, key = %req.input.key))]
    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        tagging::delete_object_tagging(self, req).await
    }
}
