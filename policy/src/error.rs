//! Errors of the policy crate. Events never fail (a decision always comes back); only
//! configuration is validated, in each policy's `new`.

/// An invalid policy or simulator configuration. Not retryable: fix the configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of its allowed range.
    #[error("invalid {policy} config: `{field}` {reason}")]
    Invalid {
        /// Which configuration (`sliding-window`, `infinicache`, `provisioned`, `sim`, `synth`).
        policy: &'static str,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Returns `Err(ConfigError::Invalid)` unless `ok`.
pub(crate) fn ensure(
    ok: bool,
    policy: &'static str,
    field: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            policy,
            field,
            reason: reason(),
        })
    }
}
