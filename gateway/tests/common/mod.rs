//! What the gateway's in-process tests share: a configuration on loopback ports and a client.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// The default configuration with its state in `dir`, listening on free loopback ports.
pub fn config(dir: &std::path::Path) -> gateway::Config {
    let mut cfg = gateway::Config {
        data_dir: dir.to_owned(),
        ..Default::default()
    };
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg
}

/// A client of the gateway `gw` signing with `cfg`'s client keys.
pub fn client(gw: &gateway::Gateway, cfg: &gateway::Config) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{}", gw.s3_addr))
        .credentials_provider(Credentials::new(
            cfg.auth.access_key.clone(),
            cfg.auth.secret_key.clone(),
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
