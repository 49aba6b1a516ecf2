//! tower middleware around the S3 service.
//!
//! [`RequestContextLayer`] gives every request an id (the `x-amz-request-id` response header and
//! the `RequestId` of every S3 error body), a tracing span, a deadline (`server.request_timeout`,
//! covering the wait for a concurrency slot too), metrics (operation, status, latency, bytes in
//! and out), and turns failures of the client's own body into `400 IncompleteBody` (or, for a
//! body slower than `server.body_min_rate`, `400 RequestTimeout`) rather than blaming the
//! backing store. The global concurrency limit is tower's
//! `GlobalConcurrencyLimitLayer`, placed inside this layer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use s3s::{S3Error, S3ErrorCode};
use tower::{Layer, Service, ServiceExt};
use tracing::{Instrument, info, warn};

use crate::auth::OperationSlot;
use crate::metrics::{OperationLabels, RequestLabels, S3Metrics};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-amz-request-id";

/// The request id, also in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

fn new_request_id() -> RequestId {
    let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
    RequestId(format!("{:016X}", hi ^ lo).into())
}

/// The slowest request body accepted: `min_rate` bytes per second of waiting for the client,
/// over windows of `window` spent waiting for it.
#[derive(Clone, Copy, Debug)]
pub struct BodyRate {
    /// Bytes per second.
    pub min_rate: u64,
    /// Waiting time a window measures.
    pub window: Duration,
}

impl BodyRate {
    fn needed(&self) -> u64 {
        (self.min_rate as f64 * self.window.as_secs_f64()) as u64
    }
}

/// Builds [`RequestContext`].
#[derive(Clone)]
pub struct RequestContextLayer {
    metrics: S3Metrics,
    timeout: Duration,
    rate: BodyRate,
}

impl RequestContextLayer {
    /// Requests get at most `timeout` until their response headers, and their bodies must keep
    /// up `rate`.
    pub fn new(metrics: S3Metrics, timeout: Duration, rate: BodyRate) -> Self {
        Self {
            metrics,
            timeout,
            rate,
        }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext {
            inner,
            metrics: self.metrics.clone(),
            timeout: self.timeout,
            rate: self.rate,
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct RequestContext<S> {
    inner: S,
    metrics: S3Metrics,
    timeout: Duration,
    rate: BodyRate,
}

impl<S> Service<Request<Incoming>> for RequestContext<S>
where
    S: Service<Request<ClientBody>, Response = Response<s3s::Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness (a concurrency slot) is awaited inside `call`, under the request deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let id = new_request_id();
        let slot = OperationSlot::default();
        let (mut parts, body) = req.into_parts();
        let declared = declared_length(&mut parts.headers);
        let expects_continue = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let client = ClientBodyState::default();
        let body = ClientBody::new(body, client.clone(), declared, self.rate, expects_continue);
        parts.extensions.insert(slot.clone());
        parts.extensions.insert(id.clone());
        let span = tracing::info_span!(
            "request",
            id = %id.0,
            method = %parts.method,
            path = %parts.uri.path(),
        );
        let req = Request::from_parts(parts, body);
        let svc = self.inner.clone();
        let metrics = self.metrics.clone();
        let timeout = self.timeout;
        Box::pin(
            async move {
                metrics.in_flight.inc();
                let start = Instant::now();
                let result = tokio::time::timeout(timeout, svc.oneshot(req)).await;
                let mut resp = match result {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(e)) => {
                        let e: BoxError = e.into();
                        warn!(error = %e, "S3 service failed");
                        error_response(S3Error::with_message(
                            S3ErrorCode::InternalError,
                            "internal error",
                        ))
                    }
                    Err(_) => {
                        let mut e = S3Error::with_message(
                            S3ErrorCode::ServiceUnavailable,
                            format!(
                                "the request did not complete within {}",
                                humantime::format_duration(timeout)
                            ),
                        );
                        e.set_status_code(StatusCode::SERVICE_UNAVAILABLE);
                        error_response(e)
                    }
                };
                if client.stalled.load(Ordering::Acquire) && !resp.status().is_success() {
                    resp = error_response(S3Error::with_message(
                        S3ErrorCode::RequestTimeout,
                        "Your socket connection to the server was not read from or written to \
                         within the timeout period: the request body came slower than the \
                         gateway accepts",
                    ));
                } else if client.failed.load(Ordering::Acquire) && !resp.status().is_success() {
                    resp = error_response(S3Error::with_message(
                        S3ErrorCode::IncompleteBody,
                        "the request body ended before its declared length, or was longer",
                    ));
                }
                finish_response(&mut resp, &id);

                let operation = slot.name().to_owned();
                let status = resp.status().as_u16();
                let elapsed = start.elapsed();
                let op = OperationLabels {
                    operation: operation.clone(),
                };
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        operation: operation.clone(),
                        status,
                    })
                    .inc();
                metrics
                    .latency
                    .get_or_create(&op)
                    .observe(elapsed.as_secs_f64());
                let received = client.bytes.load(Ordering::Relaxed);
                metrics.bytes_in.get_or_create(&op).inc_by(received);
                metrics.in_flight.dec();
                info!(
                    operation = %operation,
                    status,
                    ms = elapsed.as_millis() as u64,
                    received,
                    "request"
                );
                let sent = metrics.bytes_out.get_or_create(&op).clone();
                Ok(resp.map(|inner| CountedBody { inner, sent }))
            }
            .instrument(span),
        )
    }
}

