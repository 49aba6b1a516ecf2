//! HTTP serving: accept loop, HTTP/1.1 and HTTP/2 (hyper-util auto), graceful shutdown that
//! drains in-flight requests with a hard timeout.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Stops a server started by [`serve`].
pub struct ShutdownHandle {
    token: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    drained: tokio::sync::oneshot::Receiver<bool>,
    grace_tx: tokio::sync::watch::Sender<Duration>,
}

impl ShutdownHandle {
    /// Stops accepting connections and waits for in-flight requests, at most `grace`; then
    /// connections still open are dropped.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.grace_tx.send(grace);
        self.token.cancel();
        let _ = self.done.await;
        match self.drained.await {
            Ok(true) => debug!("all connections drained"),
            Ok(false) => warn!(
                ?grace,
                "connections still open after the shutdown timeout were cut"
            ),
            Err(_) => {}
        }
    }
}

/// Options of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Time allowed for a client to send request headers.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `service` on `listener` until the handle's `shutdown`.
pub fn serve<S, B>(listener: TcpListener, service: S, opts: ServeOptions) -> ShutdownHandle
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let token = CancellationToken::new();
    let (grace_tx, mut grace_rx) = tokio::sync::watch::channel(Duration::from_secs(30));
    let (drained_tx, drained) = tokio::sync::oneshot::channel();
    let stop = token.clone();
    let done = tokio::spawn(async move {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        let svc = hyper_util::service::TowerToHyperService::new(service);
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc.clone())
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        let grace = *grace_rx.borrow_and_update();
        let ok = tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_ok();
        if ok {
            info!("server drained");
        }
        let _ = drained_tx.send(ok);
    });
    ShutdownHandle {
        token,
        done,
        drained,
        grace_tx,
    }
}

/// Serves an `s3s` service without the gateway's middleware (the embedded store).
pub fn serve_plain(listener: TcpListener, service: s3s::service::S3Service) -> ShutdownHandle {
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let service = service.clone();
        async move {
            let resp = match service.call(req.map(s3s::Body::from)).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = ?e, "embedded store failed to answer");
                    let mut r = Response::new(s3s::Body::empty());
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            };
            Ok::<_, Infallible>(resp)
        }
    });
    serve(listener, svc, ServeOptions::default())
}
