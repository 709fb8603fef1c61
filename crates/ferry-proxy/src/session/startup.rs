//! Startup and authentication of a client session (SCRAM-SHA-256 against the proxy's own
//! users), cancel requests, and the first connection to the upstream.

use super::tracker::Tracker;
use super::Forwarder;
use crate::codec::{self, Scanner, Severity};
use crate::proxy::{lock, Counted, SessionHandle, Shared};
use crate::scram::{ScramError, ServerExchange, Verifier};
use crate::upstream::{self, Stream};
use bytes::{Buf, BytesMut};
use ferry_tls::tokio_rustls::TlsAcceptor;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub(super) async fn write_error(client: &mut Stream, severity: Severity, code: &str, message: &str, hint: Option<&str>) {
    let frame = upstream::error_frame(severity, code, message, hint);
    let _ = tokio::time::timeout(Duration::from_secs(1), client.write_all(&frame)).await;
}

/// Reads one startup-phase packet (length, then body without the length).
async fn read_startup_packet(client: &mut Stream, buf: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    loop {
        if buf.len() >= 4 {
            let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if len < 8 || len as usize > codec::MAX_STARTUP_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("invalid startup packet length {len}"),
                ));
            }
            if buf.len() >= len as usize {
                let mut pkt = buf.split_to(len as usize);
                pkt.advance(4);
                return Ok(Some(pkt));
            }
        }
        if client.read_some(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads one regular message during authentication (type byte and body).
async fn read_auth_message(client: &mut Stream, buf: &mut BytesMut) -> io::Result<Option<(u8, BytesMut)>> {
    loop {
        if buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if !(4..=codec::MAX_STARTUP_LEN as i32).contains(&len) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("invalid message length {len}")));
            }
            let total = 1 + len as usize;
            if buf.len() >= total {
                let mut msg = buf.split_to(total);
                let tag = msg[0];
                msg.advance(5);
                return Ok(Some((tag, msg)));
            }
        }
        if client.read_some(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn is_false(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0" | "")
}

/// What an admitted connection is for.
pub(crate) enum Entry {
    /// Log in; the unauthenticated slot is given back once authentication is over.
    Login(Counted),
    /// Over a limit: answer the startup packet with FATAL 53300 (message, hint).
    Refuse(String, String),
}

/// How long a connection being refused may take to send its startup packet.
const REFUSAL_WINDOW: Duration = Duration::from_secs(2);

/// Answers encryption requests until the client sends something else: 'S' and a TLS handshake
/// to SSLRequest when the proxy has a certificate ('N' otherwise), 'N' to GSSENCRequest; a
/// TLS ClientHello right away is PostgreSQL 17's direct TLS. The next packet stays in `buf`.
/// None: the client went away. An invalid first packet gets FATAL 08P01.
async fn negotiate(shared: &Shared, mut tcp: TcpStream, buf: &mut BytesMut) -> io::Result<Option<Stream>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    // 0x16: a TLS handshake record. As a startup packet's length it would be over 369 MB.
    if first[0] == 0x16 {
        let Some(config) = &shared.tls else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "direct TLS connection (sslnegotiation=direct), but the proxy has no certificate",
            ));
        };
        let tls = TlsAcceptor::from(config.clone()).accept(tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(super::ALPN) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "direct TLS connection without the ALPN protocol \"postgresql\"",
            ));
        }
        return Ok(Some(Stream::TlsServer(Box::new(tls))));
    }
    loop {
        if buf.len() >= 4 {
            let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if len < 8 || len as usize > codec::MAX_STARTUP_LEN {
                let msg = format!("invalid startup packet length {len}");
                let mut client = Stream::Tcp(tcp);
                write_error(&mut client, Severity::Fatal, "08P01", &msg, None).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
            if buf.len() >= 8 {
                let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if code != codec::SSL_REQUEST && code != codec::GSSENC_REQUEST {
                    return Ok(Some(Stream::Tcp(tcp)));
                }
                // Bytes after an encryption request would be taken as encrypted later on
                // (CVE-2021-23214): refuse them.
                if len != 8 || buf.len() > 8 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "data after an encryption request"));
                }
                buf.clear();
                match (&shared.tls, code == codec::SSL_REQUEST) {
                    (Some(config), true) => {
                        tcp.write_all(b"S").await?;
                        let tls = TlsAcceptor::from(config.clone()).accept(tcp).await?;
                        return Ok(Some(Stream::TlsServer(Box::new(tls))));
                    }
                    _ => tcp.write_all(b"N").await?,
                }
                continue;
            }
        }
        reserve_small(buf);
        if tcp.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Room for a startup packet, without growing past it.
