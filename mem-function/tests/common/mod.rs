//! Test harness: a real emulator running the real `mem-function` binary, a real
//! `CallbackListener`, and the real `aws_sdk_lambda::Client` pointed at the emulator.
#![allow(dead_code)] // each test file uses a different subset

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use bytes::Bytes;
use mem_function::callback::{CallbackListener, FunctionConn, InvocationTokens, ListenerConfig};
use mem_function::emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, FunctionOverride, InstanceInfo,
};
use mem_function::invocation::{Invocation, InvocationResponse};
use mem_function::wire::{Command, NodeState};
use rand::RngCore;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

pub const SECRET: &str = "integration-test-secret-0123456789";
/// Idle tail of serving invocations in tests: long enough that a function never leaves while a
/// test still talks to it; tests end sessions with BYE.
pub const SERVE_TAIL: Duration = Duration::from_secs(20);
pub const WAIT: Duration = Duration::from_secs(30);

pub fn function_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mem-function"))
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub fn random_bytes(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// What a test can change about the platform.
pub struct Setup {
    pub names: Vec<String>,
    pub memory_mb: u32,
    pub overhead_mb: u32,
    pub freeze: bool,
    pub reclaim_after_idle: Option<Duration>,
    pub timeout: Duration,
    pub fault_injection: bool,
    pub overrides: BTreeMap<String, FunctionOverride>,
    pub tokens: bool,
    /// Another `mem-function` build to run (default: this package's binary).
    pub binary: Option<PathBuf>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            names: vec!["node-0".into()],
            memory_mb: 192,
            overhead_mb: 64,
            freeze: true,
            reclaim_after_idle: None,
            timeout: Duration::from_secs(120),
            fault_injection: false,
            overrides: BTreeMap::new(),
            tokens: true,
            binary: None,
        }
    }
}

#[derive(Debug)]
pub struct Invoked {
    pub status: i32,
    pub function_error: Option<String>,
    pub payload: Bytes,
}

impl Invoked {
    pub fn response(&self) -> InvocationResponse {
        assert!(
            self.function_error.is_none(),
            "function error {:?}: {}",
            self.function_error,
            String::from_utf8_lossy(&self.payload)
        );
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "bad response {e}: {}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

pub struct Harness {
    pub emu: EmulatorHandle,
    pub listener: CallbackListener,
    pub lambda: aws_sdk_lambda::Client,
    pub tokens: InvocationTokens,
    pub callback: String,
    conns: HashMap<String, VecDeque<FunctionConn>>,
    logs: tempfile::TempDir,
}

/// An Invoke API client for a loopback endpoint. Its HTTP client is built without proxy
/// support: with the latest behavior version the SDK would otherwise honour `HTTP_PROXY` and
/// friends from the environment, and send loopback requests to a proxy unless `NO_PROXY`
/// covers 127.0.0.1 (tests cannot set it for themselves: `set_var` is unsafe).
pub fn lambda_client(endpoint: &str) -> aws_sdk_lambda::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_https();
    let conf = aws_sdk_lambda::Config::builder()
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_sdk_lambda::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_lambda::config::Credentials::new(
            "AKIDTEST",
            "test-secret",
            None,
            None,
            "static",
        ))
        .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_lambda::Client::from_conf(conf)
}

