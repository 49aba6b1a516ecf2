//! Gateway configuration: one TOML file, overridable by environment variables and flags.
//!
//! Precedence, lowest first: the named defaults below, the TOML file (`--config`), then the
//! environment variables and command-line flags of [`crate::cli::Args`] (a flag beats its
//! variable). `gateway.example.toml` at the repository root lists every field with its default;
//! a unit test parses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// Development access key for clients, used when none is configured. Refused on a
/// non-loopback listener (see [`Config::validate`]).
pub const DEV_ACCESS_KEY: &str = "gatewaydev";
/// Development secret key for clients, paired with [`DEV_ACCESS_KEY`].
pub const DEV_SECRET_KEY: &str = "gatewaydev-secret";
/// Development credentials of the embedded backing store.
pub const DEV_BACKEND_ACCESS_KEY: &str = "backenddev";
/// Development secret of the embedded backing store.
pub const DEV_BACKEND_SECRET_KEY: &str = "backenddev-secret";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding all local state (the embedded backing store's files, later the
    /// write-back journal). Default `./data` (git-ignored in the repository).
    pub data_dir: PathBuf,
    /// The S3 endpoint and admin server.
    pub server: ServerConfig,
    /// Credentials clients sign their requests with.
    pub auth: AuthConfig,
    /// The backing S3 store the gateway sits in front of.
    pub backend: BackendConfig,
    /// The embedded backing store used when `backend.url` is empty.
    pub embedded: EmbeddedConfig,
    /// Logging.
    pub log: LogConfig,
    /// The serverless-memory tier.
    pub tier: TierConfig,
    /// The function pool that holds the tier's chunks.
    pub functions: FunctionsConfig,
    /// How the tier manages function memory (the policy crate).
    pub policy: PolicySection,
}

/// The S3 endpoint and admin server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the S3 endpoint. Default `127.0.0.1:9000`.
    pub listen: SocketAddr,
    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`). Default `127.0.0.1:9001`.
    pub admin_listen: SocketAddr,
    /// Base domains for virtual-host-style requests (`bucket.s3.example.com`). Empty (the
    /// default) means path-style only. Path-style requests are always served.
    pub domains: Vec<String>,
    /// Region this endpoint reports and accepts in signatures. Default `us-east-1`.
    pub region: String,
    /// Longest time a request may take until its response headers are sent (uploads included,
    /// since a PUT answers after its body is read). Default `15m`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests served at once across all connections; more wait for a slot (and time out).
    /// Default 1024.
    pub max_concurrent_requests: usize,
    /// Time allowed for a client to send request headers. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// On shutdown, time allowed for in-flight requests to finish before they are cut. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Slowest request body accepted: at least this many bytes per second of waiting for the
    /// client, measured over `body_rate_window` of waiting (time the gateway spends reading
    /// other things, such as a slow bucket, does not count). A slower or stalled body fails
    /// with `400 RequestTimeout`, and whatever it held (journal space, a request slot) is
    /// freed. Default `4KiB`.
    pub body_min_rate: ByteSize,
    /// See `body_min_rate`. Default `20s`.
    #[serde(with = "humantime_serde")]
    pub body_rate_window: Duration,
    /// Bearer token for the admin server's `POST` routes (retrying or discarding dead letters).
    /// Empty (the default): they answer loopback clients only. (GATEWAY_ADMIN_TOKEN)
    pub admin_token: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            domains: Vec::new(),
            region: "us-east-1".into(),
            request_timeout: Duration::from_secs(15 * 60),
            max_concurrent_requests: 1024,
            header_read_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            body_min_rate: ByteSize::kib(4),
            body_rate_window: Duration::from_secs(20),
            admin_token: String::new(),
        }
    }
}

/// Client credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Access key of the primary client credential. Default: the development key
    /// [`DEV_ACCESS_KEY`], refused on non-loopback listeners.
    pub access_key: String,
    /// Secret key of the primary client credential. Default: [`DEV_SECRET_KEY`].
    pub secret_key: String,
    /// Further client credentials.
    pub keys: Vec<KeyPair>,
    /// Serve unsigned (anonymous) requests. Default `false`: they get 403 AccessDenied.
    pub allow_anonymous: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_key: DEV_ACCESS_KEY.into(),
            secret_key: DEV_SECRET_KEY.into(),
            keys: Vec::new(),
            allow_anonymous: false,
        }
    }
}

/// One access key and its secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

/// The backing S3 store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Endpoint URL of the backing store (`https://s3.us-east-1.amazonaws.com`,
    /// `http://127.0.0.1:8333`, ...). Empty (the default): the embedded backing store.
    pub url: String,
    /// Region used to sign requests to the backing store. Default `us-east-1`.
    pub region: String,
    /// Access key of the gateway's own credential for the backing store (separate from the
    /// clients'). Default: [`DEV_BACKEND_ACCESS_KEY`] (meant for the embedded store). Both keys
    /// empty: the AWS default credential chain ([`crate::credentials`]).
    pub access_key: String,
    /// Secret key for the backing store. Default: [`DEV_BACKEND_SECRET_KEY`].
    pub secret_key: String,
    /// Address buckets in the path (`host/bucket/key`) rather than the host name. Default `true`
    /// (what S3-compatible servers expect; AWS S3 accepts both).
    pub force_path_style: bool,
    /// Time allowed to open a connection to the backing store. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time the backing store has, per attempt, to start answering a request whose body the
    /// gateway holds (every request but uploads streamed from a client, which the client's
    /// request deadline bounds; the gateway's own uploads get this plus their length at
    /// 1 MiB/s). With `max_attempts`, a frozen store answers 503 after about
    /// `max_attempts x first_byte_timeout`. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Attempts per backing-store request, the first included (SDK standard retry with
    /// exponential backoff). Default 3.
    pub max_attempts: u32,
    /// Bucket probed by `/readyz` with HeadBucket. Empty (the default): ListBuckets, which
    /// needs `s3:ListAllMyBuckets`; set a bucket when the credential is scoped to buckets.
    pub health_bucket: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            region: "us-east-1".into(),
            access_key: DEV_BACKEND_ACCESS_KEY.into(),
            secret_key: DEV_BACKEND_SECRET_KEY.into(),
            force_path_style: true,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(5),
            max_attempts: 3,
            health_bucket: String::new(),
        }
    }
}

