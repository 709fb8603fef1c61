//! Runs the proxy in front of one server, for manual tests and benchmarks.
//!
//! `serve LISTEN UPSTREAM_URL DBNAME SECONDS`: clients log in as user `app`, password `app-pw`
//! (or `FERRY_PROXY_PASSWORD`), and are sent to DBNAME on the server of UPSTREAM_URL
//! (postgres://user:password@host:port/...) as that URL's user. Stops after SECONDS.
//! `FERRY_PROXY_THREADS` sets the number of runtime threads (1 = current_thread runtime).
//! `FERRY_PROXY_TLS_CERT` and `FERRY_PROXY_TLS_KEY` (PEM files) make it accept TLS from clients.

use ferry_proxy::{Login, Proxy, ProxyConfig, ProxyUser, Upstream, UpstreamTls};
use std::collections::HashMap;
use std::time::Duration;

fn main() {
    // FERRY_PROXY_THREADS=1 runs everything on one thread (tokio current_thread runtime).
    let threads: usize = std::env::var("FERRY_PROXY_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b.enable_all().build()
    };
    runtime.expect("tokio runtime").block_on(serve());
}

async fn serve() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: serve LISTEN UPSTREAM_URL DBNAME SECONDS");
        std::process::exit(2);
    }
    let url: tokio_postgres::Config = args[2].parse().expect("upstream URL");
    let host = match &url.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let password = url.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    let mut logins = HashMap::new();
    logins.insert(
        "app".to_owned(),
        Login {
            user: url.get_user().unwrap_or("postgres").to_owned(),
            password,
        },
    );
    let upstream = Upstream {
        name: "upstream".into(),
        host,
        port: url.get_ports().first().copied().unwrap_or(5432),
        dbname: args[3].clone(),
        logins,
        tls: UpstreamTls::Disable,
    };
    let config = ProxyConfig::new(
        args[1].parse().expect("listen address"),
        vec![ProxyUser {
            name: "app".into(),
            password: std::env::var("FERRY_PROXY_PASSWORD").unwrap_or_else(|_| "app-pw".into()),
        }],
        args[3].clone(),
    );
    let mut config = config;
    if let (Ok(cert), Ok(key)) = (std::env::var("FERRY_PROXY_TLS_CERT"), std::env::var("FERRY_PROXY_TLS_KEY")) {
        config.tls = Some(ferry_tls::server_config(cert.as_ref(), key.as_ref()).expect("certificate and key"));
    }
    let proxy = Proxy::start(config, upstream).await.expect("start");
    println!("listening on {}", proxy.local_addr());
    tokio::time::sleep(Duration::from_secs(args[4].parse().expect("seconds"))).await;
    proxy.shutdown().await;
}
