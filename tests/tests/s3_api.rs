//! The S3 API suite, run through the built gateway binary twice: in front of its embedded
//! store, and in front of an independent S3 server (SeaweedFS).
//!
//! Each case gets its own bucket; a suite runs every case and reports all failures at once.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, EncodingType, ObjectAttributes,
    ObjectIdentifier, Tag, Tagging,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use integration_tests::raw;
use integration_tests::{Backend, GatewayProc, Seaweed, md5_hex, payload, unique_bucket};

/// What a case gets.
#[derive(Clone)]
struct Ctx {
    client: Client,
    bucket: String,
    endpoint: String,
    /// The backing store is s3s-fs (file-mapped keys; see the embedded store's documented limits).
    embedded: bool,
}

type Case = fn(Ctx) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), (|c| $name(c).boxed()) as Case)),*]
    };
}

const CASES: &[(&str, Case)] = cases![
    put_get_sizes,
    ranges,
    head_and_metadata,
    list_v2_prefix_delimiter_pagination,
    list_v1_markers,
    list_encoding_url,
    list_empty_delimiter_is_no_delimiter,
    prefixes_are_not_objects,
    delete_and_delete_objects,
    multipart_three_parts,
    multipart_listings_and_abort,
    copy_object,
    conditional_get_304_keeps_etag,
    special_keys,
    upload_part_copy_special_keys,
    tagging,
    object_attributes,
    streaming_put_without_content_length,
    aws_chunked_put_without_content_length,
    buckets,
];

