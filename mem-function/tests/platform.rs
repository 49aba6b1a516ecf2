//! The emulator as a platform: freeze/thaw, reclaim detection, timeouts, Event invokes,
//! per-instance serialization, authentication, frame limits, and children dying with it.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use mem_function::callback::{CallError, CallbackListener};
use mem_function::emulator::{FunctionOverride, InstanceInfo};
use mem_function::framed::{FrameReader, write_frame};
use mem_function::invocation::{Invocation, Outcome};
use mem_function::wire::{
    self, ChunkId, Command, ErrorBody, ErrorCode, Header, Hello, InstanceId, Limits, NodeState,
    Opcode, StoreStats, ViewCheck,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_and_thaw_keep_the_data() {
    let mut h = Harness::start(Setup {
        freeze: true,
        ..Setup::default()
    })
    .await;
    let call = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Serve, NodeState::EMPTY),
    );
    let conn = h.conn("node-0").await;
    let chunks: Vec<(ChunkId, Bytes)> = (0..3)
        .map(|i| (ChunkId::for_object(9, 0, i), random_bytes(100_000 << i)))
        .collect();
    for (id, d) in &chunks {
        conn.put_chunk(id, d.clone()).await.unwrap();
    }
    let view = conn.bye().await.unwrap().state;
    let first = call.await.unwrap().response();
    assert_eq!(first.state, view);

    // Between invocations the instance is stopped (SIGSTOP), as Lambda freezes it.
    let pid = h.instance("node-0").unwrap().pid;
    wait_until("instance frozen", WAIT, || {
        h.instance("node-0").is_some_and(|i| i.state == "frozen") && proc_state(pid) == Some('T')
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proc_state(pid), Some('T'), "stays frozen while idle");

    // The next invocation thaws it; the same process answers with the memory intact.
    let call = h.invoke("node-0", &h.payload("node-0", Command::Serve, view));
    let conn2 = h.conn("node-0").await;
    assert_ne!(proc_state(pid), Some('T'));
    assert_eq!(conn2.hello().view, ViewCheck::Match);
    assert_eq!(conn2.instance_id(), conn.instance_id());
    assert_eq!(conn2.hello().state, view);
    for (id, d) in &chunks {
        assert_eq!(conn2.get_chunk(id).await.unwrap(), *d);
    }
    conn2.bye().await.unwrap();
    let second = call.await.unwrap().response();
    assert_eq!(second.view, ViewCheck::Match);
    assert_eq!(second.invocations, 2, "warm start");
    assert_eq!(h.instance("node-0").unwrap().pid, pid);
    assert_eq!(h.instance("node-0").unwrap().invocations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_function_is_detected_and_reported() {
    let mut h = Harness::start(Setup::default()).await;
    let call = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Serve, NodeState::EMPTY),
    );
    let conn = h.conn("node-0").await;
    let id = ChunkId::for_object(3, 0, 0);
    conn.put_chunk(&id, random_bytes(50_000)).await.unwrap();
    let view = conn.bye().await.unwrap().state;
    call.await.unwrap().response();
    let old_pid = h.instance("node-0").unwrap().pid;

    // The admin API lists the instance, then plays the provider reclaiming it.
    let (status, body) = h.admin("GET", "/admin/functions").await;
    assert_eq!(status, 200);
    let listed: Vec<InstanceInfo> = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].pid),
        ("node-0", old_pid)
    );
    let (status, body) = h.admin("POST", "/admin/functions/node-0/reclaim").await;
    assert_eq!((status, body.as_str()), (200, r#"{"reclaimed":true}"#));
    assert!(is_dead(old_pid), "reclaim kills the process");
    assert!(h.instance("node-0").is_none());
    let (_, body) = h.admin("POST", "/admin/functions/node-0/reclaim").await;
    assert_eq!(body, r#"{"reclaimed":false}"#);

    // Next invocation: a new process, empty memory, and it says so.
    let call = h.invoke("node-0", &h.payload("node-0", Command::Serve, view));
    let conn = h.conn("node-0").await;
    assert_eq!(conn.hello().view, ViewCheck::Lost);
    assert!(conn.hello().state.is_empty());
    assert_ne!(h.instance("node-0").unwrap().pid, old_pid);
    assert!(matches!(
        conn.get_chunk(&id).await,
        Err(CallError::NotFound)
    ));
    conn.bye().await.unwrap();
    let resp = call.await.unwrap().response();
    assert_eq!(resp.view, ViewCheck::Lost);
    assert_eq!(resp.invocations, 1, "cold start");
    assert_eq!(resp.state_before, NodeState::EMPTY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_reclaimed() {
    let mut h = Harness::start(Setup {
        reclaim_after_idle: Some(Duration::from_millis(400)),
        ..Setup::default()
    })
    .await;
    let inv = h.payload("node-0", Command::Warmup, NodeState::EMPTY);
    let call = h.invoke("node-0", &inv);
    let conn = h.conn("node-0").await;
    assert_eq!(conn.hello().command, Command::Warmup);
    conn.closed().await;
    let resp = call.await.unwrap().response();
    assert_eq!(resp.outcome, Outcome::Warmed);
    let pid = h.instance("node-0").expect("instance idle").pid;
    wait_until("idle instance reclaimed", WAIT, || {
        h.instance("node-0").is_none()
    })
    .await;
    wait_until("process gone", WAIT, || is_dead(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_with_a_wrong_secret_or_token_are_refused() {
    let mut overrides = BTreeMap::new();
    let mut env = BTreeMap::new();
    env.insert(
        "MEMFN_SECRET".to_owned(),
        "some-other-deployment-secret".to_owned(),
    );
    overrides.insert(
        "node-bad".to_owned(),
        FunctionOverride {
            env,
            ..FunctionOverride::default()
        },
    );
    let mut h = Harness::start(Setup {
        overrides,
        ..Setup::default()
    })
    .await;

    // Wrong secret: the HELLO MAC does not verify.
    let resp = h
        .invoke(
            "node-bad",
            &h.payload("node-bad", Command::Serve, NodeState::EMPTY),
        )
        .await
        .unwrap()
        .response();
    assert_eq!(resp.outcome, Outcome::Unauthenticated);
    assert!(
        resp.error.as_deref().unwrap_or("").contains("MAC"),
        "{:?}",
        resp.error
    );
    // Right secret, token not issued by this gateway.
    let forged = Invocation::new(
        Command::Serve,
        h.callback.clone(),
        "node-0",
        "forged-token",
        NodeState::EMPTY,
    );
    let resp = h.invoke("node-0", &forged).await.unwrap().response();
    assert_eq!(resp.outcome, Outcome::Unauthenticated);
    // Right secret, a token issued for another node.
    let mut stolen = h.payload("node-1", Command::Serve, NodeState::EMPTY);
    stolen.node_id = "node-0".into();
    let resp = h.invoke("node-0", &stolen).await.unwrap().response();
    assert_eq!(resp.outcome, Outcome::Unauthenticated);

    assert!(
        h.try_conn("node-bad", Duration::from_millis(200))
            .await
            .is_none()
    );
    assert!(
        h.try_conn("node-0", Duration::from_millis(200))
            .await
            .is_none()
    );
    assert_eq!(
        h.listener
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        h.listener
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // The same function with a proper token is served.
    let call = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Serve, NodeState::EMPTY),
    );
    let conn = h.conn("node-0").await;
    conn.bye().await.unwrap();
    assert_eq!(call.await.unwrap().response().outcome, Outcome::Bye);
}

/// The test plays the gateway by hand: after a valid handshake it sends a frame header that
/// announces a 4 GiB body. The function must refuse it from the header, without allocating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_without_allocating_it() {
    let h = Harness::start(Setup::default()).await;
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inv = Invocation::new(
        Command::Serve,
        fake.local_addr().unwrap().to_string(),
        "node-0",
        "tok",
        NodeState::EMPTY,
    )
    .with_idle_tail(SERVE_TAIL);
    let call = h.invoke("node-0", &inv);
    let (stream, _) = tokio::time::timeout(WAIT, fake.accept())
        .await
        .unwrap()
        .unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, Limits::DEFAULT);
    let nonce = [42u8; wire::NONCE_LEN];
    write_frame(&mut wr, &wire::challenge_frame(&nonce))
        .await
        .unwrap();
    let hello_frame = reader.read_frame().await.unwrap().unwrap();
    let hello = Hello::verify(&hello_frame, SECRET.as_bytes(), &nonce)
        .expect("function signs with the secret");
    assert_eq!(&hello.token[..], b"tok");
    write_frame(&mut wr, &wire::welcome_frame()).await.unwrap();

    let pid = h.instance("node-0").unwrap().pid;
    let before = peak_rss(pid);
    let mut head = BytesMut::new();
    Header {
        opcode: Opcode::PutChunk,
        flags: 0,
        meta_len: 27,
        request_id: 1,
        body_len: u32::MAX,
    }
    .encode(&mut head);
    wr.write_all(&head).await.unwrap();
    // Then trickle some of the "body": the function must not be waiting to buffer it.
    let _ = wr.write_all(&vec![0u8; 1 << 20]).await;

    let answer = tokio::time::timeout(WAIT, reader.read_frame())
        .await
        .unwrap()
        .unwrap()
        .expect("an error frame");
    assert!(answer.is_error());
    let e = ErrorBody::decode(answer.meta).unwrap();
    assert_eq!(e.code, ErrorCode::FrameTooLarge);
    assert_eq!(e.detail, [u32::MAX as u64, wire::DEFAULT_MAX_BODY as u64]);
    let resp = call.await.unwrap().response();
    assert_eq!(resp.outcome, Outcome::ProtocolError);
    let after = peak_rss(pid);
    assert!(
        after < before + (32 << 20),
        "peak RSS grew from {before} to {after}"
    );
    assert!(after < 256 << 20, "peak RSS {after}");
}

/// The other direction: a "function" that authenticates properly, then answers a GET with a
/// frame announcing a body over the gateway's limit. The gateway drops the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_an_oversized_response_frame() {
    init_tracing();
    let mut listener =
        CallbackListener::bind("127.0.0.1:0".parse().unwrap(), SECRET.as_bytes().to_vec())
            .await
            .unwrap();
    let addr = listener.local_addr();
    let fake = tokio::spawn(async move {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut r = FrameReader::new(rd, Limits::DEFAULT);
        let nonce = wire::decode_challenge(&r.read_frame().await.unwrap().unwrap()).unwrap();
        let hello = Hello {
            node_id: "node-x".into(),
            instance_id: InstanceId::random(),
            token: Bytes::from_static(b"t"),
            command: Command::Serve,
            view: ViewCheck::Fresh,
            state: NodeState::EMPTY,
            stats: StoreStats::default(),
            invocation_id: String::new(),
            deadline_unix_ms: 0,
        };
        write_frame(
            &mut wr,
            &hello.into_frame(SECRET.as_bytes(), &nonce).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            r.read_frame().await.unwrap().unwrap().opcode,
            Opcode::Welcome
        );
        let req = r.read_frame().await.unwrap().unwrap();
        let mut head = BytesMut::new();
        Header {
            opcode: Opcode::GetChunk,
            flags: wire::FLAG_RESPONSE,
            meta_len: 20,
            request_id: req.request_id,
            body_len: 1 << 30,
        }
        .encode(&mut head);
        wr.write_all(&head).await.unwrap();
        // Keep the socket open until the gateway hangs up.
        let _ = r.read_frame().await;
    });
    let conn = listener.accept().await.unwrap();
    let err = conn
        .get_chunk(&ChunkId::for_object(1, 1, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Closed(reason) if reason.contains("exceeds")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    tokio::time::timeout(WAIT, fake).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_timeout_is_enforced() {
    let mut overrides = BTreeMap::new();
    overrides.insert(
        "sleepy".to_owned(),
        FunctionOverride {
            timeout: Some(Duration::from_millis(1500)),
            ..FunctionOverride::default()
        },
    );
    let h = Harness::start(Setup {
        fault_injection: true,
        overrides,
        ..Setup::default()
    })
    .await;
    let mut inv = h.payload("sleepy", Command::Sleep, NodeState::EMPTY);
    inv.sleep_ms = Some(60_000);
    let t = Instant::now();
    let out = h.invoke("sleepy", &inv).await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    assert_eq!(out.status, 200);
    assert_eq!(out.function_error.as_deref(), Some("Unhandled"));
    let doc: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
    assert_eq!(doc["errorType"], "Sandbox.Timedout");
    assert!(
        h.instance("sleepy").is_none(),
        "a timed-out instance is killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_invokes_answer_202_at_once_and_one_instance_runs_one_invocation_at_a_time() {
    let mut h = Harness::start(Setup::default()).await;
    let t = Instant::now();
    let first = h
        .invoke_event(
            "node-0",
            &h.payload("node-0", Command::Serve, NodeState::EMPTY),
        )
        .await;
    assert_eq!(first.status, 202);
    assert!(first.payload.is_empty());
    let second = h
        .invoke_event(
            "node-0",
            &h.payload("node-0", Command::Serve, NodeState::EMPTY),
        )
        .await;
    assert_eq!(second.status, 202);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "202 comes before the work is done"
    );

    let conn1 = h.conn("node-0").await;
    conn1
        .put_chunk(&ChunkId::for_object(1, 0, 0), random_bytes(1000))
        .await
        .unwrap();
    // The second invocation waits for the first: no second dial-back while the first serves.
    assert!(
        h.try_conn("node-0", Duration::from_millis(700))
            .await
            .is_none()
    );
    let info = h.instance("node-0").unwrap();
    assert_eq!((info.state.as_str(), info.queued), ("busy", 1));
    conn1.bye().await.unwrap();
    let conn2 = h.conn("node-0").await;
    assert_eq!(conn2.instance_id(), conn1.instance_id());
    assert_eq!(
        conn2.hello().state.term,
        1,
        "sees the first invocation's write"
    );
    // A synchronous invoke queues behind it too.
    let sync = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Warmup, NodeState::EMPTY),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sync.is_finished());
    conn2.bye().await.unwrap();
    let conn3 = h.conn("node-0").await;
    conn3.closed().await;
    assert_eq!(sync.await.unwrap().response().outcome, Outcome::Warmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tail_ends_the_invocation_and_the_gateway_is_told() {
    let mut h = Harness::start(Setup::default()).await;
    let inv = h
        .payload("node-0", Command::Serve, NodeState::EMPTY)
        .with_idle_tail(Duration::from_millis(300));
    let call = h.invoke("node-0", &inv);
    let conn = h.conn("node-0").await;
    conn.ping().await.unwrap();
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("function leaves after its idle tail");
    assert!(conn.is_going_away());
    let resp = call.await.unwrap().response();
    assert_eq!(resp.outcome, Outcome::Idle);
    assert!(matches!(conn.ping().await, Err(CallError::Closed(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_connection_is_redialed_within_the_invocation() {
    let mut h = Harness::start(Setup::default()).await;
    let call = h.invoke(
        "node-0",
        &h.payload("node-0", Command::Serve, NodeState::EMPTY),
    );
    let conn = h.conn("node-0").await;
    let id = ChunkId::for_object(4, 0, 0);
    conn.put_chunk(&id, random_bytes(1234)).await.unwrap();
    // Kill the socket under the function (as a gateway restart or a NAT drop would).
    conn.abort();
    let conn2 = h.conn("node-0").await;
    assert_eq!(conn2.instance_id(), conn.instance_id());
    assert_eq!(conn2.hello().state.term, 1);
    assert_eq!(conn2.get_chunk(&id).await.unwrap().len(), 1234);
    conn2.bye().await.unwrap();
    let resp = call.await.unwrap().response();
    assert_eq!(resp.connections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_die_with_the_in_process_emulator() {
    let mut h = Harness::start(Setup::default()).await;
    for n in ["node-0", "node-1"] {
        let call = h.invoke(n, &h.payload(n, Command::Warmup, NodeState::EMPTY));
        h.conn(n).await.closed().await;
        call.await.unwrap().response();
    }
    // node-2 is mid-invocation when the emulator goes away.
    let _busy = h.invoke(
        "node-2",
        &h.payload("node-2", Command::Serve, NodeState::EMPTY),
    );
    let _conn = h.conn("node-2").await;
    let pids: Vec<u32> = h.emu.instances().iter().map(|i| i.pid).collect();
    assert_eq!(pids.len(), 3);
    drop(h); // the emulator's Drop kills them, frozen or not
    wait_until("children killed", WAIT, || pids.iter().all(|p| is_dead(*p))).await;
}

/// kill -9 of the emulator process must not leave function processes behind: a frozen child's
/// orphaned process group gets SIGHUP, a running one sees its parent gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_die_when_the_emulator_process_is_killed() {
    init_tracing();
    let mut listener =
        CallbackListener::bind("127.0.0.1:0".parse().unwrap(), SECRET.as_bytes().to_vec())
            .await
            .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lambda-emulator"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--memory-mb",
            "128",
            "--env",
            "MEMFN_OVERHEAD_MB=64",
        ])
        .arg("--function-binary")
        .arg(function_binary())
        .env("MEMFN_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let endpoint = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("endpoint line");
        if let Some(e) = line.strip_prefix("LAMBDA_EMULATOR_ENDPOINT=") {
            break e.to_owned();
        }
    };
    let client = lambda_client(&endpoint);
    let cb = listener.local_addr().to_string();
    // node-0: warmed up, now frozen. node-1: serving when the emulator dies.
    let warm = Invocation::new(Command::Warmup, cb.clone(), "node-0", "t", NodeState::EMPTY);
    let c = client.clone();
    let w = tokio::spawn(async move {
        invoke_with(
            &c,
            "node-0",
            warm.to_json(),
            aws_sdk_lambda::types::InvocationType::RequestResponse,
        )
        .await
    });
    listener.accept().await.unwrap().closed().await;
    w.await.unwrap().response();
    let serve = Invocation::new(Command::Serve, cb, "node-1", "t", NodeState::EMPTY)
        .with_idle_tail(SERVE_TAIL);
    let c = client.clone();
    let _s = tokio::spawn(async move {
        let _ = c
            .invoke()
            .function_name("node-1")
            .payload(aws_sdk_lambda::primitives::Blob::new(serve.to_json()))
            .send()
            .await;
    });
    let conn = listener.accept().await.unwrap();
    conn.ping().await.unwrap();

    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let (_, body) = http_request(addr, "GET", "/admin/functions").await;
    let infos: Vec<InstanceInfo> = serde_json::from_str(&body).unwrap();
    let frozen = infos.iter().find(|i| i.name == "node-0").unwrap().pid;
    let busy = infos.iter().find(|i| i.name == "node-1").unwrap().pid;
    wait_until("node-0 frozen", WAIT, || proc_state(frozen) == Some('T')).await;
    assert_ne!(proc_state(busy), Some('T'));

    child.start_kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().await.unwrap();
    wait_until("frozen child gone", Duration::from_secs(10), || {
        is_dead(frozen)
    })
    .await;
    wait_until("busy child gone", Duration::from_secs(10), || is_dead(busy)).await;
}
