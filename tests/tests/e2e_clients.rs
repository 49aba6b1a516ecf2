//! End-to-end with real clients from the test virtualenv (`$E2E_VENV`, made by `make test`):
//! the aws CLI, boto3 and s5cmd, and rclone (Debian), against the built gateway in its embedded
//! default, each used as its users do and checked on `/metrics` as well as on the bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{
    ACCESS_KEY, Backend, GatewayOptions, GatewayProc, SECRET_KEY, Seaweed, free_port, payload,
    rclone_bin, small_tier_config, tool_or_skip, unique_bucket, venv, weed_bin,
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
    fn ok(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--endpoint-url")
            .arg(&self.endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1");
        run_ok(cmd, "aws", args, &self.logs)
    }
}

/// Runs a client command, appends what it printed to `<tool>.log` in `logs`, and returns its
/// stdout; panics with its output when it fails.
fn run_ok(mut cmd: Command, tool: &str, args: &[&str], logs: &Path) -> String {
    let out: Output = cmd
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{tool}.log")))
        .expect("log");
    use std::io::Write;
    let _ = writeln!(log, "$ {tool} {}\n{stdout}{stderr}", args.join(" "));
    assert!(
        out.status.success(),
        "{tool} {} failed: {stdout}{stderr}",
        args.join(" ")
    );
    stdout.into_owned()
}

