//! Raw HTTP/1.1 over a TCP socket, for requests an SDK will not send (short bodies, chunked
//! uploads without Content-Length, unsigned requests), signed with aws-sigv4 where needed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits `http://host:port/path?query` into (`host:port`, `/path?query`).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http url");
    match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    }
}

/// Sends `head` (request line + headers, without the final blank line) and `body`, then
/// optionally half-closes the socket, and reads the response until the server closes.
pub fn exchange(host: &str, head: &str, body: &[u8], half_close: bool) -> Response {
    let mut s = TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = head
        .trim_end()
        .replace('\n', "\r\n")
        .replace("\r\r\n", "\r\n");
    req.push_str("\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    if half_close {
        s.shutdown(std::net::Shutdown::Write).expect("half close");
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

fn parse(buf: &[u8]) -> Response {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size_hex = String::from_utf8_lossy(&b[..pos]);
        let size = usize::from_str_radix(size_hex.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        b = &b[pos + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// The head (request line and headers, `Connection: close`) of a signed request with an
/// unsigned payload of `len` bytes.
fn signed_head(method: &str, url: &str, len: u64, access_key: &str, secret_key: &str) -> String {
    let (host, path) = split_url(url);
    let len = len.to_string();
    let signed = sign_headers(
        method,
        url,
        &[("host", host.as_str()), ("content-length", len.as_str())],
        SignableBody::UnsignedPayload,
        access_key,
        secret_key,
    );
    let mut head = format!(
        "{method} {path} HTTP/1.1\nHost: {host}\nContent-Length: {len}\nConnection: close\n"
    );
    for (k, v) in &signed {
        head.push_str(&format!("{k}: {v}\n"));
    }
    head
}

/// A signed request (unsigned payload) of `method` to `url` with `body`, for what the SDK will
/// not send (a key of only whitespace, say).
pub fn signed_request(
    method: &str,
    url: &str,
    body: &[u8],
    access_key: &str,
    secret_key: &str,
) -> Response {
    let head = signed_head(method, url, body.len() as u64, access_key, secret_key);
    exchange(&split_url(url).0, &head, body, false)
}

/// A signed PUT (unsigned payload) sent in parts over one socket, to hold a request open with
/// part of its body sent: [`SlowPut::start`], [`SlowPut::send`], [`SlowPut::finish`].
pub struct SlowPut {
    stream: TcpStream,
}

impl SlowPut {
    /// Sends the headers of a PUT of `declared` bytes to `url`, then `first`.
    pub fn start(
        url: &str,
        declared: u64,
        first: &[u8],
        access_key: &str,
        secret_key: &str,
    ) -> Self {
        let host = split_url(url).0;
        let mut head =
            signed_head("PUT", url, declared, access_key, secret_key).replace('\n', "\r\n");
        head.push_str("\r\n");
        let mut stream = TcpStream::connect(&host).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(first).expect("write body");
        Self { stream }
    }

    /// Sends more of the body (an error if the server has closed the connection).
    pub fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data)
    }

    /// Reads the response (until the server closes).
    pub fn finish(mut self) -> Response {
        let mut buf = Vec::new();
        let _ = self.stream.read_to_end(&mut buf);
        parse(&buf)
    }
}

/// A plain GET with extra headers: (status, headers, body).
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let (host, path) = split_url(url);
    let mut head = format!("GET {path} HTTP/1.1\nHost: {host}\nConnection: close\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\n"));
    }
    let r = exchange(&host, &head, &[], false);
    (r.status, r.headers, r.body)
}

fn settings() -> SigningSettings {
    let mut s = SigningSettings::default();
    s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    s.percent_encoding_mode = PercentEncodingMode::Single;
    s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    s
}

/// SigV4 headers (Authorization, X-Amz-Date, X-Amz-Content-Sha256, ...) for a request to an
/// S3 endpoint. `headers` are the headers to sign (include `host`).
pub fn sign_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: SignableBody<'_>,
    access_key: &str,
    secret_key: &str,
) -> Vec<(String, String)> {
    let identity =
        aws_credential_types::Credentials::new(access_key, secret_key, None, None, "raw").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(settings())
        .build()
        .expect("signing params")
        .into();
    let req = SignableRequest::new(method, url, headers.iter().copied(), body).expect("signable");
    let (instructions, _sig) = sign(req, &params).expect("sign").into_parts();
    instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A presigned GET URL valid for `expires`.
pub fn presign_get(
    url: &str,
    host: &str,
    access_key: &str,
    secret_key: &str,
    expires: Duration,
) -> String {
    let identity =
        aws_credential_types::Credentials::new(access_key, secret_key, None, None, "raw").into();
    let mut s = settings();
    s.signature_location = SignatureLocation::QueryParams;
    s.expires_in = Some(expires);
    s.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(s)
        .build()
        .expect("signing params")
        .into();
    let headers = [("host", host)];
    let req = SignableRequest::new(
        "GET",
        url,
        headers.iter().copied(),
        SignableBody::UnsignedPayload,
    )
    .expect("signable");
    let (instructions, _sig) = sign(req, &params).expect("sign").into_parts();
    let mut out = url.to_owned();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (k, v) in instructions.params() {
        out.push(sep);
        sep = '&';
        out.push_str(&format!(
            "{}={}",
            k,
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
        ));
    }
    out
}
