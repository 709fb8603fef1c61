//! Server connections: connect, authenticate as the mapped login, replay session state, cancel.
//!
//! Each of these is bounded by a deadline from [`Timeouts`]; a server connection that carries
//! a client's requests is not (see `timeouts.rs`): keepalives and TCP_USER_TIMEOUT, set on
//! every socket here, end it if the server vanishes.

use crate::codec;
use crate::replay::{Entry, ReplayLog};
use crate::timeouts::{human, Timeouts, TERMINATE_TIMEOUT};
use crate::{Upstream, UpstreamTls};
use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use ferry_tls::tokio_rustls;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// One side of a session: a plain TCP or Unix-socket connection, or TLS over TCP (to a server:
/// the proxy is the TLS client; from a client: the proxy is the TLS server).
///
/// Plain sockets are written with `try_write` (a non-blocking `write`); TLS streams go through
/// rustls, which encrypts into its own buffer and may keep some of it when the socket is full:
/// [`Stream::wants_flush`] says so, and the forwarder then polls `poll_flush` until it is out.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsClient(_) | Stream::TlsServer(_))
    }

    /// Writes what it can without waiting; `WouldBlock` when nothing could be taken.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            tls => {
                // rustls takes the bytes into its buffer and writes what the socket accepts; a
                // full socket registers no wake-up here: the forwarder polls again with its own.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match Pin::new(tls).poll_write(&mut cx, buf) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// TLS: encrypted bytes wait in rustls's buffer for the socket (`poll_flush` sends them).
    pub fn wants_flush(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => false,
            Stream::TlsClient(s) => s.get_ref().1.wants_write(),
            Stream::TlsServer(s) => s.get_ref().1.wants_write(),
        }
    }

    /// Reads at least one byte (0 = end of stream).
    pub async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        reserve(buf);
        self.read_buf(buf).await
    }

    /// Writes all of `buf` (and, for TLS, sends it on).
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(self, buf).await?;
        if self.is_tls() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Connects (no deadline: the callers bound the whole exchange), sets the socket's
    /// keepalives and user timeout, and negotiates TLS as `tls` says (TCP only: PostgreSQL
    /// does not encrypt Unix sockets, and libpq ignores sslmode there too).
    async fn open(host: &str, port: u16, tls: &UpstreamTls, t: &Timeouts, stage: &AtomicU8) -> Result<Stream, OpenError> {
        let stream = Stream::connect(host, port, t).await.map_err(OpenError::Io)?;
        let config = match (&stream, tls.config()) {
            (Stream::Tcp(_), Some(config)) => config.clone(),
            _ => return Ok(stream),
        };
        let Stream::Tcp(mut tcp) = stream else { unreachable!() };
        stage.store(Stage::Tls as u8, Relaxed);
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req).await.map_err(OpenError::Io)?;
        // Exactly one byte: anything the server sent after its 'S' must go through TLS (a
        // man in the middle must not be able to inject cleartext, CVE-2021-23222).
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(OpenError::Io)?;
        match (answer[0], tls) {
            (b'S', _) => match ferry_tls::connect(&config, host, tcp).await {
                Ok(s) => Ok(Stream::TlsClient(Box::new(s))),
                Err(e) => Err(OpenError::Handshake(
                    ferry_tls::explain(&e, host).unwrap_or_else(|| format!("TLS handshake failed: {e}")),
                )),
            },
            (b'N', UpstreamTls::Prefer(_)) => Ok(Stream::Tcp(tcp)),
            (b'N', _) => Err(OpenError::NoTls),
            (other, _) => Err(OpenError::Handshake(format!(
                "unexpected answer {:?} to the SSLRequest (expected 'S' or 'N'): is this a PostgreSQL server?",
                other as char
            ))),
        }
    }

    /// Connects (no deadline: the callers bound the whole exchange) and sets the socket's
    /// keepalives and user timeout.
    async fn connect(host: &str, port: u16, t: &Timeouts) -> io::Result<Stream> {
        if host.starts_with('/') {
            Ok(Stream::Unix(UnixStream::connect(format!("{host}/.s.PGSQL.{port}")).await?))
        } else {
            let s = TcpStream::connect((host, port)).await?;
            s.set_nodelay(true)?;
            t.tune(&s);
            Ok(Stream::Tcp(s))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(_) | Stream::Unix(_) => Poll::Ready(Ok(())),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How opening a server connection failed, before the startup message.
#[derive(Debug)]
enum OpenError {
    Io(io::Error),
    /// The server answered 'N' to the SSLRequest and TLS is required.
    NoTls,
    Handshake(String),
}

impl OpenError {
    fn into_connect(self, upstream: &str, addr: &str) -> ConnectError {
        let (upstream, addr) = (upstream.to_owned(), addr.to_owned());
        match self {
            OpenError::Io(source) => ConnectError::Io { upstream, addr, source },
            OpenError::NoTls => ConnectError::TlsRefused { upstream, addr },
            OpenError::Handshake(detail) => ConnectError::Tls { upstream, addr, detail },
        }
    }

    fn into_io(self) -> io::Error {
        match self {
            OpenError::Io(e) => e,
            OpenError::NoTls => io::Error::other("the server does not accept TLS, which the proxy requires for it"),
            OpenError::Handshake(d) => io::Error::other(d),
        }
    }
}

/// Keeps at least 8 KiB free for the next read, growing in 16 KiB steps.
pub fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(16 * 1024);
    }
}