async fn run_suite(gw: &GatewayProc, embedded: bool) {
    let client = gw.client();
    let mut failures = Vec::new();
    for (name, case) in CASES {
        let bucket = unique_bucket(name);
        client
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket for {name}: {e:?}"));
        let ctx = Ctx {
            client: client.clone(),
            bucket,
            endpoint: gw.endpoint.clone(),
            embedded,
        };
        let started = std::time::Instant::now();
        match tokio::spawn(case(ctx)).await {
            Ok(()) => eprintln!("case {name}: ok ({:?})", started.elapsed()),
            Err(e) => {
                let msg = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    })
                    .unwrap_or_default();
                eprintln!("case {name}: FAILED: {msg}");
                failures.push(format!("{name}: {msg}"));
            }
        }
    }
    assert!(
        gw.admin_get("/healthz").0 == 200,
        "gateway must still be alive after the suite"
    );
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_embedded_backend() {
    let gw = GatewayProc::start("s3_api_embedded", &Backend::Embedded);
    run_suite(&gw, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_seaweedfs_backend() {
    if integration_tests::tool_or_skip(integration_tests::weed_bin(), "SeaweedFS `weed`").is_none()
    {
        return;
    }
    let weed = Seaweed::start("s3_api_seaweedfs").await;
    let gw = GatewayProc::start("s3_api_seaweedfs", &Backend::External(weed.s3_url.clone()));
    run_suite(&gw, false).await;
    drop(gw);
    drop(weed);
}

async fn put(c: &Ctx, key: &str, data: Vec<u8>) -> String {
    c.client
        .put_object()
        .bucket(&c.bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"))
        .e_tag
        .unwrap_or_default()
}

async fn get(c: &Ctx, key: &str) -> Vec<u8> {
    c.client
        .get_object()
        .bucket(&c.bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e:?}"))
        .body
        .collect()
        .await
        .expect("read body")
        .into_bytes()
        .to_vec()
}

async fn put_get_sizes(c: Ctx) {
    for (i, size) in [0usize, 1, 5 << 20, 64 << 20].into_iter().enumerate() {
        let data = payload(size, i as u64);
        let key = format!("obj-{size}");
        let etag = put(&c, &key, data.clone()).await;
        assert_eq!(etag.trim_matches('"'), md5_hex(&data), "etag of {size} B");
        let back = get(&c, &key).await;
        assert_eq!(back.len(), size);
        assert!(back == data, "bytes of {size} B object differ");
    }
}

async fn ranges(c: Ctx) {
    let data = payload(100_000, 7);
    put(&c, "r", data.clone()).await;
    let range = |r: &'static str| {
        let c = c.clone();
        async move {
            c.client
                .get_object()
                .bucket(&c.bucket)
                .key("r")
                .range(r)
                .send()
                .await
        }
    };
    let first = range("bytes=0-9").await.expect("first bytes");
    assert_eq!(first.content_range.as_deref(), Some("bytes 0-9/100000"));
    assert_eq!(
        first.body.collect().await.unwrap().into_bytes().as_ref(),
        &data[..10]
    );
    let last = range("bytes=99990-").await.expect("last bytes");
    assert_eq!(
        last.body.collect().await.unwrap().into_bytes().as_ref(),
        &data[99_990..]
    );
    let suffix = range("bytes=-25").await.expect("suffix");
    assert_eq!(suffix.content_length, Some(25));
    assert_eq!(
        suffix.body.collect().await.unwrap().into_bytes().as_ref(),
        &data[100_000 - 25..]
    );
    let err = range("bytes=200000-").await.expect_err("unsatisfiable");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(416));
    assert_eq!(err.code(), Some("InvalidRange"));
}

async fn head_and_metadata(c: Ctx) {
    let data = payload(1234, 3);
    c.client
        .put_object()
        .bucket(&c.bucket)
        .key("meta.json")
        .content_type("application/json")
        .metadata("owner", "alice")
        .metadata("purpose", "round trip")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .expect("put");
    let h = c
        .client
        .head_object()
        .bucket(&c.bucket)
        .key("meta.json")
        .send()
        .await
        .expect("head");
    assert_eq!(h.content_length, Some(1234));
    assert_eq!(h.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        h.e_tag.as_deref().map(|e| e.trim_matches('"').to_owned()),
        Some(md5_hex(&data))
    );
    let meta = h.metadata.unwrap_or_default();
    assert_eq!(meta.get("owner").map(String::as_str), Some("alice"));
    assert_eq!(meta.get("purpose").map(String::as_str), Some("round trip"));
    let g = c
        .client
        .get_object()
        .bucket(&c.bucket)
        .key("meta.json")
        .send()
        .await
        .expect("get");
    assert_eq!(g.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        g.metadata
            .unwrap_or_default()
            .get("owner")
            .map(String::as_str),
        Some("alice")
    );
    let missing = c
        .client
        .head_object()
        .bucket(&c.bucket)
        .key("nope")
        .send()
        .await
        .expect_err("404");
    assert_eq!(
        missing.raw_response().map(|r| r.status().as_u16()),
        Some(404)
    );
}

async fn list_v2_prefix_delimiter_pagination(c: Ctx) {
    let keys = ["a/1", "a/2", "a/b/3", "b/1", "c", "d", "e"];
    for k in keys {
        put(&c, k, k.as_bytes().to_vec()).await;
    }
    // delimiter at the top: 4 plain keys... c d e and prefixes a/ b/
    let top = c
        .client
        .list_objects_v2()
        .bucket(&c.bucket)
        .delimiter("/")
        .send()
        .await
        .expect("list");
    let objs: Vec<_> = top.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<_> = top
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(objs, ["c", "d", "e"]);
    assert_eq!(prefixes, ["a/", "b/"]);
    // prefix + delimiter
    let a = c
        .client
        .list_objects_v2()
        .bucket(&c.bucket)
        .prefix("a/")
        .delimiter("/")
        .send()
        .await
        .expect("list a/");
    let objs: Vec<_> = a.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<_> = a
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(objs, ["a/1", "a/2"]);
    assert_eq!(prefixes, ["a/b/"]);
    // pagination, 2 per page
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c
            .client
            .list_objects_v2()
            .bucket(&c.bucket)
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("page");
        pages += 1;
        assert!(page.contents().len() <= 2);
        all.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        if page.is_truncated() == Some(true) {
            token = page.next_continuation_token().map(str::to_owned);
            assert!(
                token.is_some(),
                "truncated page without a continuation token"
            );
        } else {
            break;
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(all, keys);
    assert_eq!(pages, 4);
}

async fn list_v1_markers(c: Ctx) {
    let keys = ["k1", "k2", "k3", "k4", "k5"];
    for k in keys {
        put(&c, k, vec![1]).await;
    }
    let mut marker: Option<String> = None;
    let mut all = Vec::new();
    for _ in 0..10 {
        let page = c
            .client
            .list_objects()
            .bucket(&c.bucket)
            .max_keys(2)
            .set_marker(marker.clone())
            .send()
            .await
            .expect("list v1");
        let got: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        all.extend(got.iter().cloned());
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = page
            .next_marker()
            .map(str::to_owned)
            .or_else(|| got.last().cloned());
    }
    assert_eq!(all, keys);
}

async fn list_encoding_url(c: Ctx) {
    let keys = ["a+b c.txt", "dir/é ü.bin", "pct%41.txt"];
    for k in keys {
        put(&c, k, vec![7]).await;
    }
    let l = c
        .client
        .list_objects_v2()
        .bucket(&c.bucket)
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .expect("list");
    assert_eq!(l.encoding_type(), Some(&EncodingType::Url));
    let mut decoded: Vec<String> = l
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .map(|k| {
            percent_encoding::percent_decode_str(&k.replace('+', " "))
                .decode_utf8()
                .unwrap()
                .into_owned()
        })
        .collect();
    decoded.sort();
    let mut want: Vec<String> = keys.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(
        decoded, want,
        "url-encoded listing must decode to the stored keys"
    );
    // without encoding-type the keys come back raw
    let raw_list = c
        .client
        .list_objects_v2()
        .bucket(&c.bucket)
        .send()
        .await
        .expect("list");
    let mut got: Vec<String> = raw_list
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    got.sort();
    assert_eq!(got, want);
}

async fn listed_keys(c: &Ctx) -> Vec<String> {
    let page = c
        .client
        .list_objects_v2()
        .bucket(&c.bucket)
        .send()
        .await
        .expect("list v2");
    page.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

async fn delete_keys(
    c: &Ctx,
    keys: &[&str],
) -> aws_sdk_s3::operation::delete_objects::DeleteObjectsOutput {
    let objects = keys
        .iter()
        .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
        .collect();
    let del = Delete::builder()
        .set_objects(Some(objects))
        .build()
        .unwrap();
    c.client
        .delete_objects()
        .bucket(&c.bucket)
        .delete(del)
        .send()
        .await
        .expect("delete objects")
}

/// `delimiter=` with no value (rclone sends it) lists every key, as without a delimiter.
async fn list_empty_delimiter_is_no_delimiter(c: Ctx) {
    for k in ["top", "dir/a", "dir/sub/b"] {
        put(&c, k, vec![1]).await;
    }
    let want = ["dir/a", "dir/sub/b", "top"];
    let v2 = c
        .client
        .list_objects_v2()
        .bucket(&c.bucket)
        .delimiter("")
        .send()
        .await
        .expect("list v2");
    let keys: Vec<_> = v2.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, want, "v2");
    assert!(v2.common_prefixes().is_empty(), "v2: {v2:?}");
    let v1 = c
        .client
        .list_objects()
        .bucket(&c.bucket)
        .delimiter("")
        .prefix("dir/")
        .send()
        .await
        .expect("list v1");
    let keys: Vec<_> = v1.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["dir/a", "dir/sub/b"], "v1");
    assert!(v1.common_prefixes().is_empty(), "v1: {v1:?}");
}

/// `d` while `d/a` exists is no object: HEAD and GET say 404 / NoSuchKey, deleting it succeeds
/// and deletes nothing else.
async fn prefixes_are_not_objects(c: Ctx) {
    for k in ["d/a", "d/sub/b"] {
        put(&c, k, vec![2; 10]).await;
    }
    for key in ["d", "d/sub"] {
        let head = c
            .client
            .head_object()
            .bucket(&c.bucket)
            .key(key)
            .send()
            .await
            .expect_err("no such object");
        assert_eq!(
            head.raw_response().map(|r| r.status().as_u16()),
            Some(404),
            "HEAD {key}"
        );
        let get = c
            .client
            .get_object()
            .bucket(&c.bucket)
            .key(key)
            .send()
            .await
            .expect_err("no such object");
        assert_eq!(get.code(), Some("NoSuchKey"), "GET {key}");
    }
    c.client
        .delete_object()
        .bucket(&c.bucket)
        .key("d")
        .send()
        .await
        .expect("deleting a missing key succeeds");
    assert_eq!(listed_keys(&c).await, ["d/a", "d/sub/b"]);
    let out = delete_keys(&c, &["d/sub", "d/a"]).await;
    assert!(out.errors().is_empty(), "{out:?}");
    assert_eq!(out.deleted().len(), 2, "{out:?}");
    assert_eq!(listed_keys(&c).await, ["d/sub/b"]);
    if c.embedded {
        // The file mapping cannot hold a key and keys under it: a clear 400, nothing changed.
        for key in ["d/sub", "d/sub/b/c"] {
            let err = c
                .client
                .put_object()
                .bucket(&c.bucket)
                .key(key)
                .body(ByteStream::from(vec![3; 10]))
                .send()
                .await
                .expect_err("refused by the embedded store");
            assert_eq!(err.code(), Some("InvalidArgument"), "PUT {key}");
            assert!(
                err.message()
                    .is_some_and(|m| m.contains("embedded store cannot hold")),
                "PUT {key}: {err:?}"
            );
        }
        assert_eq!(listed_keys(&c).await, ["d/sub/b"]);
    }
}

async fn delete_and_delete_objects(c: Ctx) {
    for k in ["d1", "d2", "d3", "keep"] {
        put(&c, k, vec![1, 2, 3]).await;
    }
    c.client
        .delete_object()
        .bucket(&c.bucket)
        .key("d1")
        .send()
        .await
        .expect("delete");
    let err = c
        .client
        .get_object()
        .bucket(&c.bucket)
        .key("d1")
        .send()
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Some("NoSuchKey"));
    let out = delete_keys(&c, &["d2", "d3"]).await;
    assert_eq!(out.deleted().len(), 2, "{out:?}");
    assert!(out.errors().is_empty());
    assert_eq!(listed_keys(&c).await, ["keep"]);
    // deleting a missing key succeeds, as on S3
    c.client
        .delete_object()
        .bucket(&c.bucket)
        .key("never")
        .send()
        .await
        .expect("idempotent delete");
}

