//! The tier's bodies as S3 bodies (s3s wants a stream of `StdError` results that knows its
//! remaining length).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use s3s::StdError;
use s3s::dto::StreamingBlob;
use s3s::stream::{ByteStream, RemainingLength};
use tier::KnownLength;

struct Sized<S>(S);

impl<S, E> Stream for Sized<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<StdError>,
{
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(Into::into)))
    }
}

impl<S, E> ByteStream for Sized<S>
where
    S: Stream<Item = Result<Bytes, E>> + KnownLength + Unpin,
    E: Into<StdError>,
{
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(usize::try_from(self.0.remaining()).unwrap_or(usize::MAX))
    }
}

/// `body` (a [`tier::TierBody`] or a [`tier::Fill`]) as an S3 body.
pub(super) fn blob<S, E>(body: S) -> StreamingBlob
where
    S: Stream<Item = Result<Bytes, E>> + KnownLength + Unpin + Send + Sync + 'static,
    E: Into<StdError> + 'static,
{
    StreamingBlob::new(Sized(body))
}
