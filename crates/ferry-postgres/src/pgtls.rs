//! TLS and authentication policy for every PostgreSQL connection Ferry opens: tokio-postgres
//! sessions ([`crate::Endpoint::connect`]) and Ferry's own protocol clients (replication,
//! raw COPY).
//!
//! * [`SslMode`] is libpq's `sslmode`, with libpq's meaning; [`TlsSettings`] adds the rustls
//!   configuration its certificates and verification level call for.
//! * [`AuthPolicy`] decides which authentication requests a client answers. By default a
//!   password is never sent in clear text (`password`) or as an MD5 hash (`md5`, replayable by
//!   anyone who sniffs it) over an unencrypted TCP connection: the user opts in with libpq's
//!   `require_auth=md5` (or `password`). `require_auth` is honoured as libpq 16 defines it.
//! * [`Sniff`] watches the server's first messages on an unencrypted stream (or inside the TLS
//!   stream) and stops the log-in before a password is sent when the policy forbids the method.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ferry_tls::rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Any byte stream to a server (TCP, Unix socket, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed server stream.
pub type BoxedIo = Box<dyn Io>;

/// A plain socket to a server: TCP, or a Unix socket.
#[derive(Debug)]
pub enum PgSocket {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Unix socket.
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for PgSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            PgSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            PgSocket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_flush(cx),
            PgSocket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            PgSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgSocket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PgSocket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            PgSocket::Tcp(s) => s.is_write_vectored(),
            PgSocket::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only if the server refuses plain connections.
    Allow,
    /// TLS if the server offers it (libpq's default).
    Prefer,
    /// TLS or fail; no certificate check unless a root certificate is given.
    Require,
    /// TLS, and the certificate chain must lead to a trusted CA.
    VerifyCa,
    /// TLS, trusted chain, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted CAs of a connection come from, as given (for child processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=system`.
    System,
    /// A PEM file.
    File(std::path::PathBuf),
}

/// A connection's TLS settings, resolved and checked.
#[derive(Clone)]
pub struct TlsSettings {
    /// libpq's sslmode.
    pub mode: SslMode,
    /// `sslnegotiation=direct` (PostgreSQL 17+: TLS from the first byte, ALPN `postgresql`).
    pub direct: bool,
    /// The trusted CAs, when given or found at libpq's default path.
    pub rootcert: Option<RootCert>,
    /// Client certificate and key.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The rustls configuration; `None` only with `sslmode=disable`.
    pub config: Option<Arc<ClientConfig>>,
    /// The name verified against the server's certificate.
    pub server_name: String,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("direct", &self.direct)
            .field("rootcert", &self.rootcert)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl TlsSettings {
    /// Resolves libpq's TLS options: `sslmode` (default `prefer`), `sslrootcert` (default
    /// `~/.postgresql/root.crt` when it exists; `system` for the OS store, which implies
    /// `verify-full`), `sslcert`/`sslkey` (default `~/.postgresql/postgresql.{crt,key}` when
    /// both exist), `sslnegotiation`.
    pub fn resolve(get: impl Fn(&str) -> Option<String>, home: Option<std::path::PathBuf>, server_name: &str) -> Result<Self, String> {
        let explicit_mode = get("sslmode").map(|m| SslMode::parse(&m)).transpose()?;
        let pg_dir = home.map(|h| h.join(".postgresql"));
        let rootcert = match get("sslrootcert") {
            Some(s) if s == "system" => Some(RootCert::System),
            Some(s) => Some(RootCert::File(s.into())),
            None => pg_dir
                .as_ref()
                .map(|d| d.join("root.crt"))
                .filter(|p| p.is_file())
                .map(RootCert::File),
        };
        let mode = match (explicit_mode, &rootcert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return Err(format!(
                    "sslmode={} cannot be used with sslrootcert=system: trusting every public CA only protects you if the host name is checked too; use sslmode=verify-full",
                    m.as_str()
                ))
            }
            (m, _) => m.unwrap_or(SslMode::Prefer),
        };
        let direct = match get("sslnegotiation").as_deref() {
            None | Some("postgres") => false,
            Some("direct") => {
                if mode < SslMode::Require {
                    return Err(format!(
                        "sslnegotiation=direct needs sslmode=require or stricter (it is {})",
                        mode.as_str()
                    ));
                }
                true
            }
            Some(other) => return Err(format!("sslnegotiation={other:?} is not one of postgres, direct")),
        };
        if let Some(v) = get("sslsni") {
            if v != "1" {
                return Err("sslsni=0 is not supported: Ferry always sends the server name".into());
            }
        }
        let client_cert = match (get("sslcert"), get("sslkey")) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            (Some(c), None) => Some((
                std::path::PathBuf::from(&c),
                pg_dir
                    .as_ref()
                    .map(|d| d.join("postgresql.key"))
                    .ok_or("sslcert is given but not sslkey")?,
            )),
            (None, Some(_)) => return Err("sslkey is given but not sslcert: give both".into()),
            (None, None) => pg_dir
                .as_ref()
                .map(|d| (d.join("postgresql.crt"), d.join("postgresql.key")))
                .filter(|(c, k)| c.is_file() && k.is_file()),
        };
        if mode >= SslMode::VerifyCa && rootcert.is_none() {
            return Err(format!(
                "sslmode={} needs the CA that signed the server's certificate: give sslrootcert=/path/to/ca.crt (or sslrootcert=system for a publicly signed certificate), or put it in ~/.postgresql/root.crt",
                mode.as_str()
            ));
        }
        let config = if mode == SslMode::Disable {
            None
        } else {
            let verify = match (mode, &rootcert) {
                (SslMode::VerifyFull, _) => ferry_tls::Verify::Full,
                (_, Some(_)) => ferry_tls::Verify::Chain,
                _ => ferry_tls::Verify::Nothing,
            };
            let opts = ferry_tls::ClientOptions {
                verify,
                roots: rootcert.as_ref().map(|r| match r {
                    RootCert::System => ferry_tls::Roots::System,
                    RootCert::File(p) => ferry_tls::Roots::File(p.clone()),
                }),
                cert: client_cert.as_ref().map(|c| c.0.clone()),
                key: client_cert.as_ref().map(|c| c.1.clone()),
                alpn: if direct { vec![b"postgresql".to_vec()] } else { Vec::new() },
            };
            Some(ferry_tls::client_config(&opts).map_err(|e| e.to_string())?)
        };
        Ok(Self {
            mode,
            direct,
            rootcert,
            client_cert,
            config,
            server_name: server_name.to_string(),
        })
    }
}