async fn upload_three_parts(c: &Ctx, key: &str) -> (Vec<u8>, String) {
    let parts = [
        payload(5 << 20, 11),
        payload(5 << 20, 12),
        payload(1 << 20, 13),
    ];
    let create = c
        .client
        .create_multipart_upload()
        .bucket(&c.bucket)
        .key(key)
        .content_type("application/x-test")
        .send()
        .await
        .expect("create");
    let id = create.upload_id().expect("upload id").to_owned();
    let mut completed = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = i32::try_from(i + 1).unwrap();
        let r = c
            .client
            .upload_part()
            .bucket(&c.bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(p.clone()))
            .send()
            .await
            .expect("upload part");
        completed.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().unwrap_or_default())
                .build(),
        );
    }
    let listed = c
        .client
        .list_parts()
        .bucket(&c.bucket)
        .key(key)
        .upload_id(&id)
        .send()
        .await
        .expect("list parts");
    assert_eq!(listed.parts().len(), 3);
    let done = c
        .client
        .complete_multipart_upload()
        .bucket(&c.bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    let etag = done.e_tag().unwrap_or_default().to_owned();
    (parts.concat(), etag)
}

async fn multipart_three_parts(c: Ctx) {
    let (whole, etag) = upload_three_parts(&c, "big/multi.bin").await;
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "multipart etag {etag}"
    );
    let back = get(&c, "big/multi.bin").await;
    assert!(back == whole, "multipart object differs");
    let h = c
        .client
        .head_object()
        .bucket(&c.bucket)
        .key("big/multi.bin")
        .send()
        .await
        .expect("head");
    assert_eq!(h.content_length, Some(11 << 20));
    assert_eq!(h.content_type.as_deref(), Some("application/x-test"));
}

