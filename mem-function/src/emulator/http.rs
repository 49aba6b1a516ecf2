//! HTTP surface of the emulator: Invoke API, Runtime API (under `/rt/{instance}`), admin API.

use super::instance::Completion;
use super::{Emu, EmulatorError, MAX_EVENT_PAYLOAD, MAX_SYNC_PAYLOAD};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{debug, warn};

type Resp = Response<Full<Bytes>>;

pub(crate) async fn serve(emu: Arc<Emu>, listener: TcpListener) {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = emu.cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "emulator accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let emu = emu.clone();
        tokio::spawn(async move {
            let cancel = emu.cancel.clone();
            let svc = hyper::service::service_fn(move |req| {
                let emu = emu.clone();
                async move { Ok::<_, Infallible>(route(emu, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "emulator connection ended") },
                _ = cancel.cancelled() => {}
            }
        });
    }
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// An AWS-style error: `x-amzn-ErrorType` header plus a JSON body the SDKs parse.
fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Resp {
    let body =
        serde_json::json!({"Type": "User", "__type": error_type, "message": message}).to_string();
    let mut r = json(status, body);
    r.headers_mut()
        .insert("x-amzn-ErrorType", error_type.parse().expect("ascii"));
    r
}

fn emu_error(e: &EmulatorError) -> Resp {
    match e {
        EmulatorError::InvalidName(_) => aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            &e.to_string(),
        ),
        EmulatorError::TooManyRequests(_) => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &e.to_string(),
        ),
        EmulatorError::PayloadTooLarge { .. } => aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            &e.to_string(),
        ),
        _ => aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            &e.to_string(),
        ),
    }
}

async fn body(req: Request<Incoming>, max: usize) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(if e.is::<http_body_util::LengthLimitError>() {
            aws_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                &format!("body over {max} bytes"),
            )
        } else {
            aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                &format!("reading body: {e}"),
            )
        }),
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Function name from the path segment: a name, `name:qualifier`, or a function ARN.
pub(crate) fn function_name(segment: &str) -> Result<String, EmulatorError> {
    let s = percent_decode(segment);
    let name = if s.starts_with("arn:") {
        let parts: Vec<&str> = s.split(':').collect();
        parts
            .iter()
            .position(|p| *p == "function")
            .and_then(|i| parts.get(i + 1))
            .copied()
            .unwrap_or("")
    } else {
        s.split(':').next().unwrap_or("")
    };
    validate_name(name)?;
    Ok(name.to_owned())
}

/// Lambda's rule for names: 1..=64 of `[A-Za-z0-9_-]`.
pub(crate) fn validate_name(name: &str) -> Result<(), EmulatorError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(EmulatorError::InvalidName(name.to_owned()))
    }
}

