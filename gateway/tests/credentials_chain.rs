//! The AWS default credential chain (feature `aws-default-credentials`): a gateway configured
//! with empty backing-store keys signs with the credentials of its environment. Gateway A (the
//! embedded default) provides a backing store; gateway B fronts it with no keys in its config.
#![cfg(feature = "aws-default-credentials")]

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;

mod common;

fn config(dir: &std::path::Path) -> gateway::Config {
    let mut cfg = common::config(dir);
    cfg.tier.enabled = false;
    cfg
}

/// Set in the child process that runs the test body with the credentials in its environment.
const CHILD: &str = "CREDENTIALS_CHAIN_CHILD";

#[test]
fn empty_backend_keys_use_the_environment() {
    if std::env::var_os(CHILD).is_some() {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(through_a_gateway_without_keys());
        return;
    }
    // The body runs in a child of this test binary, so the credentials live in its
    // environment from the start (and in no other test's).
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "empty_backend_keys_use_the_environment",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("AWS_ACCESS_KEY_ID", gateway::config::DEV_BACKEND_ACCESS_KEY)
        .env(
            "AWS_SECRET_ACCESS_KEY",
            gateway::config::DEV_BACKEND_SECRET_KEY,
        )
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("run the child");
    assert!(
        out.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran no test:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn through_a_gateway_without_keys() {
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = config(dir_a.path());
    cfg_a.validate().expect("valid");
    let a = gateway::start(&cfg_a).await.expect("start A");

    let dir_b = tempfile::tempdir().unwrap();
    let mut cfg_b = config(dir_b.path());
    cfg_b.backend.url = a.backend_url.clone();
    cfg_b.backend.access_key.clear();
    cfg_b.backend.secret_key.clear();
    cfg_b
        .validate()
        .expect("empty keys are valid with the chain built in");
    let b = gateway::start(&cfg_b).await.expect("start B");

    let c = common::client(&b, &cfg_b);
    c.create_bucket()
        .bucket("chain")
        .send()
        .await
        .expect("create bucket through B");
    c.put_object()
        .bucket("chain")
        .key("k")
        .body(ByteStream::from_static(b"signed by the environment"))
        .send()
        .await
        .expect("put through B");
    let got = c
        .get_object()
        .bucket("chain")
        .key("k")
        .send()
        .await
        .expect("get through B")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(got.as_ref(), b"signed by the environment");
    // The object is in A's store.
    let stored = std::fs::read(cfg_a.embedded_dir().join("chain/k")).expect("stored in A");
    assert_eq!(stored, b"signed by the environment");

    b.shutdown(Duration::from_secs(5)).await;
    a.shutdown(Duration::from_secs(5)).await;
}