impl Harness {
    pub async fn start(setup: Setup) -> Harness {
        init_tracing();
        let logs = tempfile::tempdir().unwrap();
        let mut env = BTreeMap::new();
        env.insert("MEMFN_SECRET".to_owned(), SECRET.to_owned());
        env.insert(
            "MEMFN_OVERHEAD_MB".to_owned(),
            setup.overhead_mb.to_string(),
        );
        if setup.fault_injection {
            env.insert("MEMFN_FAULT_INJECTION".to_owned(), "1".to_owned());
        }
        let config = EmulatorConfig {
            function_binary: Some(setup.binary.clone().unwrap_or_else(function_binary)),
            memory_mb: setup.memory_mb,
            timeout: setup.timeout,
            freeze: setup.freeze,
            reclaim_after_idle: setup.reclaim_after_idle,
            env,
            functions: setup.overrides,
            log_dir: Some(logs.path().to_owned()),
            ..EmulatorConfig::default()
        };
        let emu = Emulator::start(config).await.expect("emulator starts");
        let tokens = InvocationTokens::new();
        let mut lc = ListenerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SECRET.as_bytes().to_vec(),
        );
        if setup.tokens {
            lc.tokens = Some(tokens.clone());
        }
        let listener = CallbackListener::bind_with(lc)
            .await
            .expect("listener binds");
        let callback = listener.local_addr().to_string();
        let lambda = lambda_client(&emu.endpoint_url());
        Harness {
            emu,
            listener,
            lambda,
            tokens,
            callback,
            conns: HashMap::new(),
            logs,
        }
    }

    /// A payload for `node` with a freshly issued token.
    pub fn payload(&self, node: &str, command: Command, view: NodeState) -> Invocation {
        let token = self.tokens.issue(node);
        Invocation::new(command, self.callback.clone(), node, token, view)
            .with_idle_tail(SERVE_TAIL)
    }

    /// Invoke synchronously through the Invoke API, in the background.
    pub fn invoke(&self, function: &str, inv: &Invocation) -> JoinHandle<Invoked> {
        let client = self.lambda.clone();
        let function = function.to_owned();
        let body = inv.to_json();
        tokio::spawn(async move {
            invoke_with(&client, &function, body, InvocationType::RequestResponse).await
        })
    }

    /// Invoke asynchronously (Event).
    pub async fn invoke_event(&self, function: &str, inv: &Invocation) -> Invoked {
        invoke_with(&self.lambda, function, inv.to_json(), InvocationType::Event).await
    }

    /// The next connection from `node` (others that arrive meanwhile are kept for later).
    pub async fn conn(&mut self, node: &str) -> FunctionConn {
        self.try_conn(node, WAIT)
            .await
            .unwrap_or_else(|| panic!("no dial-back from {node}"))
    }

    pub async fn try_conn(&mut self, node: &str, within: Duration) -> Option<FunctionConn> {
        if let Some(c) = self.conns.get_mut(node).and_then(|q| q.pop_front()) {
            return Some(c);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let c = tokio::time::timeout_at(deadline, self.listener.accept())
                .await
                .ok()??;
            if c.node_id() == node {
                return Some(c);
            }
            self.conns
                .entry(c.node_id().to_owned())
                .or_default()
                .push_back(c);
        }
    }

    pub fn instance(&self, name: &str) -> Option<InstanceInfo> {
        self.emu.instances().into_iter().find(|i| i.name == name)
    }

    /// Raw HTTP/1.1 request to the emulator's admin API.
    pub async fn admin(&self, method: &str, path: &str) -> (u16, String) {
        http_request(self.emu.addr(), method, path).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Show what the functions said, to make a failure readable.
            if let Ok(dir) = std::fs::read_dir(self.logs.path()) {
                for e in dir.flatten() {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("==== {} (last lines) ====", e.path().display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

pub async fn invoke_with(
    client: &aws_sdk_lambda::Client,
    function: &str,
    body: Vec<u8>,
    kind: InvocationType,
) -> Invoked {
    let out = client
        .invoke()
        .function_name(function)
        .invocation_type(kind)
        .payload(Blob::new(body))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "invoke {function}: {}",
                aws_sdk_lambda::error::DisplayErrorContext(&e)
            )
        });
    Invoked {
        status: out.status_code(),
        function_error: out.function_error().map(str::to_owned),
        payload: out
            .payload()
            .map(|b| Bytes::copy_from_slice(b.as_ref()))
            .unwrap_or_default(),
    }
}

pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Process state letter from /proc/<pid>/stat (R, S, T, Z...), `None` if the process is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Gone or a zombie (dead, not yet reaped by whoever adopted it).
pub fn is_dead(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}