/// Waits (up to 60 s) until a metric reaches `at_least`.
fn wait_for_metric(gw: &GatewayProc, series: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while gw.metric(series) < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "{series} stayed at {} (< {at_least})",
            gw.metric(series)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn aws_cli_copy_sync_list_remove() {
    let Some(venv) = tool_or_skip(venv(), "the test virtualenv (E2E_VENV) with the aws CLI") else {
        return;
    };
    let backend_port = free_port();
    let gw = GatewayProc::start_with(
        "e2e_aws_cli",
        &Backend::Embedded,
        GatewayOptions {
            env: vec![(
                "GATEWAY_EMBEDDED_LISTEN".into(),
                format!("127.0.0.1:{backend_port}"),
            )],
            ..Default::default()
        },
    );
    let aws = Aws {
        bin: venv.join("bin/aws"),
        endpoint: gw.endpoint.clone(),
        logs: gw.logs.clone(),
    };
    let work = tempfile::tempdir().expect("tempdir");
    let bucket = unique_bucket("cli");
    aws.ok(&["s3", "mb", &format!("s3://{bucket}")]);

    // 100 MiB up: the CLI uploads it as a multipart upload of 8 MiB parts, which the gateway
    // owns and writes back (the bucket gets it afterwards, with the same parts and ETag).
    let big = work.path().join("big.bin");
    std::fs::write(&big, payload(100 << 20, 100)).expect("write");
    aws.ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        big.to_str().unwrap(),
        &format!("s3://{bucket}/big/big.bin"),
    ]);
    assert_eq!(gw.metric("gateway_tier_multipart_completed_total"), 1.0);
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
    // Once in function memory (placed from the journal in the background), a download (ranged
    // GETs) comes from memory.
    wait_for_metric(&gw, "gateway_tier_admitted_total", 1.0);
    let back = work.path().join("back.bin");
    let download = |what: &str| {
        let _ = std::fs::remove_file(&back);
        aws.ok(&[
            "s3",
            "cp",
            "--only-show-errors",
            &format!("s3://{bucket}/{what}"),
            back.to_str().unwrap(),
        ]);
    };
    let from_tier = gw.metric("gateway_tier_bytes_from_tier_total");
    download("big/big.bin");
    assert_eq!(sha256_file(&big), sha256_file(&back), "100 MiB round trip");
    assert_eq!(
        gw.metric("gateway_tier_bytes_from_tier_total") - from_tier,
        (100 << 20) as f64,
        "the download comes from function memory"
    );
    wait_for_metric(&gw, "gateway_tier_persisted_total", 1.0);
    let direct = integration_tests::s3_client(
        &format!("http://127.0.0.1:{backend_port}"),
        integration_tests::BACKEND_ACCESS_KEY,
        integration_tests::BACKEND_SECRET_KEY,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let in_bucket = rt.block_on(async {
        let h = direct
            .head_object()
            .bucket(&bucket)
            .key("big/big.bin")
            .send()
            .await
            .expect("persisted");
        // An object the gateway never saw: written to the bucket directly.
        direct
            .put_object()
            .bucket(&bucket)
            .key("direct.bin")
            .body(aws_sdk_s3::primitives::ByteStream::from(payload(
                40 << 20,
                41,
            )))
            .send()
            .await
            .expect("direct put");
        h.e_tag.unwrap_or_default()
    });
    assert!(
        head.contains(in_bucket.trim_matches('"')),
        "the bucket has the ETag the client got: {in_bucket} vs {head}"
    );

    // Downloading an object the tier does not hold: parallel ranged GET misses start one
    // background admission of the whole object, and the next download comes from memory.
    download("direct.bin");
    assert!(
        std::fs::read(&back).unwrap() == payload(40 << 20, 41),
        "direct.bin differs"
    );
    wait_for_metric(&gw, "gateway_tier_admitted_total", 2.0);
    assert_eq!(gw.metric("gateway_tier_background_fills_total"), 1.0);
    let (tier_before, bucket_before) = (
        gw.metric("gateway_tier_bytes_from_tier_total"),
        gw.metric("gateway_tier_bytes_from_bucket_total"),
    );
    download("direct.bin");
    assert_eq!(
        gw.metric("gateway_tier_bytes_from_tier_total") - tier_before,
        (40 << 20) as f64,
        "the second download comes from function memory"
    );
    assert_eq!(
        gw.metric("gateway_tier_bytes_from_bucket_total"),
        bucket_before
    );
    aws.ok(&[
        "s3",
        "rm",
        "--only-show-errors",
        &format!("s3://{bucket}/direct.bin"),
    ]);

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
    let run = |extra: &[&str]| {
        let out = Command::new(venv.join("bin/python"))
            .arg(&script)
            .arg(&gw.endpoint)
            .arg(&bucket)
            .arg(&src)
            .arg(work.path().join("dst.bin"))
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "boto3 {extra:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[]);
    // upload_file's multipart upload was written back; once the object is in function memory
    // download_file's ranged GETs are served from it.
    assert_eq!(gw.metric("gateway_tier_multipart_completed_total"), 1.0);
    wait_for_metric(&gw, "gateway_tier_admitted_total", 1.0);
    let from_tier = gw.metric("gateway_tier_bytes_from_tier_total");
    run(&["again"]);
    assert_eq!(
        gw.metric("gateway_tier_bytes_from_tier_total") - from_tier,
        (40 << 20) as f64,
        "download_file comes from function memory"
    );
}

/// s5cmd 64 MiB up in 8 MiB parts (`cp -p 8`, written back) and down (parallel ranged GETs,
/// from function memory).
#[test]
fn s5cmd_copy_down_twice_from_memory() {
    let Some(venv) = tool_or_skip(venv(), "the test virtualenv (E2E_VENV) with s5cmd") else {
        return;
    };
    let gw = GatewayProc::start("e2e_s5cmd", &Backend::Embedded);
    let work = tempfile::tempdir().expect("tempdir");
    let s5 = |args: &[&str]| {
        let mut cmd = Command::new(venv.join("bin/s5cmd"));
        cmd.arg("--endpoint-url")
            .arg(&gw.endpoint)
            .arg("--retry-count")
            .arg("0")
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        run_ok(cmd, "s5cmd", args, &gw.logs)
    };
    let bucket = unique_bucket("s5cmd");
    s5(&["mb", &format!("s3://{bucket}")]);
    let src = work.path().join("src.bin");
    std::fs::write(&src, payload(64 << 20, 64)).expect("write");
    let url = format!("s3://{bucket}/s5/object.bin");
    s5(&["cp", "-p", "8", "-c", "8", src.to_str().unwrap(), &url]);
    let ls = s5(&["ls", &url]);
    assert!(ls.contains("67108864"), "{ls}");
    // The upload was written back; once the object is in function memory, the download's
    // ranged GETs are served from it.
    assert_eq!(gw.metric("gateway_tier_multipart_completed_total"), 1.0);
    wait_for_metric(&gw, "gateway_tier_admitted_total", 1.0);
    let from_tier = gw.metric("gateway_tier_bytes_from_tier_total");
    let dst = work.path().join("dst.bin");
    s5(&["cp", "-p", "8", "-c", "8", &url, dst.to_str().unwrap()]);
    assert_eq!(sha256_file(&src), sha256_file(&dst), "download");
    assert_eq!(
        gw.metric("gateway_tier_bytes_from_tier_total") - from_tier,
        (64 << 20) as f64,
        "the download comes from function memory"
    );
    s5(&["rm", &url]);
    s5(&["rb", &format!("s3://{bucket}")]);
}

/// rclone with a remote configured from the environment (`RCLONE_CONFIG_GW_*`), no config file.
struct Rclone {
    bin: PathBuf,
    endpoint: String,
    logs: PathBuf,
}

impl Rclone {
    fn ok(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--config",
            "/dev/null",
            "--retries",
            "1",
            "--low-level-retries",
            "1",
        ])
        .args(args)
        .env("RCLONE_CONFIG_GW_TYPE", "s3")
        .env("RCLONE_CONFIG_GW_PROVIDER", "Other")
        .env("RCLONE_CONFIG_GW_ENDPOINT", &self.endpoint)
        .env("RCLONE_CONFIG_GW_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_GW_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_GW_REGION", "us-east-1")
        .env("RCLONE_CONFIG_GW_FORCE_PATH_STYLE", "true")
        // rclone 1.60 cannot build its S3 client when AWS_CA_BUNDLE is set (the gateway here
        // is plain HTTP on loopback: no CA is involved).
        .env_remove("AWS_CA_BUNDLE");
        run_ok(cmd, "rclone", args, &self.logs)
    }
}