fn reserve_small(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
}

/// Startup, authentication, wait for the hold to end, connect to the upstream.
pub(super) async fn setup(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    entry: Entry,
    read: bool,
) -> io::Result<Option<Forwarder>> {
    let mut buf = BytesMut::with_capacity(1024);
    let (slot, refusal) = match entry {
        Entry::Login(slot) => (Some(slot), None),
        Entry::Refuse(message, hint) => (None, Some((message, hint))),
    };
    let within = if refusal.is_some() {
        shared.timeouts.client_startup.min(REFUSAL_WINDOW)
    } else {
        shared.timeouts.client_startup
    };
    let deadline = tokio::time::Instant::now() + within;
    // Before a startup packet there is nobody to answer: a timeout just closes.
    let mut client = match tokio::time::timeout_at(deadline, negotiate(&shared, tcp, &mut buf)).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) | Err(_) => return Ok(None),
        Ok(Err(e)) => return Err(e),
    };
    let authenticated = tokio::time::timeout_at(deadline, authenticate(&shared, &mut client, &mut buf, peer, refusal.as_ref())).await;
    drop(slot);
    let (user, mut params) = match authenticated {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => {
            if e.kind() == io::ErrorKind::InvalidData {
                let msg = format!("invalid frontend message during startup: {e}");
                write_error(&mut client, Severity::Fatal, "08P01", &msg, None).await;
            }
            return Err(e);
        }
        Err(_) => {
            write_error(&mut client, Severity::Fatal, "08006", "authentication timed out", None).await;
            return Ok(None);
        }
    };

    // Wait while a hold is in place; count as "connecting" from the moment we pass, so that a
    // hold starting now waits for us to be registered (at a safe point) first.
    loop {
        shared.connecting.fetch_add(1, SeqCst);
        if !shared.holding.load(SeqCst) {
            break;
        }
        shared.connecting.fetch_sub(1, SeqCst);
        shared.notify_safe();
        tracing::debug!(%peer, user = %user, "new connection waits for the hold to end");
        if !shared.wait_released().await {
            return Ok(None);
        }
    }
    // A read session: read-only wherever it is, placed by its bucket.
    let read_bucket = read.then(|| shared.read.bucket());
    if read {
        params = crate::read::read_only_params(params);
    }
    let routed_gen = shared.read.generation();
    let replica = read_bucket.and_then(|b| shared.read.replica_for(b));
    let on_replica = replica.is_some();
    let upstream = replica.unwrap_or_else(|| lock(&shared.upstream).clone());
    let backend = match upstream::connect(&upstream, &user, &params, &shared.timeouts).await {
        Ok(b) => b,
        Err(e) => {
            shared.connecting.fetch_sub(1, SeqCst);
            shared.notify_safe();
            tracing::warn!(%peer, user = %user, upstream = %upstream.name, error = %e, "cannot connect a session to its upstream");
            write_error(
                &mut client,
                Severity::Fatal,
                "08001",
                &format!("the Ferry proxy could not connect to the database server: {e}"),
                None,
            )
            .await;
            return Ok(None);
        }
    };

    let id = shared.next_id.fetch_add(1, SeqCst) & 0x7fff_ffff;
    let secret: i32 = rand::random();
    let application_name = params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let handle = Arc::new(SessionHandle {
        id,
        secret,
        user: user.clone(),
        params,
        application_name: Mutex::new(application_name),
        safe: AtomicBool::new(true),
        tx_status: AtomicU8::new(b'I'),
        in_flight: AtomicU32::new(0),
        unsynced: AtomicBool::new(false),
        busy_since: AtomicU64::new(shared.now_nanos()),
        backend_pid: AtomicI32::new(backend.key.process_id),
        cancel_key: Mutex::new(backend.key.clone()),
        replay: Mutex::new(Default::default()),
        commands: commands_tx,
        read_bucket,
        upstream: Mutex::new(backend.upstream.clone()),
    });
    lock(&shared.sessions).insert(id, handle.clone());
    shared.connecting.fetch_sub(1, SeqCst);
    shared.notify_safe();

    let mut out = BytesMut::with_capacity(backend.parameter_status.len() + 32);
    out.extend_from_slice(&backend.parameter_status);
    codec::backend_key_data(&mut out, id as i32, secret);
    codec::ready_for_query(&mut out, b'I');
    if let Err(e) = client.write_all(&out).await {
        shared.unregister(id);
        backend.terminate().await;
        return Err(e);
    }
    tracing::debug!(session = id, %peer, user = %user, upstream = %backend.upstream, backend_pid = backend.key.process_id, "session connected");
    let on_replica = on_replica && lock(&shared.upstream).name != backend.upstream;
    Ok(Some(Forwarder {
        shared,
        h: handle,
        client,
        backend,
        cbuf: BytesMut::with_capacity(16 * 1024),
        c_out: 0,
        cscan: Scanner::default(),
        bbuf: BytesMut::with_capacity(16 * 1024),
        b_out: 0,
        bscan: Scanner::default(),
        commands,
        t: Tracker::new(read),
        safe: true,
        routed_gen,
        on_replica,
        counted: 0,
        sampling: None,
        // Anything the client sent right after its auth messages is forwarded first thing.
        pending_client: buf,
    }))
}