async fn multipart_listings_and_abort(c: Ctx) {
    let a = c
        .client
        .create_multipart_upload()
        .bucket(&c.bucket)
        .key("up/one")
        .send()
        .await
        .expect("create");
    let b = c
        .client
        .create_multipart_upload()
        .bucket(&c.bucket)
        .key("up/two")
        .send()
        .await
        .expect("create");
    let l = c
        .client
        .list_multipart_uploads()
        .bucket(&c.bucket)
        .prefix("up/")
        .send()
        .await
        .expect("list uploads");
    let mut keys: Vec<_> = l.uploads().iter().filter_map(|u| u.key()).collect();
    keys.sort();
    assert_eq!(keys, ["up/one", "up/two"]);
    for (key, u) in [("up/one", a), ("up/two", b)] {
        c.client
            .abort_multipart_upload()
            .bucket(&c.bucket)
            .key(key)
            .upload_id(u.upload_id().unwrap())
            .send()
            .await
            .expect("abort");
    }
    let l = c
        .client
        .list_multipart_uploads()
        .bucket(&c.bucket)
        .send()
        .await
        .expect("list uploads");
    assert!(
        l.uploads().is_empty(),
        "aborted uploads still listed: {l:?}"
    );
}

async fn copy_object(c: Ctx) {
    let data = payload(300_000, 21);
    c.client
        .put_object()
        .bucket(&c.bucket)
        .key("src")
        .metadata("color", "blue")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .expect("put");
    c.client
        .copy_object()
        .bucket(&c.bucket)
        .key("dst/copy")
        .copy_source(format!("{}/src", c.bucket))
        .send()
        .await
        .expect("copy");
    assert!(get(&c, "dst/copy").await == data);
    let h = c
        .client
        .head_object()
        .bucket(&c.bucket)
        .key("dst/copy")
        .send()
        .await
        .expect("head");
    assert_eq!(
        h.metadata
            .unwrap_or_default()
            .get("color")
            .map(String::as_str),
        Some("blue")
    );
}

