//! End-to-end with real clients from the test virtualenv (`$E2E_VENV`, made by `make test`):
//! the aws CLI and boto3 against the built gateway in its embedded default.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{
    ACCESS_KEY, Backend, GatewayProc, SECRET_KEY, payload, tool_or_skip, unique_bucket, venv,
};

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

struct Aws {
    bin: PathBuf,
    endpoint: String,
    logs: PathBuf,
}

impl Aws {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.bin)
            .arg("--endpoint-url")
            .arg(&self.endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("run aws");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join("aws-cli.log"))
            .expect("log");
        use std::io::Write;
        let _ = writeln!(
            log,
            "$ aws {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "aws {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn aws_cli_copy_sync_list_remove() {
    let Some(venv) = tool_or_skip(venv(), "the test virtualenv (E2E_VENV) with the aws CLI") else {
        return;
    };
    let gw = GatewayProc::start("e2e_aws_cli", &Backend::Embedded);
    let aws = Aws {
        bin: venv.join("bin/aws"),
        endpoint: gw.endpoint.clone(),
        logs: gw.logs.clone(),
    };
    let work = tempfile::tempdir().expect("tempdir");
    let bucket = unique_bucket("cli");
    aws.ok(&["s3", "mb", &format!("s3://{bucket}")]);

    // 100 MiB up and down: the CLI uses multipart both ways (8 MiB parts, ranged GETs).
    let big = work.path().join("big.bin");
    std::fs::write(&big, payload(100 << 20, 100)).expect("write");
    aws.ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        big.to_str().unwrap(),
        &format!("s3://{bucket}/big/big.bin"),
    ]);
    let head = aws.ok(&[
        "s3api",
        "head-object",
        "--bucket",
        &bucket,
        "--key",
        "big/big.bin",
    ]);
    assert!(head.contains("104857600"), "{head}");
    assert!(
        head.contains("-13\\\"") || head.contains("-13\""),
        "multipart upload ETag expected: {head}"
    );
    let back = work.path().join("back.bin");
    aws.ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        &format!("s3://{bucket}/big/big.bin"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(
        sha256_file(&big),
        sha256_file(&back),
        "100 MiB round trip differs"
    );

    // sync a directory with awkward names, then ls and rm.
    let dir = work.path().join("tree");
    for (name, size) in [
        ("a.txt", 10usize),
        ("sub/b c.txt", 2000),
        ("sub/deeper/d+e.bin", 70_000),
    ] {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, payload(size, size as u64)).unwrap();
    }
    aws.ok(&[
        "s3",
        "sync",
        "--only-show-errors",
        dir.to_str().unwrap(),
        &format!("s3://{bucket}/tree/"),
    ]);
    let ls = aws.ok(&["s3", "ls", "--recursive", &format!("s3://{bucket}/tree/")]);
    for key in ["tree/a.txt", "tree/sub/b c.txt", "tree/sub/deeper/d+e.bin"] {
        assert!(ls.contains(key), "{key} missing from ls:\n{ls}");
    }
    // A second sync uploads nothing.
    let again = aws.ok(&[
        "s3",
        "sync",
        dir.to_str().unwrap(),
        &format!("s3://{bucket}/tree/"),
    ]);
    assert!(
        again.trim().is_empty(),
        "nothing to sync expected, got: {again}"
    );
    // sync down and compare.
    let down = work.path().join("down");
    aws.ok(&[
        "s3",
        "sync",
        "--only-show-errors",
        &format!("s3://{bucket}/tree/"),
        down.to_str().unwrap(),
    ]);
    for name in ["a.txt", "sub/b c.txt", "sub/deeper/d+e.bin"] {
        assert_eq!(
            sha256_file(&dir.join(name)),
            sha256_file(&down.join(name)),
            "{name}"
        );
    }
    let top = aws.ok(&["s3", "ls", &format!("s3://{bucket}/")]);
    assert!(
        top.contains("PRE big/") && top.contains("PRE tree/"),
        "{top}"
    );
    aws.ok(&[
        "s3",
        "rm",
        "--only-show-errors",
        "--recursive",
        &format!("s3://{bucket}/tree/"),
    ]);
    aws.ok(&[
        "s3",
        "rm",
        "--only-show-errors",
        &format!("s3://{bucket}/big/big.bin"),
    ]);
    let empty = aws.ok(&["s3", "ls", "--recursive", &format!("s3://{bucket}/")]);
    assert!(empty.trim().is_empty(), "{empty}");
    aws.ok(&["s3", "rb", &format!("s3://{bucket}")]);
}

#[test]
fn boto3_upload_and_download_file() {
    let Some(venv) = tool_or_skip(venv(), "the test virtualenv (E2E_VENV) with boto3") else {
        return;
    };
    let gw = GatewayProc::start("e2e_boto3", &Backend::Embedded);
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src.bin");
    std::fs::write(&src, payload(40 << 20, 7)).expect("write");
    let bucket = unique_bucket("boto3");
    let client_bucket = bucket.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        gw.client()
            .create_bucket()
            .bucket(&client_bucket)
            .send()
            .await
            .expect("create bucket")
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/boto3_roundtrip.py");
    let out = Command::new(venv.join("bin/python"))
        .arg(script)
        .arg(&gw.endpoint)
        .arg(&bucket)
        .arg(&src)
        .arg(work.path().join("dst.bin"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "boto3 round trip failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
