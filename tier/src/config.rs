//! The tier's configuration: `[tier]`, `[functions]` and `[policy]` of the gateway's TOML file
//! (the gateway's `Config` embeds these types; `gateway.example.toml` lists every field with its
//! default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// When a PUT is acknowledged.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WritePolicy {
    /// Write-back: once the object is in the local journal (fsync) and its chunks are in
    /// function memory; persisted to the bucket in the background.
    #[default]
    Back,
    /// Write-through: once the bucket has the object.
    Through,
}

/// The serverless-memory tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// Use the tier. Default `true`; `false` makes the gateway a plain S3 proxy.
    pub enabled: bool,
    /// Objects smaller than this pass straight through to the bucket. Default `1MiB`.
    pub min_object_size: ByteSize,
    /// Data chunks per piece (d). Default 10.
    pub data_chunks: usize,
    /// Parity chunks per piece (p). Default 2.
    pub parity_chunks: usize,
    /// Largest chunk; a piece holds `data_chunks` x this many object bytes. Default `1MiB`.
    pub chunk_size: ByteSize,
    /// When PUTs are acknowledged. Default `back`.
    pub write_policy: WritePolicy,
    /// Most bytes of acknowledged writes not yet in the bucket (the journal's size). Past it a
    /// PUT waits `journal_wait`, then gets 503 SlowDown. Default `4GiB`.
    pub journal_capacity: ByteSize,
    /// How long a PUT waits for journal space. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub journal_wait: Duration,
    /// Uploads to the bucket at once. Default 4.
    pub persist_concurrency: usize,
    /// Part size of the bucket copy; larger objects are uploaded in parts of this size (and
    /// their ETag is the multipart one). Default `64MiB`.
    pub persist_part_size: ByteSize,
    /// How long an operation that needs a key's writes in the bucket first (listing, copy,
    /// tagging, multipart completion onto it) waits for them. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub flush_timeout: Duration,
    /// Per-chunk request timeout. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub chunk_timeout: Duration,
    /// Parallel streams restoring a reclaimed function's chunks (InfiniStore used 20 helper
    /// functions). Default 20.
    pub recovery_parallelism: usize,
    /// Whole-object admissions started by ranged GET misses, running at once (one per key); a
    /// ranged miss past this is served from the bucket and not admitted. 0 turns them off.
    /// Default 4.
    pub background_fills: usize,
    /// Multipart uploads written back that are not completed within this long are aborted.
    /// Default `24h`.
    #[serde(with = "humantime_serde")]
    pub multipart_expiry: Duration,
    /// Most multipart uploads written back open at once; past it a new upload is passed to the
    /// bucket. Default 1000.
    pub max_multipart_uploads: usize,
    /// Longest delay between two attempts to persist a write (the delay doubles from 0.5 s).
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub persist_retry_max: Duration,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_object_size: ByteSize::mib(1),
            data_chunks: 10,
            parity_chunks: 2,
            chunk_size: ByteSize::mib(1),
            write_policy: WritePolicy::Back,
            journal_capacity: ByteSize::gib(4),
            journal_wait: Duration::from_secs(10),
            persist_concurrency: 4,
            persist_part_size: ByteSize::mib(64),
            flush_timeout: Duration::from_secs(60),
            chunk_timeout: Duration::from_secs(5),
            recovery_parallelism: 20,
            background_fills: 4,
            multipart_expiry: Duration::from_secs(24 * 3600),
            max_multipart_uploads: 1000,
            persist_retry_max: crate::persist::RETRY_MAX,
        }
    }
}

/// The function pool: `count` Lambda functions named `{name_prefix}{i}`, reached through the
/// Lambda Invoke API (the embedded emulator when `lambda_endpoint` is empty) and their dial-back
/// connections to the callback listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionsConfig {
    /// Functions deployed. Default 12 (one piece's `d + p` with the default code).
    pub count: u32,
    /// Function names are `{name_prefix}{i}`. Default `memfn-`.
    pub name_prefix: String,
    /// Memory size of each function (what it was deployed with), MB. Default 1536.
    pub memory_mb: u32,
    /// Lambda Invoke API endpoint (`https://lambda.us-east-1.amazonaws.com`). Empty (the
    /// default): start the local Lambda emulator in-process and use it.
    pub lambda_endpoint: String,
    /// Region of the functions. Default `us-east-1`.
    pub lambda_region: String,
    /// Access key for the Lambda API (embedded emulator: any). Both keys empty: the AWS default
    /// credential chain ([`crate::credentials`]). (GATEWAY_LAMBDA_ACCESS_KEY)
    pub lambda_access_key: String,
    /// Secret key for the Lambda API. (GATEWAY_LAMBDA_SECRET_KEY)
    pub lambda_secret_key: String,
    /// Address of the callback listener functions dial. Default `127.0.0.1:0`.
    pub callback_listen: SocketAddr,
    /// `host:port` functions are told to dial (the listener as the functions' network sees it).
    /// Empty (the default): the listener's own address.
    pub callback_advertise: String,
    /// Shared secret functions authenticate with (`MEMFN_SECRET` in their environment).
    /// Empty: a random one per start, only valid with the embedded emulator. (GATEWAY_FUNCTION_SECRET)
    pub secret: String,
    /// How long a function keeps its invocation open without requests. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub idle_tail: Duration,
    /// How long a request waits for a function to be invoked and dial back. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Embedded emulator: freeze idle instances (SIGSTOP). Default `true`.
    pub emulator_freeze: bool,
    /// Embedded emulator: reclaim instances idle this long. Default `30m`.
    #[serde(with = "humantime_serde")]
    pub emulator_reclaim_after_idle: Duration,
    /// Embedded emulator: the `mem-function` binary. Default: next to the gateway's.
    pub function_binary: Option<PathBuf>,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        Self {
            count: 12,
            name_prefix: "memfn-".into(),
            memory_mb: 1536,
            lambda_endpoint: String::new(),
            lambda_region: "us-east-1".into(),
            lambda_access_key: "emulator".into(),
            lambda_secret_key: "emulator".into(),
            callback_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            callback_advertise: String::new(),
            secret: String::new(),
            idle_tail: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            emulator_freeze: true,
            emulator_reclaim_after_idle: Duration::from_secs(30 * 60),
            function_binary: None,
        }
    }
}

impl FunctionsConfig {
    /// Whether the embedded emulator runs the functions.
    pub fn embedded(&self) -> bool {
        self.lambda_endpoint.trim().is_empty()
    }
}

/// The memory-management policy (the `policy` crate's own configuration types). The pool,
/// function memory and `d + p` come from `[functions]` and `[tier]`
/// ([`policy::WindowConfig::deployed`]); `[policy.window]` and `[policy.infinicache]` hold each
/// policy's tunables, InfiniStore's and InfiniCache's values by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// `sliding-window` (the default, InfiniStore) or `infinicache` (alias `fixed-pool`:
    /// InfiniCache's fixed pool, every function warmed).
    pub kind: PolicyKind,
    /// The sliding window's tunables (`bucket`, `active_buckets`, `window_buckets`,
    /// `active_warmup`, `degraded_warmup`, promotion ages and probability,
    /// `stop_writes_occupancy`, `scale_step`, `reserved_mb`, `seed`).
    pub window: policy::WindowConfig,
    /// The fixed pool's tunables (`warmup`, `reserved_mb`, `seed`).
    pub infinicache: policy::InfiniCacheConfig,
}

/// Which policy: the policy crate's names.
pub use policy::PolicyKind;