#[test]
fn rclone_copy_check_server_side_copy_sync_delete() {
    let Some(bin) = tool_or_skip(rclone_bin(), "rclone") else {
        return;
    };
    let gw = GatewayProc::start("e2e_rclone", &Backend::Embedded);
    let rclone = Rclone {
        bin,
        endpoint: gw.endpoint.clone(),
        logs: gw.logs.clone(),
    };
    let work = tempfile::tempdir().expect("tempdir");
    let bucket = unique_bucket("rclone");
    let remote = |path: &str| format!("gw:{bucket}/{path}");
    rclone.ok(&["mkdir", &format!("gw:{bucket}")]);

    // 24 MiB goes up in 5 MiB parts (multipart; rclone keeps the MD5 in the object's
    // metadata), the small files in single PUTs; awkward names included.
    let dir = work.path().join("tree");
    for (name, size) in [
        ("big.bin", 24usize << 20),
        ("a.txt", 10),
        ("sub/b c.txt", 2000),
        ("sub/d+e%f.bin", 300_000),
    ] {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, payload(size, size as u64 + 3)).unwrap();
    }
    let multipart = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"];
    let mut copy = vec!["copy", dir.to_str().unwrap()];
    let dst = remote("tree");
    copy.push(&dst);
    copy.extend(multipart);
    rclone.ok(&copy);
    assert_eq!(
        gw.metric("gateway_tier_multipart_completed_total"),
        1.0,
        "big.bin's multipart upload was written back"
    );
    // `check` compares sizes and MD5s of every file (--download: the bytes themselves too).
    rclone.ok(&["check", dir.to_str().unwrap(), &dst]);
    rclone.ok(&["check", "--download", dir.to_str().unwrap(), &dst]);
    let listed = rclone.ok(&["lsf", "-R", "--files-only", &dst]);
    let mut listed: Vec<_> = listed.lines().collect();
    listed.sort_unstable();
    assert_eq!(listed, ["a.txt", "big.bin", "sub/b c.txt", "sub/d+e%f.bin"]);

    // Server-side copy (CopyObject), then the copy is checked against the original file.
    rclone.ok(&["copyto", &remote("tree/big.bin"), &remote("copied/big.bin")]);
    let one = work.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(dir.join("big.bin"), one.join("big.bin")).unwrap();
    rclone.ok(&[
        "check",
        "--download",
        one.to_str().unwrap(),
        &remote("copied"),
    ]);

    // A second sync transfers nothing; after a local delete, sync deletes remotely.
    let again = rclone.ok(&["sync", "-v", dir.to_str().unwrap(), &dst]);
    assert!(
        !again.contains("Copied"),
        "nothing to transfer expected: {again}"
    );
    std::fs::remove_file(dir.join("a.txt")).unwrap();
    rclone.ok(&["sync", dir.to_str().unwrap(), &dst]);
    let listed = rclone.ok(&["lsf", "-R", "--files-only", &dst]);
    assert!(!listed.lines().any(|l| l == "a.txt"), "{listed}");

    // Down again and byte-compare: big.bin was admitted by `check --download` (a whole-object
    // GET miss), so this copy reads it from function memory.
    let from_tier = gw.metric("gateway_tier_bytes_from_tier_total");
    let down = work.path().join("down");
    rclone.ok(&["copy", &dst, down.to_str().unwrap()]);
    assert!(
        gw.metric("gateway_tier_bytes_from_tier_total") - from_tier >= (24 << 20) as f64,
        "rclone copy of big.bin from function memory"
    );
    for name in ["big.bin", "sub/b c.txt", "sub/d+e%f.bin"] {
        assert_eq!(
            sha256_file(&dir.join(name)),
            sha256_file(&down.join(name)),
            "{name}"
        );
    }

    rclone.ok(&["purge", &format!("gw:{bucket}")]);
    let buckets = rclone.ok(&["lsd", "gw:"]);
    assert!(!buckets.contains(&bucket), "{buckets}");
}

