//! The backing store as the tier reaches it: the clients it is given, and blank keys.
//!
//! **Blank keys.** The AWS SDK treats a key of only whitespace (`" "`, which S3 accepts) as
//! missing when it resolves the endpoint. [`sdk_key`] hands the SDK a placeholder for such a
//! key, and the [`BlankKeys`] interceptor (register it on every client of the backing store)
//! puts the real key back into the request path before it is signed.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The clients of the backing store. Both share one configuration (with [`BlankKeys`]).
#[derive(Clone, Debug)]
pub struct BackendClients {
    /// Requests whose body the gateway holds: the bucket has `first_byte_timeout` per attempt
    /// to start answering.
    pub client: aws_sdk_s3::Client,
    /// Requests streaming a large body from a client: no first-byte limit.
    pub uploads: aws_sdk_s3::Client,
    /// `backend.first_byte_timeout`.
    pub first_byte_timeout: Duration,
}

/// Characters S3 leaves as they are in a key in a request path (and in URL-encoded listings):
/// unreserved ones and `/`.
pub const KEY_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The placeholder prefix of blank keys, unique to this process (so no real key collides).
fn blank_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("gw-blank-key-{:016x}-", rand::random::<u64>()))
}

/// The key to hand the SDK for `key`: itself, or for a key of only whitespace (which the SDK
/// would refuse as missing) a placeholder that [`BlankKeys`] turns back into `key`.
pub fn sdk_key(key: &str) -> Cow<'_, str> {
    if key.is_empty() || !key.trim().is_empty() {
        return Cow::Borrowed(key);
    }
    Cow::Owned(format!("{}{}", blank_prefix(), hex::encode(key)))
}

/// Puts blank keys back into request paths (see [`sdk_key`]).
#[derive(Debug)]
pub struct BlankKeys;

impl Intercept for BlankKeys {
    fn name(&self) -> &'static str {
        "BlankKeys"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = context.request_mut();
        let uri = req.uri();
        let Some(start) = uri.find(blank_prefix()) else {
            return Ok(());
        };
        let hex_start = start + blank_prefix().len();
        let hex_end = uri[hex_start..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .map_or(uri.len(), |i| hex_start + i);
        let key = hex::decode(&uri[hex_start..hex_end])?;
        let key = String::from_utf8(key)?;
        let encoded = percent_encoding::utf8_percent_encode(&key, KEY_SET).to_string();
        let fixed = format!("{}{encoded}{}", &uri[..start], &uri[hex_end..]);
        req.set_uri(fixed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn blank_keys_get_a_placeholder() {
        assert_eq!(super::sdk_key("a b"), "a b");
        assert_eq!(super::sdk_key(""), "");
        let p = super::sdk_key(" \t");
        assert!(
            p.starts_with(super::blank_prefix()) && p.ends_with("2009"),
            "{p}"
        );
        assert!(!p.trim().is_empty());
    }
}
