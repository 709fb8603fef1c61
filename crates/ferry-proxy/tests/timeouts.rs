//! The proxy's deadlines against servers that do not answer, with no database needed: a "black
//! hole" that accepts TCP connections and never says a word, a listener whose backlog is full
//! (TCP connect itself never completes), and a fake server that logs in and then goes mute.

use bytes::{Buf, BufMut, BytesMut};
use ferry_proxy::{ConnectError, Login, Proxy, ProxyConfig, ProxyUser, SwitchError, Timeouts, Upstream, UpstreamTls};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USER: &str = "app";
const PASSWORD: &str = "app-pw";
const DB: &str = "shop";
const SHORT: Duration = Duration::from_millis(500);

fn upstream(name: &str, addr: SocketAddr) -> Upstream {
    let mut logins = HashMap::new();
    logins.insert(
        USER.to_owned(),
        Login {
            user: "server-user".into(),
            password: Some("server-pw".into()),
        },
    );
    Upstream {
        name: name.into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        dbname: DB.into(),
        logins,
        tls: UpstreamTls::Disable,
    }
}

async fn proxy(first: Upstream, timeouts: Timeouts) -> Proxy {
    let config = ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![ProxyUser {
            name: USER.into(),
            password: PASSWORD.into(),
        }],
        DB,
    );
    Proxy::start_with(config, first, timeouts).await.expect("proxy starts")
}

fn client_config(p: &Proxy) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(p.local_addr().port())
        .user(USER)
        .password(PASSWORD)
        .dbname(DB)
        .connect_timeout(Duration::from_secs(30));
    c
}

/// Accepts connections and keeps them open without reading or writing anything.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            kept.push(s);
        }
    });
    (addr, task)
}

/// Opening a session through the proxy to a server that accepts the TCP connection and never
/// answers the startup message fails after the connect timeout, and the client is told which
/// upstream, where, and what the proxy waited for.
#[tokio::test]
async fn a_silent_upstream_fails_the_session_within_the_connect_timeout() {
    let (hole, task) = black_hole().await;
    let timeouts = Timeouts {
        connect: SHORT,
        ..Timeouts::default()
    };
    let p = proxy(upstream("source", hole), timeouts).await;
    assert_eq!(p.timeouts(), timeouts);
    let started = Instant::now();
    let err = client_config(&p)
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("the login fails");
    let took = started.elapsed();
    assert!(took >= SHORT, "failed before the connect timeout: {took:?}");
    assert!(
        took < SHORT + Duration::from_secs(4),
        "took {took:?} with a connect timeout of {SHORT:?}"
    );
    let db = err.as_db_error().unwrap_or_else(|| panic!("a server error, got {err}"));
    assert_eq!(db.code().code(), "08001");
    let msg = db.message();
    assert!(msg.contains(&format!("upstream source at {hole}")), "{msg}");
    assert!(msg.contains("no answer within 500 ms (connect timeout)"), "{msg}");
    assert!(msg.contains("the server's answer to the startup message"), "{msg}");
    assert!(!msg.contains("server-pw"), "{msg}");
    assert_eq!(p.stats().sessions, 0);
    p.shutdown().await;
    task.abort();
}

/// A listener whose accept queue is full drops new SYNs, as a firewall that drops packets
/// does: the TCP connect itself never completes, and the error says so.
#[tokio::test]
async fn an_unreachable_upstream_fails_within_the_connect_timeout() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted) until a connect no longer completes.
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect failed: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    if !full {
        eprintln!("this OS does not drop SYNs to a full accept queue; nothing to test here");
        return;
    }
    let timeouts = Timeouts {
        connect: SHORT,
        ..Timeouts::default()
    };
    let p = proxy(upstream("target", addr), timeouts).await;
    let started = Instant::now();
    let err = client_config(&p)
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("the login fails");
    let took = started.elapsed();
    assert!(took >= SHORT && took < SHORT + Duration::from_secs(4), "took {took:?}");
    let msg = err.as_db_error().expect("a server error").message().to_owned();
    assert!(
        msg.contains(&format!("upstream target at {addr}: no answer within 500 ms")),
        "{msg}"
    );
    assert!(msg.contains("the TCP connection"), "{msg}");
    p.shutdown().await;
    drop((fillers, sock));
}

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
}

/// A fake PostgreSQL server: logs anyone in (AuthenticationOk, BackendKeyData, ReadyForQuery)
/// and then, if `answers`, acknowledges every simple query with `SET`; otherwise says nothing
/// more.
async fn fake_server(answers: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut pid = 1000;
        while let Ok((s, _)) = listener.accept().await {
            pid += 1;
            tokio::spawn(serve(s, pid, answers));
        }
    });
    (addr, task)
}