/// `aws s3 cp` of 64 MiB (a multipart upload) with the bucket hung (SeaweedFS stopped with
/// SIGSTOP, not killed): acknowledged from the journal, downloadable through the gateway;
/// once the bucket is back it holds the object byte-exact with the ETag the client got.
#[test]
fn aws_cli_upload_is_acknowledged_with_the_bucket_hung() {
    let Some(venv) = tool_or_skip(venv(), "the test virtualenv (E2E_VENV) with the aws CLI") else {
        return;
    };
    if tool_or_skip(weed_bin(), "SeaweedFS `weed`").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let weed = rt.block_on(Seaweed::start("e2e_hung"));
    let data_dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start_with(
        "e2e_hung",
        &Backend::External(weed.s3_url.clone()),
        GatewayOptions {
            data_dir: Some(data_dir.path().to_owned()),
            config: Some(small_tier_config(
                "256KiB",
                "persist_retry_max = \"1s\"",
                "",
            )),
            ..Default::default()
        },
    );
    let aws = Aws {
        bin: venv.join("bin/aws"),
        endpoint: gw.endpoint.clone(),
        logs: gw.logs.clone(),
    };
    let bucket = unique_bucket("hung");
    aws.ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src.bin");
    let data = payload(64 << 20, 64);
    std::fs::write(&src, &data).unwrap();
    let url = format!("s3://{bucket}/hung/object.bin");

    weed.freeze();
    let started = std::time::Instant::now();
    aws.ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        src.to_str().unwrap(),
        &url,
    ]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "acknowledged without the bucket"
    );
    assert_eq!(gw.metric("gateway_tier_multipart_completed_total"), 1.0);
    assert!(gw.metric("gateway_tier_dirty_bytes") >= (64 << 20) as f64);
    assert_eq!(
        integration_tests::journal_records(data_dir.path()),
        1 + 8 + 1,
        "the upload, its 8 parts, the completion"
    );
    let head = aws.ok(&[
        "s3api",
        "head-object",
        "--bucket",
        &bucket,
        "--key",
        "hung/object.bin",
    ]);
    let etag = head
        .split("\"ETag\": \"")
        .nth(1)
        .and_then(|s| s.split("\",").next())
        .unwrap_or_default()
        .replace("\\\"", "");
    assert!(etag.ends_with("-8"), "multipart ETag: {head}");
    let back = work.path().join("back.bin");
    aws.ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        &url,
        back.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "downloaded while the bucket hangs"
    );

    weed.thaw();
    wait_for_metric(&gw, "gateway_tier_persisted_total", 1.0);
    let ls = aws.ok(&["s3", "ls", &format!("s3://{bucket}/hung/")]);
    assert!(ls.contains("object.bin") && ls.contains("67108864"), "{ls}");
    let direct = weed.client();
    let (bucket_etag, bytes) = rt.block_on(async {
        let o = direct
            .get_object()
            .bucket(&bucket)
            .key("hung/object.bin")
            .send()
            .await
            .expect("in the bucket");
        let etag = o.e_tag.clone().unwrap_or_default();
        (etag, o.body.collect().await.unwrap().into_bytes())
    });
    assert_eq!(
        bucket_etag.trim_matches('"'),
        etag,
        "the bucket's ETag is the client's"
    );
    assert!(
        bytes.as_ref() == data.as_slice(),
        "the bucket holds it byte-exact"
    );
    assert_eq!(gw.metric("gateway_tier_dirty_objects"), 0.0);
}