/// The embedded backing store (s3s-fs, in-process, on a loopback port).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Address of the embedded store. Must be a loopback address. Default `127.0.0.1:0` (any free port).
    pub listen: SocketAddr,
    /// Directory of the embedded store's files. Default: `<data_dir>/backend`.
    pub dir: Option<PathBuf>,
    /// S3-like profile, for measurements: delay before the first byte of every GET body.
    /// Default `0s` (off).
    #[serde(with = "humantime_serde")]
    pub first_byte_latency: Duration,
    /// S3-like profile: bytes per second of every GET body (per connection); 0 (the default)
    /// is unlimited. A Lambda function sees about `40MB` from S3.
    pub bandwidth_per_connection: ByteSize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir: None,
            first_byte_latency: Duration::ZERO,
            bandwidth_per_connection: ByteSize::b(0),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Output format. Default `text`.
    pub format: LogFormat,
    /// Filter directives used when `RUST_LOG` is unset. Default `info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            backend: BackendConfig::default(),
            embedded: EmbeddedConfig::default(),
            log: LogConfig::default(),
            tier: TierConfig::default(),
            functions: FunctionsConfig::default(),
            policy: PolicySection::default(),
        }
    }
}

pub use tier::config::{FunctionsConfig, PolicyKind, PolicySection, TierConfig, WritePolicy};