async fn conditional_get_304_keeps_etag(c: Ctx) {
    let etag = put(&c, "cond", b"conditional".to_vec()).await;
    let err = c
        .client
        .get_object()
        .bucket(&c.bucket)
        .key("cond")
        .if_none_match(&etag)
        .send()
        .await
        .expect_err("304");
    let raw = err.raw_response().expect("raw response");
    assert_eq!(raw.status().as_u16(), 304);
    assert_eq!(
        raw.headers().get("etag"),
        Some(etag.as_str()),
        "304 must keep the ETag header"
    );
    // HEAD too
    let err = c
        .client
        .head_object()
        .bucket(&c.bucket)
        .key("cond")
        .if_none_match(&etag)
        .send()
        .await
        .expect_err("304");
    let raw = err.raw_response().expect("raw response");
    assert_eq!(raw.status().as_u16(), 304);
    assert_eq!(raw.headers().get("etag"), Some(etag.as_str()));
    // a non-matching ETag gets the object
    let ok = c
        .client
        .get_object()
        .bucket(&c.bucket)
        .key("cond")
        .if_none_match("\"0000\"")
        .send()
        .await
        .expect("200");
    assert_eq!(ok.e_tag(), Some(etag.as_str()));
    // If-Match mismatch: 412
    let err = c
        .client
        .get_object()
        .bucket(&c.bucket)
        .key("cond")
        .if_match("\"0000\"")
        .send()
        .await
        .expect_err("412");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(412));
}

/// Keys that break a plain pass-through proxy.
fn special_key_list() -> Vec<&'static str> {
    vec![
        "sp ace.txt",
        "plus+sign",
        "percent%20literal",
        "question?mark",
        "hash#tag",
        "unicode/日本語/файл",
        "deep/a/b/c/d.txt",
        "_",
        "amp&eq=semi;colon",
        "tilde~star*quote'paren(1)",
        "/leading/slash",
        "//double/leading",
        "mid//double",
    ]
}

