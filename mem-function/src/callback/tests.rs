use super::*;
use crate::framed::FrameReader;
use crate::wire::{
    self, ChunkId, Command, ErrorBody, ErrorCode, Frame, Hello, InstanceId, Limits, NodeState,
    Opcode, Request, StoreStats, ViewCheck,
};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn hello(node: &str, token: &str) -> Hello {
    Hello {
        node_id: node.into(),
        instance_id: InstanceId([1; 16]),
        token: Bytes::from(token.to_owned()),
        command: Command::Serve,
        view: ViewCheck::Fresh,
        state: NodeState::EMPTY,
        stats: StoreStats::default(),
        invocation_id: "inv".into(),
        deadline_unix_ms: 0,
    }
}

const SECRET: &[u8] = b"unit-test-secret-0123456789";

/// Dial like a function would; returns the answer to HELLO.
async fn dial(
    addr: SocketAddr,
    secret: &[u8],
    h: Hello,
) -> (
    Frame,
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut r = FrameReader::new(rd, Limits::DEFAULT);
    let ch = r.read_frame().await.unwrap().unwrap();
    let nonce = wire::decode_challenge(&ch).unwrap();
    crate::framed::write_frame(&mut wr, &h.into_frame(secret, &nonce).unwrap())
        .await
        .unwrap();
    let answer = r.read_frame().await.unwrap().unwrap();
    (answer, r, wr)
}

#[tokio::test]
async fn refuses_wrong_secret_and_unknown_token() {
    let tokens = InvocationTokens::new();
    let good = tokens.issue("node-1");
    let mut cfg = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), SECRET);
    cfg.tokens = Some(tokens.clone());
    let mut l = CallbackListener::bind_with(cfg).await.unwrap();
    let addr = l.local_addr();

    let (a, ..) = dial(addr, b"wrong-secret-0123456789", hello("node-1", &good)).await;
    assert!(a.is_error());
    assert_eq!(
        ErrorBody::decode(a.meta).unwrap().code,
        ErrorCode::Unauthenticated
    );

    let (a, ..) = dial(addr, SECRET, hello("node-1", "not-issued")).await;
    assert_eq!(
        ErrorBody::decode(a.meta).unwrap().code,
        ErrorCode::Unauthenticated
    );
    let (a, ..) = dial(addr, SECRET, hello("node-2", &good)).await;
    assert_eq!(
        ErrorBody::decode(a.meta).unwrap().code,
        ErrorCode::Unauthenticated,
        "token of another node"
    );

    let (a, ..) = dial(addr, SECRET, hello("node-1", &good)).await;
    assert_eq!(a.opcode, Opcode::Welcome);
    let conn = l.accept().await.unwrap();
    assert_eq!(conn.node_id(), "node-1");
    assert_eq!(l.stats().refused.load(Ordering::Relaxed), 3);
    tokens.revoke("node-1", &good);
    let (a, ..) = dial(addr, SECRET, hello("node-1", &good)).await;
    assert!(a.is_error(), "revoked token");
}

#[tokio::test]
async fn serves_nothing_before_authentication() {
    let l = CallbackListener::bind("127.0.0.1:0".parse().unwrap(), SECRET)
        .await
        .unwrap();
    let s = TcpStream::connect(l.local_addr()).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut r = FrameReader::new(rd, Limits::DEFAULT);
    let _challenge = r.read_frame().await.unwrap().unwrap();
    // A request instead of HELLO.
    let put = Request::Put {
        id: ChunkId::for_object(1, 0, 0),
        crc32c: 0,
        data: Bytes::new(),
    }
    .into_frame(1);
    crate::framed::write_frame(&mut wr, &put).await.unwrap();
    let a = r.read_frame().await.unwrap().unwrap();
    assert_eq!(
        ErrorBody::decode(a.meta).unwrap().code,
        ErrorCode::Unauthenticated
    );
    assert!(
        r.read_frame().await.unwrap().is_none(),
        "closed after refusing"
    );
}

#[tokio::test]
async fn oversized_frame_before_auth_is_refused_from_its_header() {
    let l = CallbackListener::bind("127.0.0.1:0".parse().unwrap(), SECRET)
        .await
        .unwrap();
    let s = TcpStream::connect(l.local_addr()).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut r = FrameReader::new(rd, Limits::DEFAULT);
    let _challenge = r.read_frame().await.unwrap().unwrap();
    let mut head = bytes::BytesMut::new();
    wire::Header {
        opcode: Opcode::Hello,
        flags: 0,
        meta_len: 100,
        request_id: 0,
        body_len: 1 << 30,
    }
    .encode(&mut head);
    wr.write_all(&head).await.unwrap();
    let a = r.read_frame().await.unwrap().unwrap();
    let e = ErrorBody::decode(a.meta).unwrap();
    assert_eq!(e.code, ErrorCode::FrameTooLarge);
    assert_eq!(e.detail, [1 << 30, 0]);
}

#[tokio::test]
async fn handshake_times_out() {
    let mut cfg = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), SECRET);
    cfg.auth_timeout = Duration::from_millis(100);
    let l = CallbackListener::bind_with(cfg).await.unwrap();
    let s = TcpStream::connect(l.local_addr()).await.unwrap();
    let mut r = FrameReader::new(s, Limits::DEFAULT);
    let _challenge = r.read_frame().await.unwrap().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None) | Err(_)));
    assert_eq!(l.stats().refused.load(Ordering::Relaxed), 1);
}

#[test]
fn error_classification() {
    assert!(CallError::Timeout(Duration::from_secs(1)).is_retryable());
    assert_eq!(
        CallError::Timeout(Duration::from_secs(1)).fault(),
        Fault::Connection
    );
    assert!(!CallError::Full { needed: 1, free: 0 }.is_retryable());
    assert_eq!(CallError::NotFound.fault(), Fault::Function);
    assert_eq!(CallError::Protocol("x".into()).fault(), Fault::Protocol);
    assert!(matches!(
        CallError::from_error_body(ErrorBody {
            code: ErrorCode::Full,
            detail: [5, 2],
            message: String::new()
        }),
        CallError::Full { needed: 5, free: 2 }
    ));
}