/// Reads the startup packet(s) and authenticates the client. Returns the proxy user and the
/// startup parameters, or None when the connection is done (cancel request, refusal).
async fn authenticate(
    shared: &Shared,
    client: &mut Stream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    refusal: Option<&(String, String)>,
) -> io::Result<Option<(String, Vec<(String, String)>)>> {
    let params = loop {
        let Some(mut pkt) = read_startup_packet(client, buf).await? else {
            return Ok(None);
        };
        let code = pkt.get_i32();
        match code {
            codec::SSL_REQUEST | codec::GSSENC_REQUEST => {
                if !buf.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "data after an encryption request"));
                }
                client.write_all(b"N").await?;
            }
            codec::CANCEL_REQUEST => {
                if pkt.len() >= 8 {
                    let (pid, secret) = (pkt.get_i32(), pkt.get_i32());
                    cancel(shared, pid, secret).await;
                }
                return Ok(None);
            }
            v if v >> 16 == 3 && refusal.is_some() => {
                let (message, hint) = refusal.expect("checked");
                write_error(client, Severity::Fatal, "53300", message, Some(hint)).await;
                return Ok(None);
            }
            v if v >> 16 == 3 && shared.require_tls && !client.is_tls() => {
                tracing::debug!(%peer, "client without TLS refused (require_tls)");
                write_error(
                    client,
                    Severity::Fatal,
                    "28000",
                    "this proxy accepts only TLS connections; connect with sslmode=require or stricter",
                    None,
                )
                .await;
                return Ok(None);
            }
            v if v >> 16 == 3 => {
                let params = codec::parse_startup_params(&pkt)?;
                let unknown: Vec<&str> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.as_str())
                    .collect();
                if v & 0xffff != 0 || !unknown.is_empty() {
                    let mut out = BytesMut::new();
                    codec::negotiate_protocol_version(&mut out, 0, &unknown);
                    client.write_all(&out).await?;
                }
                break params;
            }
            v => {
                let msg = format!(
                    "unsupported frontend protocol {}.{}: the Ferry proxy supports 3.0",
                    v >> 16,
                    v & 0xffff
                );
                write_error(client, Severity::Fatal, "0A000", &msg, None).await;
                return Ok(None);
            }
        }
    };
    let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let Some(user) = get("user").filter(|u| !u.is_empty()).map(str::to_owned) else {
        write_error(
            client,
            Severity::Fatal,
            "28000",
            "no PostgreSQL user name specified in startup packet",
            None,
        )
        .await;
        return Ok(None);
    };
    if get("replication").is_some_and(|v| !is_false(v)) {
        let msg = "replication connections are not supported by the Ferry proxy";
        write_error(
            client,
            Severity::Fatal,
            "0A000",
            msg,
            Some("Connect to the database server directly for replication."),
        )
        .await;
        return Ok(None);
    }

    // SCRAM-SHA-256. Unknown users go through the same exchange and fail at the end.
    let verifier = shared.verifiers.get(&user).cloned().unwrap_or_else(Verifier::impossible);
    let mut exchange = ServerExchange::new(verifier);
    let mut out = BytesMut::new();
    codec::auth_sasl(&mut out, &["SCRAM-SHA-256"]);
    client.write_all(&out).await?;
    let Some((tag, body)) = read_auth_message(client, buf).await? else {
        return Ok(None);
    };
    if tag != b'p' {
        return protocol_error(client, format!("expected SASLInitialResponse, got message type {:?}", tag as char)).await;
    }
    let (mechanism, data) = codec::sasl_initial_response(&body)?;
    if mechanism != "SCRAM-SHA-256" {
        return protocol_error(client, format!("unsupported SASL mechanism {mechanism:?}")).await;
    }
    let server_first = match exchange.client_first(data) {
        Ok(m) => m,
        Err(e) => return protocol_error(client, e.to_string()).await,
    };
    out.clear();
    codec::auth_sasl_continue(&mut out, &server_first);
    client.write_all(&out).await?;
    let Some((tag, body)) = read_auth_message(client, buf).await? else {
        return Ok(None);
    };
    if tag != b'p' {
        return protocol_error(client, format!("expected SASLResponse, got message type {:?}", tag as char)).await;
    }
    match exchange.client_final(&body) {
        Ok(server_final) => {
            out.clear();
            codec::auth_sasl_final(&mut out, &server_final);
            codec::auth_ok(&mut out);
            client.write_all(&out).await?;
        }
        Err(ScramError::Mismatch) => {
            tracing::debug!(%peer, user = %user, "password authentication failed");
            write_error(
                client,
                Severity::Fatal,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
                None,
            )
            .await;
            return Ok(None);
        }
        Err(e) => return protocol_error(client, e.to_string()).await,
    }

    let database = get("database").filter(|d| !d.is_empty()).unwrap_or(&user);
    if database != shared.dbname {
        let msg = format!("database \"{database}\" is not served by this Ferry proxy");
        let hint = format!("Connect to database \"{}\".", shared.dbname);
        write_error(client, Severity::Fatal, "3D000", &msg, Some(&hint)).await;
        return Ok(None);
    }
    Ok(Some((user, params)))
}

async fn protocol_error(client: &mut Stream, detail: String) -> io::Result<Option<(String, Vec<(String, String)>)>> {
    write_error(
        client,
        Severity::Fatal,
        "08P01",
        &format!("invalid authentication exchange: {detail}"),
        None,
    )
    .await;
    Ok(None)
}

/// Forwards a CancelRequest for a proxy key to the session's current server.
async fn cancel(shared: &Shared, pid: i32, secret: i32) {
    let key = {
        let sessions = lock(&shared.sessions);
        match sessions.get(&(pid as u32)) {
            Some(s) if s.secret == secret => lock(&s.cancel_key).clone(),
            _ => {
                tracing::debug!(pid, "cancel request with an unknown key ignored");
                return;
            }
        }
    };
    tracing::debug!(session = pid, backend_pid = key.process_id, "forwarding cancel request");
    if let Err(e) = upstream::cancel(&key, &shared.timeouts).await {
        tracing::warn!(session = pid, error = %e, "cancel request could not be forwarded");
    }
}
