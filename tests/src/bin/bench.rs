//! `make bench`: GET throughput of 1 MiB, 16 MiB, 100 MiB and 1 GiB objects, measured in one
//! run against baselines measured in the same run:
//!
//! - **hit**: the gateway serving from function memory (embedded emulator, 12 functions, 10+2);
//! - **miss**: the gateway reading from its backing store (and admitting the object);
//! - **direct**: the backing store itself (the embedded s3s-fs), no gateway;
//! - **redis**: Redis (Debian's redis-server) GET of the same bytes, the ElastiCache stand-in;
//! - **loopback**: one TCP stream between two local processes, the ceiling of the machine.
//!
//! Prints a table of MB/s and the hit's ratios to each baseline, writes `bench-get.png` and
//! `bench-get.json` to `--out` (default `target/bench`). Run with the release build.
//!
//! With the test virtualenv (`E2E_VENV`: the aws CLI and s5cmd), whole-client rows follow
//! (`bench-clients.json`): `aws s3 cp` and `s5cmd cp` of one object (`--client-mib`, default
//! 1024) up and down through the gateway against the same client on the backing store directly,
//! the store throttled to an S3-like profile (20 ms to the first byte, 40 MB/s per connection).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use integration_tests::{
    BACKEND_ACCESS_KEY, BACKEND_SECRET_KEY, Backend, GatewayOptions, GatewayProc, free_port,
    payload, s3_client,
};
use plotters::prelude::*;

const MIB: usize = 1 << 20;

struct Row {
    size: usize,
    loopback: f64,
    redis: f64,
    direct: f64,
    miss: f64,
    hit: f64,
}

fn reps(size: usize) -> usize {
    match size {
        s if s <= MIB => 30,
        s if s <= 16 * MIB => 10,
        s if s <= 100 * MIB => 4,
        _ => 2,
    }
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

async fn read_all(c: &Client, bucket: &str, key: &str) -> usize {
    let mut body = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"))
        .body;
    let mut n = 0;
    while let Some(chunk) = body.try_next().await.expect("body") {
        n += chunk.len();
    }
    n
}

/// Loopback ceiling: a child process writes `size` bytes on one TCP connection.
fn loopback(size: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let exe = std::env::current_exe().expect("exe");
    let mut best: f64 = 0.0;
    for _ in 0..reps(size).min(5) {
        let mut child = Command::new(&exe)
            .args(["--loopback-source", &port.to_string(), &size.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn source");
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 4 * MIB];
        let start = Instant::now();
        let mut n = 0;
        loop {
            let r = s.read(&mut buf).expect("read");
            if r == 0 {
                break;
            }
            n += r;
        }
        let t = start.elapsed();
        assert_eq!(n, size);
        let _ = child.wait();
        best = best.max(mbps(size, t));
    }
    best
}

fn loopback_source(port: u16, size: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let block = vec![7u8; 4 * MIB];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        s.write_all(&block[..n]).expect("write");
        left -= n;
    }
}

struct Redis {
    proc: integration_tests::Proc,
    port: u16,
}

fn start_redis() -> Redis {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--proto-max-bulk-len",
        "2gb",
        "--client-query-buffer-limit",
        "2gb",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let proc = integration_tests::Proc::spawn(cmd, "redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not start (is it installed? apt-get install redis-server)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Redis { proc, port }
}

fn redis_get_mbps(r: &Redis, data: &[u8]) -> f64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", r.port)).expect("redis url");
    let mut con = client.get_connection().expect("redis connect");
    redis::cmd("SET")
        .arg("bench")
        .arg(data)
        .query::<()>(&mut con)
        .expect("SET");
    let _: Vec<u8> = redis::cmd("GET").arg("bench").query(&mut con).expect("GET");
    let n = reps(data.len());
    let start = Instant::now();
    for _ in 0..n {
        let v: Vec<u8> = redis::cmd("GET").arg("bench").query(&mut con).expect("GET");
        assert_eq!(v.len(), data.len());
    }
    let t = start.elapsed();
    let _ = &r.proc;
    mbps(data.len() * n, t)
}

/// A chart series: name, colour, and the column it plots.
type Series = (&'static str, RGBColor, fn(&Row) -> f64);

fn chart(rows: &[Row], path: &PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "font registration failed")?;
    const W: u32 = 1000;
    const H: u32 = 560;
    let mut pixels = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = rows
            .iter()
            .flat_map(|r| [r.loopback, r.redis, r.direct, r.miss, r.hit])
            .fold(1.0f64, f64::max);
        let series: [Series; 5] = [
            ("loopback", RGBColor(120, 120, 120), |r| r.loopback),
            ("redis", RGBColor(200, 60, 50), |r| r.redis),
            ("direct s3s-fs", RGBColor(230, 160, 40), |r| r.direct),
            ("gateway miss", RGBColor(90, 140, 200), |r| r.miss),
            ("gateway hit", RGBColor(40, 160, 90), |r| r.hit),
        ];
        let groups = rows.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "GET throughput (MB/s, higher is better)",
                ("sans-serif", 24),
            )
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..groups as f64, (1f64..max * 8.0).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            // Labels at the group centres (x = i + 0.5) only.
            .x_labels(groups * 2 + 1)
            .x_label_formatter(&|x| {
                if (x.fract() - 0.5).abs() > 0.01 {
                    return String::new();
                }
                rows.get(x.floor() as usize)
                    .map(|r| format!("{} MiB", r.size / MIB))
                    .unwrap_or_default()
            })
            .y_desc("MB/s")
            .label_style(("sans-serif", 14))
            .draw()?;
        let w = 0.8 / series.len() as f64;
        for (s, (name, color, get)) in series.iter().enumerate() {
            let bars = rows.iter().enumerate().map(|(i, r)| {
                let x0 = i as f64 + 0.1 + s as f64 * w;
                Rectangle::new([(x0, 1.0), (x0 + w * 0.9, get(r).max(1.0))], color.filled())
            });
            chart.draw_series(bars)?.label(*name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
            });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&pixels)?;
    Ok(())
}

