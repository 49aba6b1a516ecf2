//! Who may call the S3 endpoint and how its host names are read.
//!
//! - Signatures (SigV4 header-signed and presigned, SigV2) are checked by s3s against the
//!   configured client keys ([`client_keys`]).
//! - [`GatewayAccess`] refuses unsigned requests with 403 AccessDenied unless anonymous access
//!   is explicitly allowed, and records the resolved operation name for metrics and logs.
//! - [`VirtualHosts`] serves `bucket.<domain>` for the configured domains and treats every other
//!   host (IP addresses, `localhost:9000`, ...) as path-style.

use std::sync::{Arc, OnceLock};

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::host::{S3Host, VirtualHost};
use s3s::{S3Result, s3_error};

use crate::config::AuthConfig;

/// The signature checker for the configured client credentials.
pub fn client_keys(cfg: &AuthConfig) -> SimpleAuth {
    let mut auth = SimpleAuth::from_single(cfg.access_key.clone(), cfg.secret_key.clone());
    for k in &cfg.keys {
        auth.register(k.access_key.clone(), k.secret_key.clone().into());
    }
    auth
}

/// Slot the request middleware puts into each request's extensions; the access check fills it
/// with the S3 operation name (`GetObject`, ...) once s3s has resolved the route.
#[derive(Clone, Default, Debug)]
pub struct OperationSlot(pub Arc<OnceLock<String>>);

impl OperationSlot {
    /// The recorded operation, or `"Unknown"` when the request failed before routing.
    pub fn name(&self) -> &str {
        self.0.get().map_or("Unknown", String::as_str)
    }
}

/// Access policy: signed requests pass (their signature was verified), unsigned requests pass
/// only when anonymous access is allowed.
pub struct GatewayAccess {
    /// Serve unsigned requests.
    pub allow_anonymous: bool,
}

#[async_trait::async_trait]
impl S3Access for GatewayAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_owned();
        if let Some(slot) = cx.extensions_mut().get::<OperationSlot>() {
            let _ = slot.0.set(op);
        }
        if cx.credentials().is_some() || self.allow_anonymous {
            Ok(())
        } else {
            Err(s3_error!(
                AccessDenied,
                "Access Denied: the request is not signed"
            ))
        }
    }
}

/// Virtual-host-style addressing for the configured base domains only.
pub struct VirtualHosts {
    domains: Vec<String>,
}

impl VirtualHosts {
    /// Serves `bucket.<domain>` for each domain (compared without port and case).
    pub fn new(domains: &[String]) -> Self {
        Self {
            domains: domains
                .iter()
                .map(|d| strip_port(d).to_ascii_lowercase())
                .collect(),
        }
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = strip_port(host);
        for d in &self.domains {
            if name.eq_ignore_ascii_case(d) {
                return Ok(VirtualHost::new(host));
            }
            if name.len() > d.len() + 1
                && name[name.len() - d.len()..].eq_ignore_ascii_case(d)
                && name.as_bytes()[name.len() - d.len() - 1] == b'.'
            {
                let bucket = &name[..name.len() - d.len() - 1];
                return Ok(VirtualHost::new(host).with_bucket(bucket));
            }
        }
        // Any other host: path-style.
        Ok(VirtualHost::new(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts() {
        let vh = VirtualHosts::new(&["s3.example.com".to_string()]);
        let v = vh.parse_host_header("photos.s3.example.com:9000").unwrap();
        assert_eq!(v.bucket(), Some("photos"));
        let v = vh.parse_host_header("s3.example.com").unwrap();
        assert_eq!(v.bucket(), None);
        let v = vh.parse_host_header("localhost:9000").unwrap();
        assert_eq!(v.bucket(), None);
        let v = vh.parse_host_header("a.b.other.org").unwrap();
        assert_eq!(v.bucket(), None);
        let v = vh
            .parse_host_header("my.dotted.bucket.S3.example.com")
            .unwrap();
        assert_eq!(v.bucket(), Some("my.dotted.bucket"));
    }
}