async fn serve(mut s: TcpStream, pid: i32, answers: bool) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    // Startup packet: length, then the rest.
    while buf.len() < 4 || buf.len() < i32::from_be_bytes(buf[..4].try_into().unwrap()) as usize {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    let len = buf.get_i32() as usize;
    buf.advance(len - 4);
    let mut out = BytesMut::new();
    message(&mut out, b'R', &0i32.to_be_bytes());
    message(&mut out, b'K', &[pid.to_be_bytes(), 7i32.to_be_bytes()].concat());
    message(&mut out, b'Z', b"I");
    s.write_all(&out).await?;
    loop {
        while buf.len() >= 5 && buf.len() > i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize {
            let tag = buf.get_u8();
            let len = buf.get_i32() as usize;
            buf.advance(len - 4);
            match tag {
                b'X' => return Ok(()),
                b'Q' if answers => {
                    out.clear();
                    message(&mut out, b'C', b"SET\0");
                    message(&mut out, b'Z', b"I");
                    s.write_all(&out).await?;
                }
                _ => {}
            }
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// A switch bounds each session's new connection by the connect timeout and the replay of its
/// SETs by the replay timeout: a silent new server fails the switch quickly, naming what was
/// waited for, and every session stays (working) where it was.
#[tokio::test]
async fn a_switch_to_a_silent_upstream_fails_within_the_connect_and_replay_timeouts() {
    let (good, good_task) = fake_server(true).await;
    let (mute, mute_task) = fake_server(false).await;
    let (hole, hole_task) = black_hole().await;
    let timeouts = Timeouts {
        connect: SHORT,
        replay: SHORT,
        ..Timeouts::default()
    };
    let p = proxy(upstream("source", good), timeouts).await;
    let (client, conn) = client_config(&p)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("login through the proxy");
    tokio::spawn(conn);
    // Recorded for replay at a switch.
    client.batch_execute("SET search_path = app").await.unwrap();

    let mut hold = p.hold(Duration::from_secs(5)).await.expect("hold");
    // Connected, but the server never answers the startup message.
    let started = Instant::now();
    let err = hold.switch(upstream("target", hole), Duration::from_secs(30)).await.unwrap_err();
    assert!(started.elapsed() < SHORT + Duration::from_secs(4), "took {:?}", started.elapsed());
    match &err {
        SwitchError::Session {
            source:
                ConnectError::Timeout {
                    limit,
                    within,
                    waiting_for,
                    ..
                },
            ..
        } => {
            assert_eq!((*limit, *within), ("connect timeout", SHORT));
            assert!(waiting_for.contains("startup message"), "{waiting_for}");
        }
        other => panic!("expected a connect timeout, got {other}"),
    }
    // Logged in, but the replayed SET is never answered.
    let started = Instant::now();
    let err = hold.switch(upstream("target", mute), Duration::from_secs(30)).await.unwrap_err();
    assert!(
        started.elapsed() < SHORT * 2 + Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    match &err {
        SwitchError::Session {
            source:
                ConnectError::Timeout {
                    limit,
                    within,
                    waiting_for,
                    ..
                },
            ..
        } => {
            assert_eq!((*limit, *within), ("replay timeout", SHORT));
            assert!(waiting_for.contains("(0 of 1 answered)"), "{waiting_for}");
        }
        other => panic!("expected a replay timeout, got {other}"),
    }
    assert!(text.contains(&format!("upstream target at {mute}")), "{text}");
    assert!(text.contains("stays on the old upstream"), "{text}");
    hold.release();

    // Still on the first server, and working.
    assert_eq!(p.stats().upstream, "source");
    tokio::time::timeout(Duration::from_secs(5), client.batch_execute("SET search_path = other"))
        .await
        .expect("the session still answers")
        .unwrap();
    p.shutdown().await;
    for t in [good_task, mute_task, hole_task] {
        t.abort();
    }
}

/// Zero timeouts would fail every connection: refused up front.
#[tokio::test]
async fn zero_timeouts_are_refused() {
    let config = ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![ProxyUser {
            name: USER.into(),
            password: PASSWORD.into(),
        }],
        DB,
    );
    let t = Timeouts {
        connect: Duration::ZERO,
        ..Timeouts::default()
    };
    let err = Proxy::start_with(config, upstream("source", "127.0.0.1:1".parse().unwrap()), t)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("longer than zero"), "{err}");
}
