//! The bodies the tier hands back: [`TierBody`] (a read, fed by a producer task through a
//! bounded channel) and [`Fill`] (a bucket's body passing through to the client while it is
//! admitted into memory). Both know how many bytes are left ([`KnownLength`]), which an HTTP
//! layer needs for `Content-Length`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use crate::error::TierError;

/// Pieces in flight between the producer and the client.
pub(crate) const DEPTH: usize = 2;

/// A body whose remaining length is known.
pub trait KnownLength {
    /// Bytes not yet yielded.
    fn remaining(&self) -> u64;
}

/// An object's bytes read from the tier (function memory, the journal, or the bucket for
/// pieces memory could not give). A read that fails mid-way yields the error.
pub struct TierBody {
    rx: mpsc::Receiver<Result<Bytes, TierError>>,
    remaining: u64,
}

/// The sending end of a [`TierBody`].
pub(crate) type BodySender = mpsc::Sender<Result<Bytes, TierError>>;

/// A body of `len` bytes and its sender. The producer stops when `send` fails (the client is
/// gone).
pub(crate) fn channel(len: u64) -> (BodySender, TierBody) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (tx, TierBody { rx, remaining: len })
}

impl Stream for TierBody {
    type Item = Result<Bytes, TierError>;

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

impl KnownLength for TierBody {
    fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// A bucket's body on its way to the client, copied to the admission task as it passes (see
/// [`crate::Tier::fill`]). The client is never slowed down: if admission falls behind, it is
/// abandoned.
pub struct Fill<B> {
    pub(crate) inner: B,
    pub(crate) tx: Option<mpsc::Sender<Bytes>>,
    pub(crate) remaining: u64,
}

impl<B, E> Stream for Fill<B>
where
    B: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_next(cx);
        match &r {
            Poll::Ready(Some(Ok(b))) => {
                this.remaining = this.remaining.saturating_sub(b.len() as u64);
                if let Some(tx) = &this.tx
                    && tx.try_send(b.clone()).is_err()
                {
                    // Admission is behind or gone: let the client go on alone.
                    this.tx = None;
                }
            }
            Poll::Ready(Some(Err(_))) => this.tx = None,
            _ => {}
        }
        r
    }
}

impl<B> KnownLength for Fill<B> {
    fn remaining(&self) -> u64 {
        self.remaining
    }
}