/// Why a server connection could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream {upstream} has no login for proxy user {user:?}: add one to Upstream::logins")]
    NoLogin { upstream: String, user: String },
    #[error("cannot reach upstream {upstream} at {addr}: {source}")]
    Io { upstream: String, addr: String, source: io::Error },
    #[error("upstream {upstream} at {addr} does not accept TLS (it answered the SSLRequest with 'N'), and the proxy's connections to it require TLS: turn ssl on in that server's postgresql.conf, or connect without requiring TLS")]
    TlsRefused { upstream: String, addr: String },
    #[error("upstream {upstream} at {addr}: {detail}")]
    Tls { upstream: String, addr: String, detail: String },
    #[error("upstream {upstream} refused the connection: {severity} {code}: {message}")]
    Server {
        upstream: String,
        severity: String,
        code: String,
        message: String,
    },
    #[error("upstream {upstream} asks for a password for {user:?} but the login has none: set Login::password")]
    NoPassword { upstream: String, user: String },
    #[error("upstream {upstream} asks for an authentication method the proxy does not support ({method}): use scram-sha-256, md5 or password in pg_hba.conf")]
    Unsupported { upstream: String, method: &'static str },
    #[error("protocol error talking to upstream {upstream}: {detail}")]
    Protocol { upstream: String, detail: String },
    #[error("replaying session state on upstream {upstream} failed at `{statement}`: {code}: {message}")]
    Replay {
        upstream: String,
        statement: String,
        code: String,
        message: String,
    },
    #[error("upstream {upstream} at {addr}: no answer within {} ({limit}) while waiting for {waiting_for}; check that the server is up, reachable from the proxy and not overloaded", human(*within))]
    Timeout {
        upstream: String,
        addr: String,
        /// Which limit expired: "connect timeout" or "replay timeout" (see [`Timeouts`]).
        limit: &'static str,
        within: std::time::Duration,
        /// What the proxy was waiting for when it gave up.
        waiting_for: String,
    },
}

/// How far a connection attempt got, for the timeout's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    Tcp,
    Tls,
    Startup,
    Auth,
    Ready,
}

impl Stage {
    fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::Tcp,
            1 => Stage::Tls,
            2 => Stage::Startup,
            3 => Stage::Auth,
            _ => Stage::Ready,
        }
    }

    fn waiting_for(self) -> &'static str {
        match self {
            Stage::Tcp => "the TCP connection (nothing answers at that address: a firewall dropping packets, or the host is down)",
            Stage::Tls => "the server's answer to the SSLRequest, or the TLS handshake",
            Stage::Startup => "the server's answer to the startup message (connected, but the server says nothing)",
            Stage::Auth => "authentication to complete",
            Stage::Ready => "the server to finish starting the session (ReadyForQuery)",
        }
    }
}