/// Errors of loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Whether the embedded backing store is used (no backend URL configured).
    pub fn embedded_backend(&self) -> bool {
        self.backend.url.trim().is_empty()
    }

    /// Directory of the embedded store.
    pub fn embedded_dir(&self) -> PathBuf {
        self.embedded
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backend"))
    }

    /// Whether the client credentials are the development defaults.
    pub fn uses_dev_credentials(&self) -> bool {
        self.auth.access_key == DEV_ACCESS_KEY && self.auth.secret_key == DEV_SECRET_KEY
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.auth.access_key.is_empty() || self.auth.secret_key.is_empty() {
            return invalid("auth.access_key and auth.secret_key must not be empty".into());
        }
        for k in &self.auth.keys {
            if k.access_key.is_empty() || k.secret_key.is_empty() {
                return invalid(
                    "auth.keys entries need a non-empty access_key and secret_key".into(),
                );
            }
        }
        if self.uses_dev_credentials() && !self.server.listen.ip().is_loopback() {
            return invalid(format!(
                "the development client credentials are refused on a non-loopback listener ({}); \
                 set GATEWAY_ACCESS_KEY and GATEWAY_SECRET_KEY",
                self.server.listen
            ));
        }
        if self.server.max_concurrent_requests == 0 {
            return invalid("server.max_concurrent_requests must be at least 1".into());
        }
        if self.server.request_timeout.is_zero() {
            return invalid("server.request_timeout must be positive".into());
        }
        if self.server.body_rate_window.is_zero() {
            return invalid("server.body_rate_window must be positive".into());
        }
        if self.backend.max_attempts == 0 {
            return invalid("backend.max_attempts must be at least 1".into());
        }
        if self.backend.region.is_empty() || self.server.region.is_empty() {
            return invalid("backend.region and server.region must not be empty".into());
        }
        if self.embedded_backend() {
            if self.backend.access_key.is_empty() || self.backend.secret_key.is_empty() {
                return invalid(
                    "backend.access_key and backend.secret_key: the embedded store needs both"
                        .into(),
                );
            }
        } else if let Some(m) = crate::credentials::problem(
            "backend.access_key/secret_key",
            &self.backend.access_key,
            &self.backend.secret_key,
        ) {
            return invalid(m);
        }
        if self.tier.enabled
            && !self.functions.embedded()
            && let Some(m) = crate::credentials::problem(
                "functions.lambda_access_key/lambda_secret_key",
                &self.functions.lambda_access_key,
                &self.functions.lambda_secret_key,
            )
        {
            return invalid(m);
        }
        if self.embedded_backend() && !self.embedded.listen.ip().is_loopback() {
            return invalid(format!(
                "embedded.listen must be a loopback address, got {}",
                self.embedded.listen
            ));
        }
        if !self.embedded_backend() {
            let url = self.backend.url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "backend.url must start with http:// or https://, got {url:?}"
                ));
            }
        }
        let t = &self.tier;
        if t.data_chunks == 0 || t.data_chunks + t.parity_chunks > 256 {
            return invalid(
                "tier.data_chunks must be 1.., data_chunks + parity_chunks at most 256".into(),
            );
        }
        if t.chunk_size.as_u64() < 1024 || t.chunk_size.as_u64() > 64 << 20 {
            return invalid("tier.chunk_size must be between 1KiB and 64MiB".into());
        }
        if t.persist_part_size.as_u64() < 5 << 20 {
            return invalid(
                "tier.persist_part_size must be at least 5MiB (the S3 minimum part size)".into(),
            );
        }
        if t.persist_concurrency == 0 {
            return invalid("tier.persist_concurrency must be at least 1".into());
        }
        let f = &self.functions;
        if self.tier.enabled {
            if (f.count as usize) < t.data_chunks + t.parity_chunks {
                return invalid(format!(
                    "functions.count ({}) must be at least tier.data_chunks + tier.parity_chunks ({})",
                    f.count,
                    t.data_chunks + t.parity_chunks
                ));
            }
            if !f.embedded() && f.secret.len() < 16 {
                return invalid(
                    "functions.secret (at least 16 bytes) is required with a real Lambda endpoint"
                        .into(),
                );
            }
        }
        for d in &self.server.domains {
            if d.is_empty() || d.contains('/') {
                return invalid(format!("server.domains: invalid domain {d:?}"));
            }
        }
        if !self.policy.kind.uses_functions() {
            return invalid(format!(
                "policy.kind: {:?} keeps nothing in function memory; use sliding-window or infinicache",
                self.policy.kind.name()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway.example.toml");
        let cfg = Config::load(&path).expect("example config parses");
        cfg.validate().expect("example config is valid");
        let d = Config::default();
        assert_eq!(cfg.server.listen, d.server.listen);
        assert_eq!(cfg.server.admin_listen, d.server.admin_listen);
        assert_eq!(cfg.server.request_timeout, d.server.request_timeout);
        assert_eq!(cfg.backend.max_attempts, d.backend.max_attempts);
        assert_eq!(cfg.data_dir, d.data_dir);
        assert!(cfg.embedded_backend());
    }

    #[test]
    fn backend_keys_are_both_set_or_both_empty() {
        let mut cfg = Config::default();
        cfg.backend.access_key.clear();
        assert!(cfg.validate().is_err(), "the embedded store needs its keys");
        cfg.backend.url = "https://s3.us-east-1.amazonaws.com".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("or neither"), "{err}");
        cfg.backend.secret_key.clear();
        assert_eq!(
            cfg.validate().is_ok(),
            crate::credentials::DEFAULT_CHAIN_BUILT_IN,
            "empty keys: the default chain, when built in"
        );
    }

    #[test]
    fn policy_sections_are_the_policy_crates_types() {
        let cfg = Config::from_toml(
            "[policy]\nkind = \"fixed-pool\"\n[policy.window]\nbucket = \"2m\"\n[policy.infinicache]\nwarmup = \"30s\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(cfg.policy.kind, PolicyKind::Infinicache);
        assert_eq!(cfg.policy.window.bucket_ms, 120_000);
        assert_eq!(cfg.policy.infinicache.warmup_ms, 30_000);
        cfg.validate().unwrap();
        // What the deployment decides is not a policy setting.
        let err =
            Config::from_toml("[policy.window]\npool_size = 5\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("pool_size"), "{err}");
        let mut cfg = Config::default();
        cfg.policy.kind = PolicyKind::Provisioned;
        assert!(
            cfg.validate().is_err(),
            "a provisioned cluster holds nothing in functions"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            Config::from_toml("[server]\nlisten_typo = \"x\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("listen_typo"), "{err}");
    }

    #[test]
    fn durations_and_defaults() {
        let cfg = Config::from_toml(
            "data_dir = \"/tmp/x\"\n[server]\nrequest_timeout = \"90s\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(cfg.server.request_timeout, Duration::from_secs(90));
        assert_eq!(cfg.server.listen.port(), 9000);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn dev_credentials_refused_off_loopback() {
        let mut cfg = Config::default();
        cfg.server.listen = "0.0.0.0:9000".parse().unwrap();
        assert!(cfg.validate().is_err());
        cfg.auth.access_key = "prod".into();
        cfg.auth.secret_key = "prod-secret".into();
        cfg.validate().unwrap();
    }

    #[test]
    fn backend_url_must_be_http() {
        let mut cfg = Config::default();
        cfg.backend.url = "s3.example.com".into();
        assert!(cfg.validate().is_err());
        cfg.backend.url = "https://s3.example.com".into();
        cfg.validate().unwrap();
    }
}
