//! An S3-like profile for the embedded store: a first-byte latency and a bandwidth limit on
//! every response body (one request at a time per HTTP/1.1 connection, so per connection), as a
//! Lambda function sees S3 (about 20 ms and 40 MB/s per connection). For measuring recovery and
//! misses on one machine; off by default.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use s3s::StdError;
use s3s::dto::StreamingBlob;
use s3s::stream::{ByteStream, RemainingLength};
use std::future::Future as _;

use tokio::time::{Instant, Sleep};

/// Latency and bandwidth of the profile.
#[derive(Debug, Clone, Copy, Default)]
pub struct S3Profile {
    /// Delay before the first byte of a body.
    pub first_byte: Duration,
    /// Bytes per second per body; 0: unlimited.
    pub bandwidth: u64,
}

impl S3Profile {
    /// Whether the profile changes anything.
    pub fn is_active(&self) -> bool {
        !self.first_byte.is_zero() || self.bandwidth > 0
    }

    /// Wraps a response body.
    pub fn wrap(&self, body: StreamingBlob) -> StreamingBlob {
        StreamingBlob::new(Throttled {
            inner: body,
            profile: *self,
            start: None,
            sent: 0,
            sleep: None,
        })
    }
}

struct Throttled {
    inner: StreamingBlob,
    profile: S3Profile,
    start: Option<Instant>,
    sent: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stream for Throttled {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let start = *this
            .start
            .get_or_insert_with(|| Instant::now() + this.profile.first_byte);
        // When may the next byte go? After the first-byte latency, at the configured rate.
        let due = if this.profile.bandwidth > 0 {
            start + Duration::from_secs_f64(this.sent as f64 / this.profile.bandwidth as f64)
        } else {
            start
        };
        if due > Instant::now() {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            sleep.as_mut().reset(due);
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let r = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &r {
            this.sent += b.len() as u64;
        }
        r
    }
}

impl ByteStream for Throttled {
    fn remaining_length(&self) -> RemainingLength {
        self.inner.remaining_length()
    }
}