/// Where and how to cancel a server's current query.
#[derive(Debug, Clone)]
pub struct CancelKey {
    pub host: String,
    pub port: u16,
    pub process_id: i32,
    pub secret_key: i32,
    /// Cancel requests go the way the session's connection went (TLS or not).
    pub tls: UpstreamTls,
}

/// A server connection that is authenticated and ready for a query.
#[derive(Debug)]
pub struct Backend {
    pub stream: Stream,
    pub key: CancelKey,
    pub upstream: String,
    /// The server's ParameterStatus messages, raw, as received during startup.
    pub parameter_status: Bytes,
}

impl Backend {
    /// Sends Terminate and drops the connection; a server that does not take the message
    /// within [`TERMINATE_TIMEOUT`] (its socket's buffer full: dead or stuck) just loses the
    /// connection.
    pub async fn terminate(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = tokio::time::timeout(TERMINATE_TIMEOUT, self.stream.write_all(&buf)).await;
    }

    /// `host:port` (or the socket directory) of the server, for messages.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.key.host, self.key.port)
    }
}

pub(crate) struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub(crate) fn error_fields(body: &ErrorResponseBody) -> ErrorFields {
    let mut e = ErrorFields {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
    };
    let mut it = body.fields();
    while let Ok(Some(f)) = it.next() {
        match f.type_() {
            b'S' => e.severity = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'C' => e.code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => e.message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    e
}

/// Reads the next whole message; returns it parsed and raw (type byte and length included).
async fn next_message(stream: &mut Stream, buf: &mut BytesMut, upstream: &str) -> Result<(Message, Bytes), ConnectError> {
    let proto = |detail: String| ConnectError::Protocol {
        upstream: upstream.to_owned(),
        detail,
    };
    loop {
        if buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 {
                return Err(proto(format!("invalid message length {len}")));
            }
            let total = 1 + len as usize;
            if buf.len() >= total {
                let raw = buf.split_to(total).freeze();
                let mut copy = BytesMut::from(&raw[..]);
                let msg = Message::parse(&mut copy)
                    .map_err(|e| proto(e.to_string()))?
                    .ok_or_else(|| proto("truncated message".into()))?;
                return Ok((msg, raw));
            }
        }
        let n = stream.read_some(buf).await.map_err(|e| proto(format!("read failed: {e}")))?;
        if n == 0 {
            return Err(proto("the server closed the connection".into()));
        }
    }
}

/// Opens a connection to `upstream` for proxy user `user`, with the client's startup parameters
/// (`user` and `database` are replaced by the login's), and authenticates. The whole exchange,
/// from name resolution to the first ReadyForQuery, is bounded by `t.connect`; on expiry the
/// error says what the proxy was waiting for.
pub async fn connect(upstream: &Upstream, user: &str, params: &[(String, String)], t: &Timeouts) -> Result<Backend, ConnectError> {
    let stage = AtomicU8::new(Stage::Tcp as u8);
    match tokio::time::timeout(t.connect, connect_unbounded(upstream, user, params, t, &stage)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout {
            upstream: upstream.name.clone(),
            addr: format!("{}:{}", upstream.host, upstream.port),
            limit: "connect timeout",
            within: t.connect,
            waiting_for: Stage::from_u8(stage.load(Relaxed)).waiting_for().to_owned(),
        }),
    }
}

