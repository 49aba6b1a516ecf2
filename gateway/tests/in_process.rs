//! In-process: `gateway::start` with its embedded store, driven by the real `aws_sdk_s3::Client`.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;

mod common;

fn config(dir: &std::path::Path) -> gateway::Config {
    let cfg = common::config(dir);
    cfg.validate().expect("valid");
    cfg
}

#[tokio::test]
async fn put_get_list_through_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gw = gateway::start(&cfg).await.expect("start");
    let c = common::client(&gw, &cfg);
    c.create_bucket()
        .bucket("inproc")
        .send()
        .await
        .expect("create bucket");
    let body = vec![42u8; 300_000];
    c.put_object()
        .bucket("inproc")
        .key("dir/obj")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put");
    let got = c
        .get_object()
        .bucket("inproc")
        .key("dir/obj")
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(got.as_ref(), &body[..]);
    let l = c
        .list_objects_v2()
        .bucket("inproc")
        .send()
        .await
        .expect("list");
    assert_eq!(l.contents().len(), 1);
    // The object is a plain file in the embedded store's directory.
    let stored =
        std::fs::read(cfg.embedded_dir().join("inproc/dir/obj")).expect("stored as a file");
    assert_eq!(stored, body);
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_drains_a_request_in_flight() {
    use futures::StreamExt;
    use http_body_util::StreamBody;

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gw = gateway::start(&cfg).await.expect("start");
    let c = common::client(&gw, &cfg);
    c.create_bucket()
        .bucket("drain")
        .send()
        .await
        .expect("create bucket");
    // An upload that takes ~800 ms: 8 chunks of 1 MiB, 100 ms apart.
    const CHUNK: usize = 1 << 20;
    let stream = futures::stream::iter(0..8u8).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(vec![i; CHUNK])))
    });
    let body = ByteStream::from_body_1_x(StreamBody::new(stream));
    let put = tokio::spawn(
        c.put_object()
            .bucket("drain")
            .key("slow")
            .content_length(8 * CHUNK as i64)
            .body(body)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !put.is_finished(),
        "the upload must still be in flight when shutdown starts"
    );
    gw.shutdown(Duration::from_secs(20)).await;
    put.await
        .unwrap()
        .expect("the in-flight PUT completes during shutdown");
    let stored = std::fs::read(cfg.embedded_dir().join("drain/slow")).expect("stored");
    assert_eq!(stored.len(), 8 * CHUNK);
    assert!(stored[7 * CHUNK..].iter().all(|b| *b == 7));
}
