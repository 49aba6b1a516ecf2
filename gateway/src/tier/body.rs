//! A response body fed by a producer task through a bounded channel, with a known length.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use s3s::StdError;
use s3s::stream::{ByteStream, RemainingLength};
use tokio::sync::mpsc;

/// Pieces in flight between the producer and the client.
pub const DEPTH: usize = 2;

/// The receiving end, as an S3 body.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, StdError>>,
    remaining: u64,
}

/// The sending end.
pub type BodySender = mpsc::Sender<Result<Bytes, StdError>>;

/// A body of `len` bytes and its sender. The producer stops when `send` fails (the client is
/// gone).
pub fn channel(len: u64) -> (BodySender, ChannelBody) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (tx, ChannelBody { rx, remaining: len })
}

impl Stream for ChannelBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                this.remaining = this.remaining.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(b)))
            }
            other => other,
        }
    }
}

impl ByteStream for ChannelBody {
    fn remaining_length(&self) -> RemainingLength {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        RemainingLength::new_exact(n)
    }
}