async fn route(emu: Arc<Emu>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segs.as_slice()) {
        (&Method::POST, ["2015-03-31", "functions", name, "invocations"]) => {
            match function_name(name) {
                Ok(name) => invoke(emu, name, req).await,
                Err(e) => emu_error(&e),
            }
        }
        (_, ["rt", id, "2018-06-01", "runtime", rest @ ..]) => {
            let Some(inst) = id.parse::<u64>().ok().and_then(|id| emu.instance_by_id(id)) else {
                return aws_error(StatusCode::GONE, "InstanceGone", "no such instance");
            };
            match (&method, rest) {
                (&Method::GET, ["invocation", "next"]) => match inst.next().await {
                    Some(d) => {
                        let mut r = json(StatusCode::OK, d.payload);
                        let h = r.headers_mut();
                        h.insert(
                            "Lambda-Runtime-Aws-Request-Id",
                            d.request_id.parse().expect("uuid"),
                        );
                        h.insert("Lambda-Runtime-Deadline-Ms", d.deadline_unix_ms.into());
                        if let Ok(v) = d.arn.parse() {
                            h.insert("Lambda-Runtime-Invoked-Function-Arn", v);
                        }
                        if let Ok(v) = format!("Root=1-{}", d.request_id.replace('-', "")).parse() {
                            h.insert("Lambda-Runtime-Trace-Id", v);
                        }
                        r
                    }
                    None => aws_error(
                        StatusCode::GONE,
                        "InstanceGone",
                        "instance is shutting down",
                    ),
                },
                (&Method::POST, ["invocation", request_id, "response"]) => {
                    let request_id = (*request_id).to_owned();
                    let b = match body(req, MAX_SYNC_PAYLOAD).await {
                        Ok(b) => b,
                        Err(r) => {
                            inst.complete(
                                &request_id,
                                Completion::Error {
                                    error_type: "Function.ResponseSizeTooLarge".into(),
                                    body: super::error_doc(
                                        "Function.ResponseSizeTooLarge",
                                        "response over 6 MB",
                                    ),
                                },
                            );
                            return r;
                        }
                    };
                    if inst.complete(&request_id, Completion::Response(b)) {
                        json(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
                    } else {
                        aws_error(
                            StatusCode::BAD_REQUEST,
                            "InvalidRequestID",
                            "no such invocation in flight",
                        )
                    }
                }
                (&Method::POST, ["invocation", request_id, "error"]) => {
                    let request_id = (*request_id).to_owned();
                    let error_type = error_type(&req);
                    let b = body(req, MAX_SYNC_PAYLOAD).await.unwrap_or_default();
                    if inst.complete(
                        &request_id,
                        Completion::Error {
                            error_type,
                            body: b,
                        },
                    ) {
                        json(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
                    } else {
                        aws_error(
                            StatusCode::BAD_REQUEST,
                            "InvalidRequestID",
                            "no such invocation in flight",
                        )
                    }
                }
                (&Method::POST, ["init", "error"]) => {
                    let error_type = error_type(&req);
                    let b = body(req, MAX_SYNC_PAYLOAD).await.unwrap_or_default();
                    inst.init_failed(error_type, b);
                    json(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
                }
                _ => aws_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "unknown runtime API path",
                ),
            }
        }
        (&Method::GET, ["admin", "functions"]) => json(
            StatusCode::OK,
            serde_json::to_vec(&emu.list()).expect("json"),
        ),
        (&Method::POST, ["admin", "functions", name, "reclaim"]) => {
            let reclaimed = emu.reclaim(&percent_decode(name)).await;
            json(
                StatusCode::OK,
                serde_json::json!({ "reclaimed": reclaimed }).to_string(),
            )
        }
        (&Method::GET, ["health"]) => json(StatusCode::OK, r#"{"status":"ok"}"#),
        _ => aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!("{method} {path}"),
        ),
    }
}

fn error_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unhandled")
        .to_owned()
}

async fn invoke(emu: Arc<Emu>, name: String, req: Request<Incoming>) -> Resp {
    let kind = req
        .headers()
        .get("X-Amz-Invocation-Type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_owned();
    let max = if kind == "Event" {
        MAX_EVENT_PAYLOAD
    } else {
        MAX_SYNC_PAYLOAD
    };
    let payload = match body(req, max).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    match kind.as_str() {
        "DryRun" => {
            let mut r = json(StatusCode::NO_CONTENT, Bytes::new());
            r.headers_mut()
                .insert("x-amzn-RequestId", request_id.parse().expect("uuid"));
            r
        }
        "Event" => {
            if let Err(e) = emu.check_queue(&name) {
                return emu_error(&e);
            }
            let emu2 = emu.clone();
            tokio::spawn(async move {
                match emu2.invoke(&name, payload).await {
                    Ok(out) if out.function_error.is_some() => {
                        warn!(function = %name, error = %String::from_utf8_lossy(&out.payload), "event invocation failed")
                    }
                    Ok(_) => debug!(function = %name, "event invocation done"),
                    Err(e) => warn!(function = %name, error = %e, "event invocation failed"),
                }
            });
            let mut r = json(StatusCode::ACCEPTED, Bytes::new());
            r.headers_mut()
                .insert("x-amzn-RequestId", request_id.parse().expect("uuid"));
            r
        }
        "RequestResponse" => {
            if let Err(e) = emu.check_queue(&name) {
                return emu_error(&e);
            }
            match emu.invoke(&name, payload).await {
                Ok(out) => {
                    let mut r = json(StatusCode::OK, out.payload);
                    let h = r.headers_mut();
                    h.insert("X-Amz-Executed-Version", "$LATEST".parse().expect("ascii"));
                    h.insert("x-amzn-RequestId", request_id.parse().expect("uuid"));
                    if let Some(fe) = out.function_error.and_then(|f| f.parse().ok()) {
                        h.insert("X-Amz-Function-Error", fe);
                    }
                    r
                }
                Err(e) => emu_error(&e),
            }
        }
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("unknown invocation type {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(function_name("node-3").unwrap(), "node-3");
        assert_eq!(function_name("node-3%3A%24LATEST").unwrap(), "node-3");
        assert_eq!(
            function_name("arn%3Aaws%3Alambda%3Aus-east-1%3A123%3Afunction%3Anode-7").unwrap(),
            "node-7"
        );
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:123:function:node_8:prod").unwrap(),
            "node_8"
        );
        assert!(function_name("").is_err());
        assert!(function_name("a%2Fb").is_err());
        assert!(function_name(&"x".repeat(65)).is_err());
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