/// Declared length of the request body, for checking it as it arrives.
///
/// A streaming upload without `Content-Length` whose body is not aws-chunked (so its decoded
/// length is its length) gets `Content-Length` from `x-amz-decoded-content-length`, as S3 takes
/// it; s3s would otherwise refuse it with MissingContentLength.
fn declared_length(headers: &mut HeaderMap) -> Option<u64> {
    let parse = |v: &HeaderValue| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(v) = headers.get(CONTENT_LENGTH) {
        return parse(v);
    }
    let streaming = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"));
    if streaming {
        return None;
    }
    let decoded = headers.get("x-amz-decoded-content-length")?.clone();
    let n = parse(&decoded)?;
    headers.insert(CONTENT_LENGTH, decoded);
    Some(n)
}

fn error_response(err: S3Error) -> Response<s3s::Body> {
    match err.to_http_response() {
        Ok(r) => r,
        Err(_) => {
            let mut r = Response::new(s3s::Body::empty());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// Adds the request id header, puts the request id into S3 error bodies that lack one, and
/// empties the body of a 304.
fn finish_response(resp: &mut Response<s3s::Body>, id: &RequestId) {
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    if resp.status() == StatusCode::NOT_MODIFIED {
        *resp.body_mut() = s3s::Body::empty();
        resp.headers_mut().remove(CONTENT_LENGTH);
        resp.headers_mut().remove(CONTENT_TYPE);
        return;
    }
    if !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return;
    }
    let Some(bytes) = resp.body().bytes() else {
        return;
    };
    if let Some(with_id) = insert_request_id(&bytes, &id.0) {
        resp.headers_mut().remove(CONTENT_LENGTH);
        *resp.body_mut() = s3s::Body::from(with_id);
    }
}

/// `<Error>...</Error>` with a `<RequestId>` added before the closing tag, if it has none.
fn insert_request_id(body: &[u8], id: &str) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    if text.contains("<RequestId>") {
        return None;
    }
    let pos = text.rfind("</Error>")?;
    let mut out = String::with_capacity(text.len() + id.len() + 24);
    out.push_str(&text[..pos]);
    out.push_str("<RequestId>");
    out.push_str(id);
    out.push_str("</RequestId>");
    out.push_str(&text[pos..]);
    Some(Bytes::from(out))
}

/// What the middleware learns from the client's body as it is read.
#[derive(Clone, Default)]
struct ClientBodyState {
    bytes: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
}

/// The client's request body: counts bytes, enforces the declared length (an early end or an
/// overrun is an error) and the minimum rate, and records a failure so the response can blame
/// the client.
pub struct ClientBody {
    /// `None` once handed to the drain task (see `Drop`).
    inner: Option<Incoming>,
    /// The client asked `Expect: 100-continue`: until the body is read it has not sent it.
    expects_continue: bool,
    /// Whether dropping the body unread drains the rest (false for the drain itself).
    drain_on_drop: bool,
    state: ClientBodyState,
    expected: Option<u64>,
    rate: BodyRate,
    /// Time spent waiting for the client in the current window, and bytes it sent.
    waited: Duration,
    window_bytes: u64,
    /// Since when the current wait for the client lasts.
    pending_since: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why the client's body failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// The connection failed or ended early.
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
    /// The body broke its declared length.
    #[error("request body length {got} does not match the declared {expected}")]
    Length {
        /// Bytes received so far.
        got: u64,
        /// Declared length.
        expected: u64,
    },
    /// The body came slower than the minimum rate.
    #[error("the request body sent {got} bytes in {waited:?} of waiting, less than {needed}")]
    TooSlow {
        /// Bytes in the window.
        got: u64,
        /// Bytes the window needed.
        needed: u64,
        /// Waiting time of the window.
        waited: Duration,
    },
}

impl ClientBody {
    fn new(
        inner: Incoming,
        state: ClientBodyState,
        expected: Option<u64>,
        rate: BodyRate,
        expects_continue: bool,
    ) -> Self {
        Self {
            inner: Some(inner),
            expects_continue,
            drain_on_drop: true,
            state,
            expected,
            rate,
            waited: Duration::ZERO,
            window_bytes: 0,
            pending_since: None,
            timer: None,
        }
    }

    /// Closes the window once it holds `rate.window` of waiting: an error if the client sent
    /// too little in it, else a new window starts.
    fn end_window_if_full(&mut self) -> Result<(), ClientBodyError> {
        if self.waited < self.rate.window {
            return Ok(());
        }
        let needed = self.rate.needed();
        if self.window_bytes < needed {
            self.state.failed.store(true, Ordering::Release);
            self.state.stalled.store(true, Ordering::Release);
            return Err(ClientBodyError::TooSlow {
                got: self.window_bytes,
                needed,
                waited: self.waited,
            });
        }
        self.waited = Duration::ZERO;
        self.window_bytes = 0;
        Ok(())
    }

    /// The inner body has nothing yet: arms the timer for the moment this wait fills the
    /// window, and checks the window when it fires.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Result<(), ClientBodyError> {
        loop {
            let now = Instant::now();
            let since = *self.pending_since.get_or_insert(now);
            let deadline = since + self.rate.window.saturating_sub(self.waited);
            let deadline = tokio::time::Instant::from_std(deadline);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            // The window filled while waiting.
            self.waited += now.max(since + self.rate.window.saturating_sub(self.waited)) - since;
            self.pending_since = Some(Instant::now());
            self.end_window_if_full()?;
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if polled.is_pending() {
            return match this.poll_wait(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Some(Err(e))),
            };
        }
        if let Some(since) = this.pending_since.take() {
            this.waited += since.elapsed();
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.window_bytes += data.len() as u64;
                    if let Err(e) = this.end_window_if_full() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    let total = this
                        .state
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if let Some(expected) = this.expected
                        && total > expected
                    {
                        this.state.failed.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(ClientBodyError::Length {
                            got: total,
                            expected,
                        })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.failed.store(true, Ordering::Release);
                Poll::Ready(Some(Err(ClientBodyError::Read(e))))
            }
            Poll::Ready(None) => {
                let got = this.state.bytes.load(Ordering::Relaxed);
                if let Some(expected) = this.expected
                    && got != expected
                {
                    this.state.failed.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(ClientBodyError::Length { got, expected })));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.expected, &self.inner) {
            (Some(n), _) => {
                SizeHint::with_exact(n.saturating_sub(self.state.bytes.load(Ordering::Relaxed)))
            }
            (None, Some(inner)) => inner.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

/// The most of an unread request body the gateway reads and discards after refusing the
/// request (a refused PUT or UploadPart of a multipart part's size).
const DRAIN_LIMIT: u64 = 64 << 20;

/// Longest the gateway spends reading and discarding a refused request's body.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Drop for ClientBody {
    /// A request refused before its body was read (a bad key, a bad signature, a full
    /// journal): hyper would close the connection with the client still sending, and the
    /// client would see a connection reset instead of the S3 error. So the rest of a body of
    /// declared length up to [`DRAIN_LIMIT`] is read and discarded (at the minimum rate, for at
    /// most [`DRAIN_TIMEOUT`]) while the response goes out. A client that sent
    /// `Expect: 100-continue` and nothing yet gets the error without sending its body.
    fn drop(&mut self) {
        if !self.drain_on_drop {
            return;
        }
        let Some(inner) = self.inner.take() else {
            return;
        };
        let got = self.state.bytes.load(Ordering::Relaxed);
        let Some(left) = self.expected.map(|n| n.saturating_sub(got)) else {
            return;
        };
        if inner.is_end_stream() || left == 0 || left > DRAIN_LIMIT {
            return;
        }
        if self.expects_continue && got == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = ClientBody::new(
            inner,
            ClientBodyState::default(),
            Some(left),
            self.rate,
            false,
        );
        rest.drain_on_drop = false;
        runtime.spawn(async move {
            use http_body_util::BodyExt;
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(Ok(_)) = rest.frame().await {}
            })
            .await;
        });
    }
}

/// The response body, counting the bytes sent.
pub struct CountedBody {
    inner: s3s::Body,
    sent: Counter,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent.inc_by(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_goes_into_error_bodies() {
        let body =
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code></Error>";
        let out = insert_request_id(body, "ABC").unwrap();
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .ends_with("<Code>NoSuchKey</Code><RequestId>ABC</RequestId></Error>")
        );
        let already = b"<Error><Code>X</Code><RequestId>Z</RequestId></Error>";
        assert!(insert_request_id(already, "ABC").is_none());
        assert!(insert_request_id(b"<ListBucketResult/>", "ABC").is_none());
    }

    #[test]
    fn decoded_length_becomes_content_length_for_plain_bodies() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-decoded-content-length",
            HeaderValue::from_static("10"),
        );
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("UNSIGNED-PAYLOAD"),
        );
        assert_eq!(declared_length(&mut h), Some(10));
        assert_eq!(h.get(CONTENT_LENGTH).unwrap(), "10");

        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-decoded-content-length",
            HeaderValue::from_static("10"),
        );
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        );
        assert_eq!(declared_length(&mut h), None);
        assert!(h.get(CONTENT_LENGTH).is_none());
    }
}
