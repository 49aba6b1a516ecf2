//! Command-line flags and environment variables. Each overrides one field of the TOML config.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, ConfigError, LogFormat};

/// S3-compatible gateway with a serverless-memory cache tier.
///
/// Configuration comes from the defaults, then the TOML file given by --config, then the
/// environment variables and flags below (a flag beats its variable).
#[derive(Debug, Parser, Default)]
#[command(name = "gateway", version, about, long_about = None)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address of the S3 endpoint [default: 127.0.0.1:9000].
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Address of the admin server (/healthz, /readyz, /metrics) [default: 127.0.0.1:9001].
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Bearer token for the admin server's POST routes [default: none, loopback clients only].
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Client access key [default: the development key, loopback only].
    #[arg(long, env = "GATEWAY_ACCESS_KEY")]
    pub access_key: Option<String>,

    /// Client secret key.
    #[arg(long, env = "GATEWAY_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Directory of all local state [default: ./data].
    #[arg(long, env = "GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Endpoint URL of the backing S3 store; unset: the embedded backing store.
    #[arg(long, env = "GATEWAY_BACKEND_URL")]
    pub backend_url: Option<String>,

    /// Region for signing requests to the backing store [default: us-east-1].
    #[arg(long, env = "GATEWAY_BACKEND_REGION")]
    pub backend_region: Option<String>,

    /// The gateway's access key for the backing store.
    #[arg(long, env = "GATEWAY_BACKEND_ACCESS_KEY")]
    pub backend_access_key: Option<String>,

    /// The gateway's secret key for the backing store.
    #[arg(long, env = "GATEWAY_BACKEND_SECRET_KEY", hide_env_values = true)]
    pub backend_secret_key: Option<String>,

    /// Address of the embedded backing store (loopback) [default: 127.0.0.1:0].
    #[arg(long, env = "GATEWAY_EMBEDDED_LISTEN")]
    pub embedded_listen: Option<SocketAddr>,

    /// Base domain for virtual-host-style requests (repeatable).
    #[arg(long = "domain", env = "GATEWAY_DOMAINS", value_delimiter = ',')]
    pub domains: Vec<String>,

    /// Lambda Invoke API endpoint of the function pool; unset: the embedded emulator.
    #[arg(long, env = "GATEWAY_LAMBDA_ENDPOINT")]
    pub lambda_endpoint: Option<String>,

    /// Access key for the Lambda API.
    #[arg(long, env = "GATEWAY_LAMBDA_ACCESS_KEY")]
    pub lambda_access_key: Option<String>,

    /// Secret key for the Lambda API.
    #[arg(long, env = "GATEWAY_LAMBDA_SECRET_KEY", hide_env_values = true)]
    pub lambda_secret_key: Option<String>,

    /// Shared secret functions authenticate with (their MEMFN_SECRET).
    #[arg(long, env = "GATEWAY_FUNCTION_SECRET", hide_env_values = true)]
    pub function_secret: Option<String>,

    /// Log format [default: text].
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl Args {
    /// Builds the effective configuration: defaults, then the file, then these overrides.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        self.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes every given override into `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        set(&mut cfg.server.listen, &self.listen);
        set(&mut cfg.server.admin_listen, &self.admin_listen);
        set(&mut cfg.server.admin_token, &self.admin_token);
        set(&mut cfg.auth.access_key, &self.access_key);
        set(&mut cfg.auth.secret_key, &self.secret_key);
        set(&mut cfg.data_dir, &self.data_dir);
        set(&mut cfg.backend.url, &self.backend_url);
        set(&mut cfg.backend.region, &self.backend_region);
        set(&mut cfg.backend.access_key, &self.backend_access_key);
        set(&mut cfg.backend.secret_key, &self.backend_secret_key);
        set(&mut cfg.embedded.listen, &self.embedded_listen);
        set(&mut cfg.log.format, &self.log_format);
        set(&mut cfg.functions.lambda_endpoint, &self.lambda_endpoint);
        set(
            &mut cfg.functions.lambda_access_key,
            &self.lambda_access_key,
        );
        set(
            &mut cfg.functions.lambda_secret_key,
            &self.lambda_secret_key,
        );
        set(&mut cfg.functions.secret, &self.function_secret);
        if !self.domains.is_empty() {
            cfg.server.domains = self
                .domains
                .iter()
                .filter(|d| !d.is_empty())
                .cloned()
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults() {
        let args = Args::parse_from([
            "gateway",
            "--listen",
            "127.0.0.1:19000",
            "--backend-url",
            "http://127.0.0.1:8333",
            "--domain",
            "s3.local",
        ]);
        let cfg = args.load_config().unwrap();
        assert_eq!(cfg.server.listen.port(), 19000);
        assert_eq!(cfg.server.admin_listen.port(), 9001);
        assert!(!cfg.embedded_backend());
        assert_eq!(cfg.server.domains, vec!["s3.local".to_string()]);
    }
}
