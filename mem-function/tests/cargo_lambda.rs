//! Smoke test: the real `mem-function` binary serves invocations under cargo-lambda's emulator
//! (`cargo lambda watch`), reached through its Invoke API with the real `aws_sdk_lambda` client.
//!
//! cargo-lambda runs in `--only-lambda-apis` mode: it serves the Invoke and Runtime APIs and this
//! test starts the already built binary against its Runtime API at `/.rt/mem-function` (the base
//! path `lambda_runtime` keeps), so nothing is compiled or downloaded while the test runs.
//!
//! Install: `pip install --no-deps cargo-lambda` (a wheel with the static `cargo-lambda` binary).
//! Found via `$CARGO_LAMBDA`, then `PATH`, then `<workspace>/.venv/bin/cargo-lambda`.
//! Absent: the test skips loudly when `REQUIRE_CARGO_LAMBDA` is unset, and fails when it is set.

mod common;

use common::*;
use mem_function::callback::{CallbackListener, InvocationTokens, ListenerConfig};
use mem_function::invocation::{Invocation, Outcome};
use mem_function::wire::{ChunkId, Command, NodeState, ViewCheck};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn find_cargo_lambda() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARGO_LAMBDA") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            eprintln!("CARGO_LAMBDA={} is not a file", p.display());
        }
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("cargo-lambda");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/cargo-lambda");
    venv.is_file().then_some(venv)
}

/// Prints the logs of cargo-lambda and the function if the test fails.
struct DumpOnPanic(PathBuf);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                eprintln!(
                    "==== {} ====\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_function_serves_under_cargo_lambda_watch() {
    init_tracing();
    // Skipping is allowed only when REQUIRE_CARGO_LAMBDA is unset (CI sets it to 1).
    let required = std::env::var_os("REQUIRE_CARGO_LAMBDA").is_some();
    let Some(cargo_lambda) = find_cargo_lambda() else {
        assert!(
            !required,
            "REQUIRE_CARGO_LAMBDA is set but cargo-lambda was not found; install it with \
             `pip install --no-deps cargo-lambda` (or set CARGO_LAMBDA=/path/to/cargo-lambda)"
        );
        eprintln!();
        eprintln!(
            "################################################################################"
        );
        eprintln!(
            "## SKIPPED mem_function_serves_under_cargo_lambda_watch: cargo-lambda not found"
        );
        eprintln!(
            "## install: pip install --no-deps cargo-lambda   (set REQUIRE_CARGO_LAMBDA=1 to fail)"
        );
        eprintln!(
            "################################################################################"
        );
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let watch_log = std::fs::File::create(logs.path().join("cargo-lambda.log")).unwrap();
    let mut watch = tokio::process::Command::new(&cargo_lambda)
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(watch_log.try_clone().unwrap())
        .stderr(watch_log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", cargo_lambda.display()));
    let endpoint = format!("http://127.0.0.1:{port}");
    let _dump = DumpOnPanic(logs.path().to_owned());
    let up = async {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), up)
        .await
        .is_err()
    {
        let _ = watch.start_kill();
        panic!("cargo lambda watch did not listen on {port}");
    }

    let tokens = InvocationTokens::new();
    let mut lc = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), SECRET.as_bytes().to_vec());
    lc.tokens = Some(tokens.clone());
    let mut listener = CallbackListener::bind_with(lc).await.unwrap();
    let fn_log = std::fs::File::create(logs.path().join("mem-function.log")).unwrap();
    let _function = tokio::process::Command::new(function_binary())
        .env_clear()
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt/mem-function"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "mem-function")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("MEMFN_SECRET", SECRET)
        .env("MEMFN_OVERHEAD_MB", "64")
        .env("MEMFN_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(fn_log.try_clone().unwrap())
        .stderr(fn_log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let lambda = lambda_client(&endpoint);
    let cb = listener.local_addr().to_string();
    let run = async {
        let mut view = NodeState::EMPTY;
        for round in 1..=2u64 {
            let inv = Invocation::new(
                Command::Serve,
                cb.clone(),
                "node-cl",
                tokens.issue("node-cl"),
                view,
            )
            .with_idle_tail(SERVE_TAIL);
            let client = lambda.clone();
            let call = tokio::spawn(async move {
                invoke_with(
                    &client,
                    "mem-function",
                    inv.to_json(),
                    aws_sdk_lambda::types::InvocationType::RequestResponse,
                )
                .await
            });
            let conn = tokio::time::timeout(WAIT, listener.accept())
                .await
                .expect("dial-back")
                .unwrap();
            let expect_view = if round == 1 {
                ViewCheck::Fresh
            } else {
                ViewCheck::Match
            };
            assert_eq!(conn.hello().view, expect_view);
            let id = ChunkId::for_object(77, 0, round as u16);
            let data = random_bytes(256 * 1024);
            conn.put_chunk(&id, data.clone()).await.unwrap();
            assert_eq!(conn.get_chunk(&id).await.unwrap(), data);
            view = conn.bye().await.unwrap().state;
            let resp = call.await.unwrap().response();
            assert_eq!(resp.outcome, Outcome::Bye);
            assert_eq!(resp.function_name, "mem-function");
            assert_eq!(
                resp.invocations, round,
                "the same process serves both (warm)"
            );
            assert_eq!(resp.state, view);
            assert_eq!(resp.stats.chunks, round);
        }
    };
    if tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .is_err()
    {
        panic!("smoke test under cargo lambda watch timed out");
    }
    let _ = watch.start_kill();
}
