//! Local Lambda emulator: Invoke API + Runtime API, running `mem-function` instances.
//!
//! Prints `LAMBDA_EMULATOR_ENDPOINT=http://127.0.0.1:PORT` on stdout once it listens.

use anyhow::Context;
use clap::Parser;
use mem_function::emulator::{Emulator, EmulatorConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "lambda-emulator",
    version,
    about = "Local AWS Lambda emulator for mem-function"
)]
struct Cli {
    /// JSON config file (EmulatorConfig); flags override it.
    #[arg(long, env = "LAMBDA_EMULATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (loopback: signatures are not checked).
    #[arg(long, env = "LAMBDA_EMULATOR_BIND")]
    bind: Option<SocketAddr>,
    /// The mem-function binary (default: next to this executable).
    #[arg(long, env = "MEMFN_BINARY")]
    function_binary: Option<PathBuf>,
    /// Default memory size (MB).
    #[arg(long)]
    memory_mb: Option<u32>,
    /// Function timeout, e.g. 900s.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Do not freeze idle instances.
    #[arg(long)]
    no_freeze: bool,
    /// Reclaim instances idle this long, e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    reclaim_after_idle: Option<Duration>,
    /// Never reclaim idle instances.
    #[arg(long, conflicts_with = "reclaim_after_idle")]
    no_reclaim: bool,
    /// Environment for every instance, KEY=VALUE (repeatable). MEMFN_SECRET is taken from this
    /// process's environment when not given here.
    #[arg(long = "env", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Memory of one function, NAME=MB (repeatable).
    #[arg(long = "function", value_parser = parse_kv)]
    functions: Vec<(String, String)>,
    /// Write instance logs to this directory.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mem_function::init_logging("info");
    let cli = Cli::parse();
    let mut config: EmulatorConfig = match &cli.config {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => EmulatorConfig::default(),
    };
    if let Some(b) = cli.bind {
        config.bind = b;
    }
    if cli.function_binary.is_some() {
        config.function_binary = cli.function_binary;
    }
    if let Some(m) = cli.memory_mb {
        config.memory_mb = m;
    }
    if let Some(t) = cli.timeout {
        config.timeout = t;
    }
    if cli.no_freeze {
        config.freeze = false;
    }
    if let Some(r) = cli.reclaim_after_idle {
        config.reclaim_after_idle = Some(r);
    }
    if cli.no_reclaim {
        config.reclaim_after_idle = None;
    }
    if let Ok(secret) = std::env::var("MEMFN_SECRET") {
        config.env.entry("MEMFN_SECRET".into()).or_insert(secret);
    }
    config.env.extend(cli.env);
    for (name, mb) in cli.functions {
        let mb: u32 = mb.parse().with_context(|| format!("memory of {name}"))?;
        config.functions.entry(name).or_default().memory_mb = Some(mb);
    }
    if cli.log_dir.is_some() {
        config.log_dir = cli.log_dir;
    }
    let handle = Emulator::start(config)
        .await
        .context("starting the emulator")?;
    println!("LAMBDA_EMULATOR_ENDPOINT={}", handle.endpoint_url());
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(())
}