/// An authentication method a server may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No authentication (trust, peer, cert).
    None,
    /// Cleartext password.
    Password,
    /// MD5 hash.
    Md5,
    /// SCRAM-SHA-256 (SASL).
    Scram,
    /// GSSAPI / SSPI (Ferry does not support them).
    Gss,
}

impl AuthMethod {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Password => "password",
            Self::Md5 => "md5",
            Self::Scram => "scram-sha-256",
            Self::Gss => "gss",
        }
    }
}

/// Which authentication requests may be answered: libpq's `require_auth`, plus Ferry's rule
/// that passwords are not sent in clear text or MD5 over an unencrypted TCP connection unless
/// `require_auth` names the method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Methods listed in `require_auth` (`None`: not given).
    listed: Option<Vec<String>>,
    /// Whether the list is negated (`!md5,!password`).
    negated: bool,
}

impl AuthPolicy {
    /// Parses libpq's `require_auth`.
    pub fn parse(require_auth: Option<&str>) -> Result<Self, String> {
        let Some(text) = require_auth else {
            return Ok(Self::default());
        };
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        let negated = items.first().is_some_and(|i| i.starts_with('!'));
        let mut listed = Vec::new();
        for i in items {
            let (neg, m) = match i.strip_prefix('!') {
                Some(m) => (true, m),
                None => (false, i),
            };
            if neg != negated {
                return Err("require_auth cannot mix methods and !methods".into());
            }
            if !["password", "md5", "scram-sha-256", "gss", "sspi", "none"].contains(&m) {
                return Err(format!(
                    "require_auth: unknown method {m:?} (password, md5, scram-sha-256, gss, sspi, none)"
                ));
            }
            listed.push(m.to_string());
        }
        Ok(Self {
            listed: Some(listed),
            negated,
        })
    }

    fn names(&self, m: AuthMethod) -> bool {
        self.listed.as_ref().is_some_and(|l| l.iter().any(|x| x == m.name()))
    }

    /// Why the method must not be answered, if it must not.
    pub fn refuse(&self, m: AuthMethod, encrypted: bool, local_socket: bool) -> Option<String> {
        if self.listed.is_some() {
            let allowed = if self.negated { !self.names(m) } else { self.names(m) };
            if !allowed {
                return Some(format!(
                    "the server asked for {} authentication, which require_auth={} does not allow",
                    m.name(),
                    self.listed.as_ref().map(|l| l.join(",")).unwrap_or_default()
                ));
            }
        }
        let weak = matches!(m, AuthMethod::Password | AuthMethod::Md5);
        let opted_in = !self.negated && self.names(m);
        if weak && !encrypted && !local_socket && !opted_in {
            return Some(format!(
                "the server asked for {} authentication over an unencrypted connection, which would expose the password (or a replayable hash) on the network; \
                 use TLS (sslmode=require or stricter, with ssl=on on the server), or switch the server to scram-sha-256 (password_encryption = 'scram-sha-256', then reset the password), \
                 or accept the risk explicitly with require_auth={} in the URL",
                m.name(),
                m.name()
            ));
        }
        None
    }
}

