//! Credentials of the gateway's own AWS clients (the backing store, the Lambda API): the
//! configured keys, or, when both are empty, the AWS default chain: environment variables,
//! web identity (EKS IAM roles for service accounts), the ECS task role, the EC2 instance
//! profile. The chain needs the `aws-default-credentials` feature (it brings in `aws-config`);
//! a build without it refuses empty keys at configuration time.

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};

/// Whether a key pair asks for the default chain (both empty).
pub fn uses_default_chain(access_key: &str, secret_key: &str) -> bool {
    access_key.is_empty() && secret_key.is_empty()
}

/// Whether this build can use the default chain.
pub const DEFAULT_CHAIN_BUILT_IN: bool = cfg!(feature = "aws-default-credentials");

/// What to check a key pair named `what` against; `None` when usable.
pub fn problem(what: &str, access_key: &str, secret_key: &str) -> Option<String> {
    if uses_default_chain(access_key, secret_key) {
        return (!DEFAULT_CHAIN_BUILT_IN).then(|| {
            format!(
                "{what}: empty keys ask for the AWS default credential chain, which this build \
                 lacks (build with `--features aws-default-credentials`), or set both keys"
            )
        });
    }
    (access_key.is_empty() || secret_key.is_empty())
        .then(|| format!("{what}: set both the access key and the secret key, or neither"))
}

/// The provider for a key pair; `region` is where the chain asks STS (web identity).
pub async fn provider(
    access_key: &str,
    secret_key: &str,
    region: &str,
) -> SharedCredentialsProvider {
    if uses_default_chain(access_key, secret_key) {
        default_chain(region).await
    } else {
        SharedCredentialsProvider::new(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "gateway-config",
        ))
    }
}

#[cfg(feature = "aws-default-credentials")]
async fn default_chain(region: &str) -> SharedCredentialsProvider {
    let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(aws_config::Region::new(region.to_owned()))
        .build()
        .await;
    SharedCredentialsProvider::new(chain)
}

#[cfg(not(feature = "aws-default-credentials"))]
async fn default_chain(_region: &str) -> SharedCredentialsProvider {
    // `Config::validate` refuses empty keys in this build; a request signed with them fails.
    SharedCredentialsProvider::new(Credentials::new("", "", None, None, "gateway-config"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_key_pair_is_refused() {
        assert!(problem("backend", "a", "").is_some());
        assert!(problem("backend", "", "s").is_some());
        assert!(problem("backend", "a", "s").is_none());
        assert_eq!(
            problem("backend", "", "").is_none(),
            DEFAULT_CHAIN_BUILT_IN,
            "empty keys are usable exactly when the chain is built in"
        );
    }
}