async fn connect_unbounded(
    upstream: &Upstream,
    user: &str,
    params: &[(String, String)],
    t: &Timeouts,
    stage: &AtomicU8,
) -> Result<Backend, ConnectError> {
    let name = upstream.name.clone();
    let login = upstream.logins.get(user).ok_or_else(|| ConnectError::NoLogin {
        upstream: name.clone(),
        user: user.to_owned(),
    })?;
    let addr = format!("{}:{}", upstream.host, upstream.port);
    let mut stream = Stream::open(&upstream.host, upstream.port, &upstream.tls, t, stage)
        .await
        .map_err(|e| e.into_connect(&name, &addr))?;
    let io_err = |source: io::Error| ConnectError::Io {
        upstream: name.clone(),
        addr: addr.clone(),
        source,
    };
    let proto = |detail: &str| ConnectError::Protocol {
        upstream: name.clone(),
        detail: detail.to_owned(),
    };

    let mut out = BytesMut::new();
    let mut startup: Vec<(&str, &str)> = vec![("user", &login.user), ("database", &upstream.dbname)];
    startup.extend(
        params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database" && !k.starts_with("_pq_."))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    frontend::startup_message(startup, &mut out).map_err(io_err)?;
    stage.store(Stage::Startup as u8, Relaxed);
    stream.write_all(&out).await.map_err(io_err)?;

    let password = || {
        login.password.as_deref().ok_or_else(|| ConnectError::NoPassword {
            upstream: name.clone(),
            user: login.user.clone(),
        })
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scram: Option<crate::scram::ClientExchange> = None;
    let mut parameter_status = BytesMut::new();
    let mut key = None;
    loop {
        out.clear();
        let (msg, raw) = next_message(&mut stream, &mut buf, &name).await?;
        if matches!(msg, Message::AuthenticationOk) {
            stage.store(Stage::Ready as u8, Relaxed);
        } else if stage.load(Relaxed) == Stage::Startup as u8 {
            stage.store(Stage::Auth as u8, Relaxed);
        }
        match msg {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut out).map_err(io_err)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(login.user.as_bytes(), password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut out).map_err(io_err)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut found = false;
                while let Some(m) = mechanisms.next().map_err(|e| proto(&e.to_string()))? {
                    found |= m == "SCRAM-SHA-256";
                }
                if !found {
                    return Err(ConnectError::Unsupported {
                        upstream: name.clone(),
                        method: "SASL without SCRAM-SHA-256",
                    });
                }
                let (s, first) = crate::scram::ClientExchange::new(password()?.as_bytes());
                frontend::sasl_initial_response("SCRAM-SHA-256", &first, &mut out).map_err(io_err)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().ok_or_else(|| proto("unexpected SASL continue"))?;
                let fin = s.server_first(body.data()).map_err(|e| proto(&format!("SCRAM: {e}")))?;
                frontend::sasl_response(&fin, &mut out).map_err(io_err)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram.as_mut().ok_or_else(|| proto("unexpected SASL final"))?;
                s.server_final(body.data())
                    .map_err(|e| proto(&format!("SCRAM server signature: {e}")))?;
            }
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) | Message::AuthenticationSspi => {
                return Err(ConnectError::Unsupported {
                    upstream: name.clone(),
                    method: "GSSAPI/SSPI",
                })
            }
            Message::AuthenticationKerberosV5 | Message::AuthenticationScmCredential => {
                return Err(ConnectError::Unsupported {
                    upstream: name.clone(),
                    method: "Kerberos/SCM",
                })
            }
            Message::ParameterStatus(_) => parameter_status.extend_from_slice(&raw),
            Message::BackendKeyData(k) => key = Some((k.process_id(), k.secret_key())),
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => {
                let e = error_fields(&body);
                return Err(ConnectError::Server {
                    upstream: name.clone(),
                    severity: e.severity,
                    code: e.code,
                    message: e.message,
                });
            }
            Message::ReadyForQuery(_) => {
                let (process_id, secret_key) = key.ok_or_else(|| proto("no BackendKeyData before ReadyForQuery"))?;
                return Ok(Backend {
                    stream,
                    key: CancelKey {
                        host: upstream.host.clone(),
                        port: upstream.port,
                        process_id,
                        secret_key,
                        tls: upstream.tls.clone(),
                    },
                    upstream: name,
                    parameter_status: parameter_status.freeze(),
                });
            }
            _ => return Err(proto("unexpected message during startup")),
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io_err)?;
        }
    }
}