/// Shared verdict of a [`Sniff`]: why the log-in was stopped.
#[derive(Debug, Clone, Default)]
pub struct Verdict(Arc<Mutex<Option<String>>>);

impl Verdict {
    /// The refusal, if the log-in was stopped.
    pub fn refused(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    fn set(&self, why: String) {
        if let Ok(mut g) = self.0.lock() {
            g.get_or_insert(why);
        }
    }
}

#[derive(Debug)]
enum State {
    /// The next byte answers an SSLRequest: `S` (TLS follows: stop) or `N`.
    SslAnswer,
    /// Reading a message header (type, length, and for `R` the auth code).
    Header { buf: [u8; 9], have: usize },
    /// Skipping the rest of a message.
    Skip(usize),
    /// Nothing more to watch.
    Done,
}

/// A stream wrapper that watches the server's log-in messages and stops the log-in, with an
/// I/O error and a [`Verdict`], when [`AuthPolicy`] refuses the method asked for.
pub struct Sniff<S> {
    inner: S,
    state: State,
    policy: AuthPolicy,
    encrypted: bool,
    local: bool,
    asked: bool,
    verdict: Verdict,
}

impl<S> std::fmt::Debug for Sniff<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sniff").field("state", &self.state).finish()
    }
}

impl<S> Sniff<S> {
    /// Watches `inner`. `ssl_answer_first`: an SSLRequest was (or will be) sent, so the first
    /// byte is its answer.
    pub fn new(inner: S, policy: AuthPolicy, ssl_answer_first: bool, encrypted: bool, local: bool, verdict: Verdict) -> Self {
        Self {
            inner,
            state: if ssl_answer_first {
                State::SslAnswer
            } else {
                State::Header { buf: [0; 9], have: 0 }
            },
            policy,
            encrypted,
            local,
            asked: false,
            verdict,
        }
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Feeds bytes read from the server; `Err` stops the log-in.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::SslAnswer => {
                    self.state = if data[0] == b'S' {
                        State::Done
                    } else {
                        State::Header { buf: [0; 9], have: 0 }
                    };
                    data = &data[1..];
                }
                State::Skip(n) => {
                    let k = (*n).min(data.len());
                    *n -= k;
                    data = &data[k..];
                    if *n == 0 {
                        self.state = State::Header { buf: [0; 9], have: 0 };
                    }
                }
                State::Header { buf, have } => {
                    let want = if *have >= 1 && buf[0] == b'R' { 9 } else { 5 };
                    let k = (want - *have).min(data.len());
                    buf[*have..*have + k].copy_from_slice(&data[..k]);
                    *have += k;
                    data = &data[k..];
                    if *have < 5 || (buf[0] == b'R' && *have < 9) {
                        continue;
                    }
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    let t = buf[0];
                    let consumed = if t == b'R' { 8 } else { 4 };
                    let rest = len.saturating_sub(consumed);
                    if t == b'E' {
                        self.state = State::Done;
                        return Ok(());
                    }
                    if t == b'R' {
                        let code = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
                        let method = match code {
                            0 => {
                                if !self.asked {
                                    if let Some(why) = self.policy.refuse(AuthMethod::None, self.encrypted, self.local) {
                                        return Err(why);
                                    }
                                }
                                self.state = State::Done;
                                return Ok(());
                            }
                            3 => Some(AuthMethod::Password),
                            5 => Some(AuthMethod::Md5),
                            10 => Some(AuthMethod::Scram),
                            7..=9 => Some(AuthMethod::Gss),
                            _ => None,
                        };
                        if let Some(m) = method {
                            self.asked = true;
                            if let Some(why) = self.policy.refuse(m, self.encrypted, self.local) {
                                return Err(why);
                            }
                        }
                    }
                    self.state = if rest == 0 {
                        State::Header { buf: [0; 9], have: 0 }
                    } else {
                        State::Skip(rest)
                    };
                }
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if !matches!(this.state, State::Done) {
                let new = buf.filled()[before..].to_vec();
                if let Err(why) = this.feed(&new) {
                    this.verdict.set(why.clone());
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, why)));
                }
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A TLS stream as tokio-postgres wants it, with the log-in watched inside the encryption.
pub struct PgTlsStream(Sniff<ferry_tls::tokio_rustls::client::TlsStream<Sniff<PgSocket>>>);

impl std::fmt::Debug for PgTlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTlsStream")
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

