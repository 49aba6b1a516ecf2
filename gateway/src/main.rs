//! The gateway binary: flags and environment → configuration → servers, until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use gateway::cli::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = args.load_config().context("configuration")?;
    gateway::logging::init(&cfg.log);
    let gw = gateway::start(&cfg).await.context("starting the gateway")?;
    print_banner(&cfg, &gw);
    wait_for_signal().await;
    tracing::info!(timeout = ?cfg.server.shutdown_timeout, "shutting down: draining in-flight requests");
    gw.shutdown(cfg.server.shutdown_timeout).await;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(cfg: &gateway::Config, gw: &gateway::Gateway) {
    let endpoint = format!("http://{}", gw.s3_addr);
    let backend = if cfg.embedded_backend() {
        format!(
            "embedded s3s-fs at {} (files in {})",
            gw.backend_url,
            cfg.embedded_dir().display()
        )
    } else {
        gw.backend_url.clone()
    };
    let secret = if cfg.uses_dev_credentials() {
        cfg.auth.secret_key.clone()
    } else {
        "<as configured>".to_owned()
    };
    println!(
        "\nS3 gateway ready\n  endpoint:   {endpoint}\n  admin:      http://{admin} (/healthz /readyz /metrics)\n  backend:    {backend}\n  access key: {ak}\n  secret key: {secret}\n\nTry it:\n  export AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={secret} AWS_DEFAULT_REGION={region}\n  aws --endpoint-url {endpoint} s3 mb s3://demo\n  aws --endpoint-url {endpoint} s3 cp ./README.md s3://demo/README.md\n  aws --endpoint-url {endpoint} s3 ls s3://demo\n",
        admin = gw.admin_addr,
        ak = cfg.auth.access_key,
        region = cfg.server.region,
    );
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