async fn special_keys(c: Ctx) {
    for (i, key) in special_key_list().into_iter().enumerate() {
        let data = format!("content of {key} #{i}").into_bytes();
        put(&c, key, data.clone()).await;
        assert!(get(&c, key).await == data, "bytes of {key:?}");
        let h = c
            .client
            .head_object()
            .bucket(&c.bucket)
            .key(key)
            .send()
            .await;
        assert!(h.is_ok(), "head {key:?}: {h:?}");
    }
    let l = c
        .client
        .list_objects_v2()
        .bucket(&c.bucket)
        .send()
        .await
        .expect("list");
    let listed: std::collections::BTreeSet<_> =
        l.contents().iter().filter_map(|o| o.key()).collect();
    for key in special_key_list() {
        // SeaweedFS itself stores `/a`, `//a` and `a//b` as `a` and `a/b` (seen with the aws
        // CLI straight against it); the embedded store keeps keys exactly.
        let stored = if c.embedded {
            key.to_owned()
        } else {
            key.split('/')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("/")
        };
        assert!(
            listed.contains(stored.as_str()),
            "{key:?} missing from listing {listed:?}"
        );
    }
}

async fn upload_part_copy_special_keys(c: Ctx) {
    let src = "src dir/a+b%c#d?e é.bin";
    let data = payload(6 << 20, 31);
    put(&c, src, data.clone()).await;
    let dst = "dst/x+y z#?.bin";
    let create = c
        .client
        .create_multipart_upload()
        .bucket(&c.bucket)
        .key(dst)
        .send()
        .await
        .expect("create");
    let id = create.upload_id().unwrap().to_owned();
    let source = format!(
        "{}/{}",
        c.bucket,
        percent_encoding::utf8_percent_encode(src, percent_encoding::NON_ALPHANUMERIC)
    );
    let p1 = c
        .client
        .upload_part_copy()
        .bucket(&c.bucket)
        .key(dst)
        .upload_id(&id)
        .part_number(1)
        .copy_source(&source)
        .copy_source_range("bytes=0-5242879")
        .send()
        .await
        .expect("upload part copy 1");
    let p2 = c
        .client
        .upload_part_copy()
        .bucket(&c.bucket)
        .key(dst)
        .upload_id(&id)
        .part_number(2)
        .copy_source(&source)
        .copy_source_range(format!("bytes=5242880-{}", data.len() - 1))
        .send()
        .await
        .expect("upload part copy 2");
    let parts = vec![
        CompletedPart::builder()
            .part_number(1)
            .e_tag(
                p1.copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default(),
            )
            .build(),
        CompletedPart::builder()
            .part_number(2)
            .e_tag(
                p2.copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default(),
            )
            .build(),
    ];
    c.client
        .complete_multipart_upload()
        .bucket(&c.bucket)
        .key(dst)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    assert!(get(&c, dst).await == data, "copied parts differ");
}

async fn tagging(c: Ctx) {
    c.client
        .put_object()
        .bucket(&c.bucket)
        .key("tagged")
        .tagging("team=storage&tier=hot%20data")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect("put with tags");
    let t = c
        .client
        .get_object_tagging()
        .bucket(&c.bucket)
        .key("tagged")
        .send()
        .await
        .expect("get tagging");
    let mut tags: Vec<(String, String)> = t
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            ("team".into(), "storage".into()),
            ("tier".into(), "hot data".into())
        ]
    );
    let tagging = Tagging::builder()
        .tag_set(Tag::builder().key("only").value("one").build().unwrap())
        .build()
        .unwrap();
    c.client
        .put_object_tagging()
        .bucket(&c.bucket)
        .key("tagged")
        .tagging(tagging)
        .send()
        .await
        .expect("put tagging");
    let t = c
        .client
        .get_object_tagging()
        .bucket(&c.bucket)
        .key("tagged")
        .send()
        .await
        .expect("get");
    assert_eq!(t.tag_set().len(), 1);
    assert_eq!(t.tag_set()[0].key(), "only");
    c.client
        .delete_object_tagging()
        .bucket(&c.bucket)
        .key("tagged")
        .send()
        .await
        .expect("delete tagging");
    let t = c
        .client
        .get_object_tagging()
        .bucket(&c.bucket)
        .key("tagged")
        .send()
        .await
        .expect("get");
    assert!(t.tag_set().is_empty());
    let err = c
        .client
        .get_object_tagging()
        .bucket(&c.bucket)
        .key("missing")
        .send()
        .await
        .expect_err("missing object");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
}