/// Restores a function holding `held_mib` MiB against the S3-like profile (20 ms first byte,
/// 40 MB/s per connection) with each parallelism; prints a table of times and speedups.
fn recovery_bench(held_mib: usize, parallelism: &[usize]) {
    const SECRET: &str = "bench-recovery-secret-0123456789";
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // 12 functions, 10 + 2: every piece has one 1 MiB chunk on each function, so a function
    // holds one chunk per piece: held_mib MiB means held_mib pieces of 10 MiB.
    let object_mib = 50;
    let objects = (held_mib / (object_mib / 10)).max(1);
    let mut rows = Vec::new();
    for &p in parallelism {
        let emu = integration_tests::LambdaEmulator::start("bench_recovery", SECRET);
        let config = format!(
            "[tier]\nrecovery_parallelism = {p}\njournal_capacity = \"8GiB\"\n\n[embedded]\nfirst_byte_latency = \"20ms\"\nbandwidth_per_connection = \"40MB\"\n\n[functions]\ncount = 12\nmemory_mb = {}\n",
            held_mib * 12 / 10 + 512
        );
        let gw = GatewayProc::start_with(
            "bench_recovery",
            &Backend::Embedded,
            GatewayOptions {
                env: vec![
                    ("GATEWAY_LAMBDA_ENDPOINT".into(), emu.endpoint.clone()),
                    ("GATEWAY_FUNCTION_SECRET".into(), SECRET.into()),
                    ("RUST_LOG".into(), "warn,tier=info".into()),
                ],
                config: Some(config),
                ..Default::default()
            },
        );
        let c = gw.client();
        let took = rt.block_on(async {
            c.create_bucket()
                .bucket("recovery")
                .send()
                .await
                .expect("bucket");
            let data = payload(object_mib * MIB, 9);
            for i in 0..objects {
                c.put_object()
                    .bucket("recovery")
                    .key(format!("o{i}"))
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .expect("PUT");
            }
            while gw.metric("gateway_tier_dirty_objects") > 0.0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let endpoint = emu.endpoint.clone();
            tokio::task::spawn_blocking(move || integration_tests::reclaim(&endpoint, "memfn-3"))
                .await
                .expect("reclaim");
            let start = Instant::now();
            // The next read reaches the replacement instance: the loss is detected there.
            read_all(&c, "recovery", "o0").await;
            while gw.metric("gateway_recoveries_total{phase=\"finished\"}") < 1.0 {
                assert!(
                    gw.metric("gateway_recoveries_total{phase=\"failed\"}") == 0.0,
                    "recovery failed"
                );
                assert!(
                    start.elapsed() < Duration::from_secs(1800),
                    "recovery did not finish"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            start.elapsed()
        });
        let restored = gw.metric("gateway_recovered_chunks_total");
        eprintln!("P = {p}: {:.2} s ({restored} chunks)", took.as_secs_f64());
        rows.push((p, took.as_secs_f64()));
        drop(gw);
        drop(emu);
    }
    let base = rows.first().map_or(1.0, |r| r.1);
    println!(
        "Restore of a function holding {held_mib} MiB (S3-like profile: 20 ms first byte, 40 MB/s per connection)\n"
    );
    println!(
        "| P | time (s) | speedup vs P = {} |",
        rows.first().map_or(1, |r| r.0)
    );
    println!("|---:|---:|---:|");
    for (p, t) in &rows {
        println!("| {p} | {t:.2} | {:.2}x |", base / t);
    }
}

/// A gateway on its embedded store, which also listens on a port of its own (returned) for
/// direct reads.
fn embedded_gateway(name: &str, config: Option<String>) -> (GatewayProc, u16) {
    let backend_port = free_port();
    let gw = GatewayProc::start_with(
        name,
        &Backend::Embedded,
        GatewayOptions {
            env: vec![
                (
                    "GATEWAY_EMBEDDED_LISTEN".into(),
                    format!("127.0.0.1:{backend_port}"),
                ),
                ("RUST_LOG".into(), "warn".into()),
            ],
            config,
            ..Default::default()
        },
    );
    (gw, backend_port)
}

/// One whole-client measurement: the same command against the store and the gateway.
struct ClientRow {
    what: String,
    direct: f64,
    gateway: f64,
}

/// Runs a client command with the credentials of its endpoint; its wall time. The page cache
/// is flushed first, so one run's file writes do not slow the next.
fn timed(mut cmd: Command, what: &str) -> Duration {
    let _ = Command::new("sync").status();
    let start = Instant::now();
    let out = cmd
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// `aws s3 cp` and `s5cmd cp` of one `size`-byte object, up and down, direct vs the gateway.
fn clients_bench(venv: &std::path::Path, size: usize, out: &std::path::Path) -> Vec<ClientRow> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (gw, backend_port) = embedded_gateway(
        "bench_clients",
        Some(
            "[tier]\njournal_capacity = \"8GiB\"\n\n[embedded]\nfirst_byte_latency = \"20ms\"\nbandwidth_per_connection = \"40MB\"\n".into(),
        ),
    );
    let direct_url = format!("http://127.0.0.1:{backend_port}");
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src.bin");
    std::fs::write(&src, payload(size, 77)).expect("write");
    let dst = work.path().join("dst.bin");
    rt.block_on(async {
        gw.client()
            .create_bucket()
            .bucket("clients")
            .send()
            .await
            .expect("bucket");
    });
    let endpoint = |direct: bool| {
        if direct {
            (direct_url.clone(), BACKEND_ACCESS_KEY, BACKEND_SECRET_KEY)
        } else {
            (
                gw.endpoint.clone(),
                integration_tests::ACCESS_KEY,
                integration_tests::SECRET_KEY,
            )
        }
    };
    let aws = |direct: bool, args: &[&str]| {
        let (url, ak, sk) = endpoint(direct);
        let mut cmd = Command::new(venv.join("bin/aws"));
        cmd.arg("--endpoint-url")
            .arg(url)
            .args(["s3", "cp", "--only-show-errors"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk);
        cmd
    };
    let s5 = |direct: bool, args: &[&str]| {
        let (url, ak, sk) = endpoint(direct);
        let mut cmd = Command::new(venv.join("bin/s5cmd"));
        cmd.arg("--endpoint-url")
            .arg(url)
            .args(["cp", "-c", "8", "-p", "8"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk);
        cmd
    };
    let wait_clean = || {
        while gw.metric("gateway_tier_dirty_objects") > 0.0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let src_s = src.to_str().expect("path").to_owned();
    let dst_s = dst.to_str().expect("path").to_owned();
    let mut rows = Vec::new();
    let mut row = |what: &str, direct: Duration, gateway: Duration| {
        let r = ClientRow {
            what: what.to_owned(),
            direct: mbps(size, direct),
            gateway: mbps(size, gateway),
        };
        eprintln!(
            "{what}: direct {:.0} MB/s, gateway {:.0} MB/s",
            r.direct, r.gateway
        );
        rows.push(r);
    };
    // Uploads: the gateway acknowledges from the journal and function memory (write-back).
    let up_direct = timed(aws(true, &[&src_s, "s3://clients/aws-direct"]), "aws cp up");
    let up_gw = timed(aws(false, &[&src_s, "s3://clients/aws"]), "aws cp up");
    wait_clean();
    row("aws s3 cp upload", up_direct, up_gw);
    let up_direct = timed(s5(true, &[&src_s, "s3://clients/s5-direct"]), "s5cmd up");
    let up_gw = timed(s5(false, &[&src_s, "s3://clients/s5"]), "s5cmd up");
    wait_clean();
    row("s5cmd cp upload", up_direct, up_gw);
    // Downloads of what the tier holds (placed in memory after the upload).
    while gw.metric("gateway_tier_admitted_total") < 2.0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let from_memory = |before: f64| {
        let got = gw.metric("gateway_tier_bytes_from_tier_total") - before;
        if got < size as f64 {
            eprintln!(
                "warning: only {got} of {size} bytes of the download came from function memory"
            );
        }
    };
    let down_direct = timed(aws(true, &["s3://clients/aws", &dst_s]), "aws cp down");
    let before = gw.metric("gateway_tier_bytes_from_tier_total");
    let down_gw = timed(aws(false, &["s3://clients/aws", &dst_s]), "aws cp down");
    from_memory(before);
    row("aws s3 cp download", down_direct, down_gw);
    let down_direct = timed(s5(true, &["s3://clients/s5", &dst_s]), "s5cmd down");
    let before = gw.metric("gateway_tier_bytes_from_tier_total");
    let down_gw = timed(s5(false, &["s3://clients/s5", &dst_s]), "s5cmd down");
    from_memory(before);
    row("s5cmd cp download", down_direct, down_gw);
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({"what": r.what, "size_mib": size / MIB, "direct": r.direct, "gateway": r.gateway}))
        .collect();
    std::fs::write(
        out.join("bench-clients.json"),
        serde_json::to_vec_pretty(&json).expect("json"),
    )
    .expect("write json");
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--loopback-source") {
        let port = args[2].parse().expect("port");
        let size = args[3].parse().expect("size");
        loopback_source(port, size);
        return;
    }
    if args.get(1).map(String::as_str) == Some("--recovery") {
        let held = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
        recovery_bench(held, &[1, 2, 4, 8]);
        return;
    }
    let mut out = PathBuf::from("target/bench");
    let mut sizes = vec![MIB, 16 * MIB, 100 * MIB, 1024 * MIB];
    let mut client_mib = 1024usize;
    let mut clients_only = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--out" => {
                out = PathBuf::from(&args[i + 1]);
                i += 1;
            }
            "--clients-only" => clients_only = true,
            "--client-mib" => {
                client_mib = args[i + 1].parse().expect("size");
                i += 1;
            }
            "--sizes-mib" => {
                sizes = args[i + 1]
                    .split(',')
                    .map(|s| s.parse::<usize>().expect("size") * MIB)
                    .collect();
                i += 1;
            }
            other => panic!(
                "unknown argument {other}; use --out DIR, --sizes-mib 1,16,100,1024, --client-mib 1024, --clients-only"
            ),
        }
        i += 1;
    }
    std::fs::create_dir_all(&out).expect("out dir");
    if clients_only {
        print_clients(&out, client_mib);
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let redis = start_redis();
    let (gw, backend_port) = embedded_gateway("bench", None);
    let c = gw.client();
    let direct = s3_client(
        &format!("http://127.0.0.1:{backend_port}"),
        BACKEND_ACCESS_KEY,
        BACKEND_SECRET_KEY,
    );
    let mut rows = Vec::new();
    rt.block_on(async {
        c.create_bucket()
            .bucket("bench")
            .send()
            .await
            .expect("bucket");
    });
    for &size in &sizes {
        eprintln!("measuring {} MiB ...", size / MIB);
        let data = payload(size, size as u64);
        let n = reps(size);
        let (hit, miss, direct_mbps) = rt.block_on(async {
            // hit: written through the gateway, so its chunks are in function memory
            c.put_object()
                .bucket("bench")
                .key(format!("hit-{size}"))
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .expect("PUT");
            read_all(&c, "bench", &format!("hit-{size}")).await;
            let start = Instant::now();
            for _ in 0..n {
                assert_eq!(read_all(&c, "bench", &format!("hit-{size}")).await, size);
            }
            let hit = mbps(size * n, start.elapsed());
            // miss: objects written straight to the backing store, read once each
            for r in 0..n {
                direct
                    .put_object()
                    .bucket("bench")
                    .key(format!("miss-{size}-{r}"))
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .expect("direct PUT");
            }
            let start = Instant::now();
            for r in 0..n {
                assert_eq!(
                    read_all(&c, "bench", &format!("miss-{size}-{r}")).await,
                    size
                );
            }
            let miss = mbps(size * n, start.elapsed());
            let start = Instant::now();
            for r in 0..n {
                assert_eq!(
                    read_all(&direct, "bench", &format!("miss-{size}-{r}")).await,
                    size
                );
            }
            let direct_mbps = mbps(size * n, start.elapsed());
            for r in 0..n {
                let _ = c
                    .delete_object()
                    .bucket("bench")
                    .key(format!("miss-{size}-{r}"))
                    .send()
                    .await;
            }
            (hit, miss, direct_mbps)
        });
        let redis_mbps = redis_get_mbps(&redis, &data);
        let lo = loopback(size);
        rows.push(Row {
            size,
            loopback: lo,
            redis: redis_mbps,
            direct: direct_mbps,
            miss,
            hit,
        });
    }
    println!(
        "GET throughput, MB/s (this machine, one run; each column measured in the same run)\n"
    );
    println!(
        "| object | loopback | redis | direct s3s-fs | gateway miss | gateway hit | hit/loopback | hit/redis | hit/direct |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} MiB | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2}x |",
            r.size / MIB,
            r.loopback,
            r.redis,
            r.direct,
            r.miss,
            r.hit,
            r.hit / r.loopback,
            r.hit / r.redis,
            r.hit / r.direct
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"size_mib": r.size / MIB, "loopback": r.loopback, "redis": r.redis,
                "direct": r.direct, "miss": r.miss, "hit": r.hit})
        })
        .collect();
    std::fs::write(
        out.join("bench-get.json"),
        serde_json::to_vec_pretty(&json).expect("json"),
    )
    .expect("write json");
    let png = out.join("bench-get.png");
    match chart(&rows, &png) {
        Ok(()) => println!("\nchart: {}", png.display()),
        Err(e) => eprintln!("chart not written: {e}"),
    }
    drop(gw);
    drop(redis);
    print_clients(&out, client_mib);
}

/// The whole-client rows, when the test virtualenv is there.
fn print_clients(out: &std::path::Path, client_mib: usize) {
    let Some(venv) = integration_tests::venv() else {
        eprintln!("no test virtualenv (E2E_VENV): whole-client rows skipped");
        return;
    };
    if client_mib == 0 {
        return;
    }
    eprintln!("whole clients, {client_mib} MiB ...");
    let rows = clients_bench(&venv, client_mib * MIB, out);
    println!(
        "\nWhole clients, one {client_mib} MiB object, MB/s (the store throttled S3-like: 20 ms to the first byte, 40 MB/s per connection)\n"
    );
    println!("| client | direct | gateway | gateway/direct |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2}x |",
            r.what,
            r.direct,
            r.gateway,
            r.gateway / r.direct
        );
    }
}