/// tokio-postgres's TLS hook: a rustls handshake with the connection's settings.
pub struct RustlsConnect {
    /// The rustls configuration.
    pub config: Arc<ClientConfig>,
    /// The name to verify.
    pub server_name: String,
    /// Authentication policy inside the encryption.
    pub policy: AuthPolicy,
    /// Shared verdict.
    pub verdict: Verdict,
    /// Handshake failures, explained for people.
    pub handshake_error: Verdict,
}

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustlsConnect").field("server_name", &self.server_name).finish()
    }
}

impl tokio_postgres::tls::TlsConnect<Sniff<PgSocket>> for RustlsConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Sniff<PgSocket>) -> Self::Future {
        Box::pin(async move {
            match ferry_tls::connect(&self.config, &self.server_name, stream).await {
                Ok(tls) => Ok(PgTlsStream(Sniff::new(tls, self.policy, false, true, false, self.verdict))),
                Err(e) => {
                    let why = ferry_tls::explain(&e, &self.server_name).unwrap_or_else(|| format!("TLS handshake failed: {e}"));
                    self.handshake_error.set(why);
                    Err(e)
                }
            }
        })
    }
}

/// Ferry's own protocol clients: negotiates TLS on a fresh stream as `settings` ask
/// (SSLRequest, or direct TLS). Returns the stream to log in on and whether it is encrypted.
pub async fn negotiate(mut io: BoxedIo, settings: &TlsSettings, want_tls: bool) -> Result<(BoxedIo, bool), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(config) = settings.config.as_ref().filter(|_| want_tls) else {
        return Ok((io, false));
    };
    if !settings.direct {
        // SSLRequest: length 8, code 80877103.
        io.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .map_err(|e| e.to_string())?;
        io.flush().await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        io.read_exact(&mut answer).await.map_err(|e| e.to_string())?;
        match answer[0] {
            b'S' => {}
            b'N' => {
                if settings.mode >= SslMode::Require {
                    return Err(format!(
                        "the server does not accept TLS connections, and sslmode={} requires TLS; enable ssl=on on the server, or lower sslmode",
                        settings.mode.as_str()
                    ));
                }
                return Ok((io, false));
            }
            other => return Err(format!("the server answered the TLS request with {other:#04x}, not S or N")),
        }
    }
    let tls = ferry_tls::connect(config, &settings.server_name, io)
        .await
        .map_err(|e| ferry_tls::explain(&e, &settings.server_name).unwrap_or_else(|| format!("TLS handshake failed: {e}")))?;
    Ok((Box::new(tls), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u32) -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend_from_slice(&8u32.to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v
    }

    fn sniff(policy: AuthPolicy, encrypted: bool, bytes: &[u8], chunk: usize) -> Result<(), String> {
        let mut s = Sniff::new((), policy, false, encrypted, false, Verdict::default());
        for c in bytes.chunks(chunk) {
            s.feed(c)?;
        }
        Ok(())
    }

    #[test]
    fn md5_over_plain_tcp_is_refused_unless_opted_in() {
        for chunk in [1, 3, 100] {
            let e = sniff(AuthPolicy::default(), false, &r(5), chunk).unwrap_err();
            assert!(e.contains("md5") && e.contains("require_auth=md5"), "{e}");
            assert!(sniff(AuthPolicy::default(), true, &r(5), chunk).is_ok());
            assert!(sniff(AuthPolicy::parse(Some("md5")).unwrap(), false, &r(5), chunk).is_ok());
            assert!(sniff(AuthPolicy::default(), false, &r(3), chunk).is_err());
        }
        // A NegotiateProtocolVersion before the request is skipped correctly.
        let mut bytes = vec![b'v', 0, 0, 0, 10, 0, 0, 0, 0, 0, 0];
        bytes.extend(r(3));
        assert!(sniff(AuthPolicy::default(), false, &bytes, 2).is_err());
        // SCRAM is fine anywhere.
        assert!(sniff(AuthPolicy::default(), false, &r(10), 4).is_ok());
    }

    #[test]
    fn require_auth_is_libpqs() {
        let p = AuthPolicy::parse(Some("scram-sha-256")).unwrap();
        assert!(p.refuse(AuthMethod::Md5, true, false).is_some());
        assert!(p.refuse(AuthMethod::None, true, false).is_some());
        assert!(p.refuse(AuthMethod::Scram, false, false).is_none());
        let p = AuthPolicy::parse(Some("!password")).unwrap();
        assert!(p.refuse(AuthMethod::Password, true, false).is_some());
        assert!(p.refuse(AuthMethod::None, false, false).is_none());
        assert!(AuthPolicy::parse(Some("md5,!password")).is_err());
        assert!(AuthPolicy::parse(Some("kerberos")).is_err());
        // A local socket may use any method.
        assert!(AuthPolicy::default().refuse(AuthMethod::Password, false, true).is_none());
    }
}