async fn object_attributes(c: Ctx) {
    let data = payload(4321, 41);
    let etag = put(&c, "attrs", data).await;
    let a = c
        .client
        .get_object_attributes()
        .bucket(&c.bucket)
        .key("attrs")
        .object_attributes(ObjectAttributes::Etag)
        .object_attributes(ObjectAttributes::ObjectSize)
        .object_attributes(ObjectAttributes::StorageClass)
        .send()
        .await
        .expect("get object attributes");
    assert_eq!(a.object_size(), Some(4321));
    assert_eq!(
        a.e_tag().map(|e| e.trim_matches('"')),
        Some(etag.trim_matches('"'))
    );
    assert!(a.storage_class().is_some());
    let err = c
        .client
        .get_object_attributes()
        .bucket(&c.bucket)
        .key("missing")
        .object_attributes(ObjectAttributes::ObjectSize)
        .send()
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Some("NoSuchKey"));
}

/// A signed PUT streamed with `Transfer-Encoding: chunked`, no `Content-Length`, the length in
/// `x-amz-decoded-content-length` (UNSIGNED-PAYLOAD).
async fn streaming_put_without_content_length(c: Ctx) {
    let data = payload(200_000, 51);
    let url = format!("{}/{}/streamed", c.endpoint, c.bucket);
    let (host, path) = raw::split_url(&url);
    let len = data.len().to_string();
    let signed = raw::sign_headers(
        "PUT",
        &url,
        &[
            ("host", host.as_str()),
            ("x-amz-decoded-content-length", len.as_str()),
        ],
        aws_sigv4::http_request::SignableBody::UnsignedPayload,
        integration_tests::ACCESS_KEY,
        integration_tests::SECRET_KEY,
    );
    let mut head = format!(
        "PUT {path} HTTP/1.1\nHost: {host}\nTransfer-Encoding: chunked\nx-amz-decoded-content-length: {len}\nConnection: close\n"
    );
    for (k, v) in &signed {
        head.push_str(&format!("{k}: {v}\n"));
    }
    let mut body = Vec::new();
    for chunk in data.chunks(65_536) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let r = tokio::task::spawn_blocking(move || raw::exchange(&host, &head, &body, false))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(get(&c, "streamed").await == data);
}

/// aws-chunked with a checksum trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER), the way current
/// SDKs upload, sent without `Content-Length`.
async fn aws_chunked_put_without_content_length(c: Ctx) {
    let data = payload(150_000, 61);
    let url = format!("{}/{}/chunked-trailer", c.endpoint, c.bucket);
    let (host, path) = raw::split_url(&url);
    let len = data.len().to_string();
    let crc = {
        // CRC32 (IEEE) of the payload, base64 big-endian, as the x-amz-checksum-crc32 trailer.
        let mut crc: u32 = !0;
        for &b in &data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let bytes = (!crc).to_be_bytes();
        aws_smithy_types::base64::encode(bytes)
    };
    let signed_headers = [
        ("host", host.as_str()),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", len.as_str()),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
        ("x-amz-sdk-checksum-algorithm", "CRC32"),
    ];
    let signed = raw::sign_headers(
        "PUT",
        &url,
        &signed_headers,
        aws_sigv4::http_request::SignableBody::StreamingUnsignedPayloadTrailer,
        integration_tests::ACCESS_KEY,
        integration_tests::SECRET_KEY,
    );
    let mut head = format!("PUT {path} HTTP/1.1\nTransfer-Encoding: chunked\nConnection: close\n");
    for (k, v) in signed_headers {
        head.push_str(&format!("{k}: {v}\n"));
    }
    for (k, v) in &signed {
        head.push_str(&format!("{k}: {v}\n"));
    }
    let mut chunked = Vec::new();
    for chunk in data.chunks(65_536) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(format!("0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n").as_bytes());
    // transport framing (Transfer-Encoding: chunked) around the aws-chunked body
    let mut body = Vec::new();
    body.extend_from_slice(format!("{:x}\r\n", chunked.len()).as_bytes());
    body.extend_from_slice(&chunked);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = tokio::task::spawn_blocking(move || raw::exchange(&host, &head, &body, false))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let h = c
        .client
        .head_object()
        .bucket(&c.bucket)
        .key("chunked-trailer")
        .send()
        .await
        .expect("head");
    assert_eq!(h.content_length, Some(150_000));
    assert_ne!(
        h.content_encoding(),
        Some("aws-chunked"),
        "aws-chunked must not be stored"
    );
    assert!(get(&c, "chunked-trailer").await == data);
}

