//! Conditional requests (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since),
//! evaluated by the gateway on the object it is about to return, in RFC 9110 order, as S3 does.
//!
//! The backing store may already have answered 304/412 (its answer is kept); a store that
//! ignores the headers (s3s-fs does) would otherwise let the full object through.

use http::{HeaderMap, HeaderValue, StatusCode};
use s3s::dto::{ETag, ETagCondition, Timestamp, TimestampFormat};
use s3s::{S3Error, S3ErrorCode};

/// The conditional headers of a GET or HEAD.
#[derive(Clone, Default)]
pub(super) struct Conditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
    pub if_modified_since: Option<Timestamp>,
    pub if_unmodified_since: Option<Timestamp>,
}

/// Copies the four conditional fields of an operation input.
macro_rules! conditions_of {
    ($input:expr) => {
        $crate::s3::conditions::Conditions {
            if_match: $input.if_match.clone(),
            if_none_match: $input.if_none_match.clone(),
            if_modified_since: $input.if_modified_since.clone(),
            if_unmodified_since: $input.if_unmodified_since.clone(),
        }
    };
}
pub(super) use conditions_of;

/// The four copy-source conditions of a CopyObject or UploadPartCopy input.
macro_rules! copy_source_conditions_of {
    ($input:expr) => {
        $crate::s3::conditions::Conditions {
            if_match: $input.copy_source_if_match.clone(),
            if_none_match: $input.copy_source_if_none_match.clone(),
            if_modified_since: $input.copy_source_if_modified_since.clone(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.clone(),
        }
    };
}
pub(super) use copy_source_conditions_of;

/// What the conditions say about an object.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Serve it.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

fn etag_matches(cond: &ETagCondition, etag: Option<&ETag>) -> bool {
    match (cond, etag) {
        (ETagCondition::Any, Some(_)) => true,
        (ETagCondition::ETag(want), Some(have)) => want.value() == have.value(),
        (_, None) => false,
    }
}

/// Whole seconds since the epoch (HTTP dates have no finer resolution).
fn secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

impl Conditions {
    /// `Err` with 304 or 412 (and the object's validators) unless the object may be served.
    pub(super) fn check(
        &self,
        etag: Option<&ETag>,
        last_modified: Option<&Timestamp>,
    ) -> Result<(), S3Error> {
        match self.evaluate(etag, last_modified) {
            Outcome::Proceed => Ok(()),
            o => Err(failed(&o, etag, last_modified)),
        }
    }

    /// Evaluates the conditions against the object's ETag and Last-Modified.
    pub(super) fn evaluate(
        &self,
        etag: Option<&ETag>,
        last_modified: Option<&Timestamp>,
    ) -> Outcome {
        if let Some(c) = &self.if_match {
            if !etag_matches(c, etag) {
                return Outcome::PreconditionFailed;
            }
        } else if let (Some(since), Some(lm)) = (&self.if_unmodified_since, last_modified)
            && secs(lm) > secs(since)
        {
            return Outcome::PreconditionFailed;
        }
        if let Some(c) = &self.if_none_match {
            if etag_matches(c, etag) {
                return Outcome::NotModified;
            }
        } else if let (Some(since), Some(lm)) = (&self.if_modified_since, last_modified)
            && secs(lm) <= secs(since)
        {
            return Outcome::NotModified;
        }
        Outcome::Proceed
    }
}

/// The error answering a failed condition, with the object's ETag and Last-Modified headers.
fn failed(outcome: &Outcome, etag: Option<&ETag>, last_modified: Option<&Timestamp>) -> S3Error {
    let mut err = match outcome {
        Outcome::NotModified => {
            let mut e = S3Error::new(S3ErrorCode::NotModified);
            e.set_status_code(StatusCode::NOT_MODIFIED);
            e
        }
        _ => {
            let mut e = S3Error::with_message(
                S3ErrorCode::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            );
            e.set_status_code(StatusCode::PRECONDITION_FAILED);
            e
        }
    };
    let mut headers = HeaderMap::new();
    if let Some(v) = etag.and_then(|e| e.to_http_header().ok()) {
        headers.insert(http::header::ETAG, v);
    }
    if let Some(lm) = last_modified {
        let mut buf = Vec::new();
        if lm.format(TimestampFormat::HttpDate, &mut buf).is_ok()
            && let Ok(v) = HeaderValue::from_bytes(&buf)
        {
            headers.insert(http::header::LAST_MODIFIED, v);
        }
    }
    err.set_headers(headers);
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from(time::OffsetDateTime::from_unix_timestamp(secs).unwrap())
    }

    fn cond(s: &str) -> ETagCondition {
        ETagCondition::parse_http_header(s.as_bytes()).unwrap()
    }

    #[test]
    fn rfc_order() {
        let etag = ETag::Strong("abc".into());
        let lm = ts(1000);
        let none = Conditions::default();
        assert_eq!(none.evaluate(Some(&etag), Some(&lm)), Outcome::Proceed);

        let m = cond("\"abc\"");
        let other = cond("\"zzz\"");
        let any = cond("*");
        let c = Conditions {
            if_none_match: Some(m.clone()),
            ..Conditions::default()
        };
        assert_eq!(c.evaluate(Some(&etag), Some(&lm)), Outcome::NotModified);
        let c = Conditions {
            if_none_match: Some(any.clone()),
            ..Conditions::default()
        };
        assert_eq!(c.evaluate(Some(&etag), Some(&lm)), Outcome::NotModified);
        let c = Conditions {
            if_none_match: Some(other.clone()),
            ..Conditions::default()
        };
        assert_eq!(c.evaluate(Some(&etag), Some(&lm)), Outcome::Proceed);
        let c = Conditions {
            if_match: Some(other.clone()),
            ..Conditions::default()
        };
        assert_eq!(
            c.evaluate(Some(&etag), Some(&lm)),
            Outcome::PreconditionFailed
        );

        // If-Match true overrides a failing If-Unmodified-Since (S3 behaviour).
        let early = ts(10);
        let c = Conditions {
            if_match: Some(m.clone()),
            if_unmodified_since: Some(early.clone()),
            ..Conditions::default()
        };
        assert_eq!(c.evaluate(Some(&etag), Some(&lm)), Outcome::Proceed);
        let c = Conditions {
            if_unmodified_since: Some(early.clone()),
            ..Conditions::default()
        };
        assert_eq!(
            c.evaluate(Some(&etag), Some(&lm)),
            Outcome::PreconditionFailed
        );

        // If-None-Match false (no match) overrides If-Modified-Since.
        let late = ts(5000);
        let c = Conditions {
            if_none_match: Some(other.clone()),
            if_modified_since: Some(late.clone()),
            ..Conditions::default()
        };
        assert_eq!(c.evaluate(Some(&etag), Some(&lm)), Outcome::Proceed);
        let c = Conditions {
            if_modified_since: Some(late.clone()),
            ..Conditions::default()
        };
        assert_eq!(c.evaluate(Some(&etag), Some(&lm)), Outcome::NotModified);
        let c = Conditions {
            if_modified_since: Some(early.clone()),
            ..Conditions::default()
        };
        assert_eq!(c.evaluate(Some(&etag), Some(&lm)), Outcome::Proceed);
    }
}
