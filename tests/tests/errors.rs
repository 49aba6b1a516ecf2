//! Bad input gets the right S3 error and never crashes the process.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use integration_tests::raw::{self, split_url};
use integration_tests::{
    ACCESS_KEY, Backend, GatewayProc, SECRET_KEY, blocking, error_code, free_port, s3_client,
    unique_bucket,
};

fn request_id_of(body: &str) -> String {
    body.split("<RequestId>")
        .nth(1)
        .and_then(|s| s.split("</RequestId>").next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_s3_errors() {
    let gw = GatewayProc::start("errors_bad_requests", &Backend::Embedded);
    let client = gw.client();
    let bucket = unique_bucket("errors");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    client
        .put_object()
        .bucket(&bucket)
        .key("present")
        .body(ByteStream::from_static(b"0123456789"))
        .send()
        .await
        .expect("put");

    // Unsigned request: 403 AccessDenied, with the request id in body and header.
    let url = format!("{}/{bucket}/present", gw.endpoint);
    let (status, headers, body) = blocking({
        let url = url.clone();
        move || raw::http_get(&url, &[])
    })
    .await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "AccessDenied");
    let header_id = headers
        .iter()
        .find(|(k, _)| k == "x-amz-request-id")
        .map(|(_, v)| v.clone())
        .expect("request id header");
    assert_eq!(
        request_id_of(&body),
        header_id,
        "error body carries the request id"
    );

    // Wrong secret: 403 SignatureDoesNotMatch.
    let wrong = s3_client(&gw.endpoint, ACCESS_KEY, "not-the-secret");
    let err = wrong
        .get_object()
        .bucket(&bucket)
        .key("present")
        .send()
        .await
        .expect_err("wrong secret");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"));

    // Unknown access key: 403 too.
    let unknown = s3_client(&gw.endpoint, "nobody", SECRET_KEY);
    let err = unknown
        .list_buckets()
        .send()
        .await
        .expect_err("unknown key");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));

    // Missing key and bucket: 404.
    let err = client
        .get_object()
        .bucket(&bucket)
        .key("absent")
        .send()
        .await
        .expect_err("missing key");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
    assert_eq!(err.code(), Some("NoSuchKey"));
    let err = client
        .get_object()
        .bucket("no-such-bucket-here")
        .key("x")
        .send()
        .await
        .expect_err("missing bucket");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
    assert_eq!(err.code(), Some("NoSuchBucket"));

    // Unsatisfiable range: 416 InvalidRange.
    let err = client
        .get_object()
        .bucket(&bucket)
        .key("present")
        .range("bytes=100-200")
        .send()
        .await
        .expect_err("unsatisfiable");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(416));
    assert_eq!(err.code(), Some("InvalidRange"));

    // A body shorter than its Content-Length (the client half-closes): 400, nothing stored.
    let put_url = format!("{}/{bucket}/short", gw.endpoint);
    let (host, path) = split_url(&put_url);
    let signed = raw::sign_headers(
        "PUT",
        &put_url,
        &[("host", host.as_str()), ("content-length", "1000")],
        aws_sigv4::http_request::SignableBody::UnsignedPayload,
        ACCESS_KEY,
        SECRET_KEY,
    );
    let mut head = format!("PUT {path} HTTP/1.1\nHost: {host}\nContent-Length: 1000\n");
    for (k, v) in &signed {
        head.push_str(&format!("{k}: {v}\n"));
    }
    let r = blocking(move || raw::exchange(&host, &head, &[b'x'; 400], true)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r.text()), "IncompleteBody");
    let err = client
        .head_object()
        .bucket(&bucket)
        .key("short")
        .send()
        .await
        .expect_err("short body must store nothing");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));

    // Presigned GET works; a tampered one does not.
    let presigned = raw::presign_get(
        &url,
        &split_url(&url).0,
        ACCESS_KEY,
        SECRET_KEY,
        Duration::from_secs(300),
    );
    let (status, _, body) = blocking({
        let p = presigned.clone();
        move || raw::http_get(&p, &[])
    })
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"0123456789");
    let tampered = presigned.replace("present", "presenT");
    let (status, _, _) = blocking(move || raw::http_get(&tampered, &[])).await;
    assert_eq!(status, 403);

    // Still alive and serving.
    client.list_buckets().send().await.expect("still serving");
    assert_eq!(gw.admin_get("/healthz").0, 200);
    let (status, metrics) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("gateway_s3_requests_total{operation=\"GetObject\",status=\"404\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_503_and_not_ready() {
    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}", free_port());
    let gw = GatewayProc::start_with(
        "errors_unreachable_backend",
        &Backend::External(url),
        integration_tests::GatewayOptions {
            env: vec![("GATEWAY_BACKEND_ACCESS_KEY".into(), "k".into())],
            ..Default::default()
        },
    );
    let client = gw.client();
    let err = client
        .list_buckets()
        .send()
        .await
        .expect_err("backend down");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(err.code(), Some("ServiceUnavailable"));
    assert!(
        err.message().unwrap_or_default().contains("backing store"),
        "{:?}",
        err.message()
    );
    let err = client
        .get_object()
        .bucket("any")
        .key("thing")
        .send()
        .await
        .expect_err("backend down");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    let (status, body) = gw.admin_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(gw.admin_get("/healthz").0, 200, "alive though not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_on_sigterm() {
    let mut gw = GatewayProc::start("errors_shutdown", &Backend::Embedded);
    let (status, _) = gw.admin_get("/readyz");
    assert_eq!(status, 200);
    let status = gw
        .proc
        .terminate(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(status.success(), "clean exit, got {status:?}");
}