async fn buckets(c: Ctx) {
    let l = c.client.list_buckets().send().await.expect("list buckets");
    assert!(
        l.buckets()
            .iter()
            .any(|b| b.name() == Some(c.bucket.as_str()))
    );
    c.client
        .head_bucket()
        .bucket(&c.bucket)
        .send()
        .await
        .expect("head bucket");
    c.client
        .get_bucket_location()
        .bucket(&c.bucket)
        .send()
        .await
        .expect("get bucket location");
    let missing = unique_bucket("missing");
    let err = c
        .client
        .head_bucket()
        .bucket(&missing)
        .send()
        .await
        .expect_err("missing");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
    let err = c
        .client
        .list_objects_v2()
        .bucket(&missing)
        .send()
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Some("NoSuchBucket"));
    c.client
        .delete_bucket()
        .bucket(&c.bucket)
        .send()
        .await
        .expect("delete bucket");
    let err = c
        .client
        .head_bucket()
        .bucket(&c.bucket)
        .send()
        .await
        .expect_err("deleted");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Virtual-host-style requests for a configured domain, path-style for everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_host_style_for_configured_domains() {
    let gw = GatewayProc::start_with(
        "s3_api_virtual_host",
        &Backend::Embedded,
        integration_tests::GatewayOptions {
            env: vec![("GATEWAY_DOMAINS".into(), "s3.gateway.test".into())],
            ..Default::default()
        },
    );
    let client = gw.client();
    client
        .create_bucket()
        .bucket("vhost-bucket")
        .send()
        .await
        .expect("create (path-style via IP)");
    client
        .put_object()
        .bucket("vhost-bucket")
        .key("k")
        .body(ByteStream::from_static(b"virtual"))
        .send()
        .await
        .expect("put");
    let (addr, _) = raw::split_url(&gw.endpoint);
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let host = format!("vhost-bucket.s3.gateway.test:{port}");
    let url = format!("http://{host}/k");
    let signed = raw::sign_headers(
        "GET",
        &url,
        &[("host", host.as_str())],
        aws_sigv4::http_request::SignableBody::Bytes(&[]),
        integration_tests::ACCESS_KEY,
        integration_tests::SECRET_KEY,
    );
    let mut head = format!("GET /k HTTP/1.1\nHost: {host}\nConnection: close\n");
    for (k, v) in &signed {
        head.push_str(&format!("{k}: {v}\n"));
    }
    let r = tokio::task::spawn_blocking(move || raw::exchange(&addr, &head, &[], false))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"virtual");
    // localhost:PORT is not a configured domain: path-style.
    let local = s3_client_for(&format!("http://localhost:{port}"));
    let l = local
        .list_objects_v2()
        .bucket("vhost-bucket")
        .send()
        .await
        .expect("path-style via localhost");
    assert_eq!(l.contents().len(), 1);
}

fn s3_client_for(endpoint: &str) -> Client {
    integration_tests::s3_client(
        endpoint,
        integration_tests::ACCESS_KEY,
        integration_tests::SECRET_KEY,
    )
}