/// Redoes a session's recorded state on a fresh connection: SET/PREPARE statements as simple
/// queries, named Parse messages followed by a Sync, all pipelined, then reads every
/// ReadyForQuery. Any error fails the replay; so does no answer within `within`.
pub async fn replay(backend: &mut Backend, log: &ReplayLog, within: std::time::Duration) -> Result<(), ConnectError> {
    if log.is_empty() {
        return Ok(());
    }
    // Steps (one per ReadyForQuery expected) answered, and their number.
    let (done, total) = (AtomicUsize::new(0), AtomicUsize::new(0));
    match tokio::time::timeout(within, replay_unbounded(backend, log, &done, &total)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout {
            upstream: backend.upstream.clone(),
            addr: backend.addr(),
            limit: "replay timeout",
            within,
            waiting_for: format!(
                "the replay of the session's SETs and prepared statements ({} of {} answered)",
                done.load(Relaxed),
                total.load(Relaxed)
            ),
        }),
    }
}

async fn replay_unbounded(backend: &mut Backend, log: &ReplayLog, done: &AtomicUsize, total: &AtomicUsize) -> Result<(), ConnectError> {
    let name = &backend.upstream.clone();
    let mut out = BytesMut::new();
    // What each expected ReadyForQuery closes, to name the statement that failed.
    let mut steps: Vec<String> = Vec::new();
    let mut open_parse: Option<String> = None;
    for e in log.entries() {
        match e {
            Entry::Set { sql, .. } | Entry::Prepare { sql, .. } => {
                if let Some(p) = open_parse.take() {
                    frontend::sync(&mut out);
                    steps.push(p);
                }
                frontend::query(sql, &mut out).map_err(|e| ConnectError::Protocol {
                    upstream: name.clone(),
                    detail: e.to_string(),
                })?;
                steps.push(sql.clone());
            }
            Entry::Parse { name: stmt, raw } => {
                out.extend_from_slice(raw);
                open_parse = Some(format!("prepared statement {stmt:?}"));
            }
        }
    }
    if let Some(p) = open_parse.take() {
        frontend::sync(&mut out);
        steps.push(p);
    }
    total.store(steps.len(), Relaxed);
    backend.stream.write_all(&out).await.map_err(|e| ConnectError::Protocol {
        upstream: name.clone(),
        detail: format!("write failed: {e}"),
    })?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut failed: Option<ErrorFields> = None;
    let mut step = 0;
    while step < steps.len() {
        match next_message(&mut backend.stream, &mut buf, name).await?.0 {
            Message::ErrorResponse(body) if failed.is_none() => failed = Some(error_fields(&body)),
            Message::ReadyForQuery(_) => {
                if let Some(e) = failed.take() {
                    return Err(ConnectError::Replay {
                        upstream: name.clone(),
                        statement: steps[step].clone(),
                        code: e.code,
                        message: e.message,
                    });
                }
                step += 1;
                done.store(step, Relaxed);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sends a CancelRequest for `key` to its server, within `t.cancel` (connect and send), then
/// gives the server as long again to close the connection (it does once it has handled it).
pub async fn cancel(key: &CancelKey, t: &Timeouts) -> io::Result<()> {
    let send = async {
        let stage = AtomicU8::new(0);
        let mut stream = Stream::open(&key.host, key.port, &key.tls, t, &stage)
            .await
            .map_err(OpenError::into_io)?;
        let mut buf = BytesMut::new();
        frontend::cancel_request(key.process_id, key.secret_key, &mut buf);
        stream.write_all(&buf).await?;
        Ok::<_, io::Error>(stream)
    };
    let mut stream = tokio::time::timeout(t.cancel, send).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no answer from {}:{} within {} while sending a cancel request",
                key.host,
                key.port,
                human(t.cancel)
            ),
        )
    })??;
    let mut sink = BytesMut::new();
    let _ = tokio::time::timeout(t.cancel, stream.read_some(&mut sink)).await;
    Ok(())
}

/// Sends the client an ErrorResponse (used for errors the proxy itself raises).
pub fn error_frame(severity: codec::Severity, code: &str, message: &str, hint: Option<&str>) -> BytesMut {
    let mut b = BytesMut::new();
    codec::error_response(&mut b, severity, code, message, hint);
    b
}
