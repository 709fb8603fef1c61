//! TLS to MySQL/MariaDB: the client's `ssl-mode` and its certificate files, turned into
//! mysql_async's [`SslOpts`](mysql_async::SslOpts), and failed handshakes turned into sentences.
//!
//! | `ssl-mode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `DISABLED` | never | - |
//! | `PREFERRED` (default) | when the server offers TLS, else plain text | no |
//! | `REQUIRED` | always (a server without TLS is an error) | no |
//! | `VERIFY_CA` | always | chain to `ssl-ca` (or the system's CAs) |
//! | `VERIFY_IDENTITY` | always | chain, and the host name of the URL |
//!
//! `VERIFY_CA` needs one more step with mysql_async 0.37: its "skip the host name" switch
//! recognises rustls' old error text only, so a name mismatch would still fail. Ferry therefore
//! opens one probe connection per source (the MySQL greeting, `SSLRequest`, a TLS handshake
//! verified by `ferry-tls`), learns a name the server's certificate lists once the chain is
//! proven good, and has the driver verify the chain against that name. Security is what
//! `VERIFY_CA` promises: every connection's certificate must chain to the trusted CA.

use std::path::PathBuf;
use std::time::Duration;

use ferry_tls::rustls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::MyError;

/// MySQL's `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain text.
    Disabled,
    /// TLS when the server offers it, unverified; plain text otherwise (the mysql client's default).
    #[default]
    Preferred,
    /// TLS, unverified.
    Required,
    /// TLS, the chain verified.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyIdentity,
}

impl SslMode {
    /// Parses a mode: MySQL's names (any case, `-` or `_`), or libpq's (`disable`, `prefer`,
    /// `require`, `verify-ca`, `verify-full`).
    pub fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "disabled" | "disable" => SslMode::Disabled,
            "preferred" | "prefer" => SslMode::Preferred,
            "required" | "require" => SslMode::Required,
            "verify_ca" => SslMode::VerifyCa,
            "verify_identity" | "verify_full" => SslMode::VerifyIdentity,
            _ => {
                return Err(format!(
                    "ssl-mode {s:?} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
                ))
            }
        })
    }

    /// MySQL's name.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disabled => "DISABLED",
            SslMode::Preferred => "PREFERRED",
            SslMode::Required => "REQUIRED",
            SslMode::VerifyCa => "VERIFY_CA",
            SslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }

    /// Whether the server's certificate is verified.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyIdentity)
    }
}

/// The TLS settings of a source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode.
    pub mode: SslMode,
    /// `ssl-ca`: trusted CAs (PEM). Without it, verifying modes use the system's trust store.
    pub ca: Option<PathBuf>,
    /// `ssl-cert`: client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// `ssl-key`: its private key (PEM), readable by its owner only.
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    /// Checks the files now, so that a wrong path or a key others can read is a usage error
    /// before any connection, naming the file and the fix.
    pub fn check_files(&self) -> Result<(), String> {
        if self.mode == SslMode::Disabled {
            return Ok(());
        }
        if let Some(ca) = &self.ca {
            ferry_tls::load_certs("CA file (ssl-ca)", ca).map_err(|e| e.to_string())?;
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                ferry_tls::load_certs("client certificate file (ssl-cert)", cert).map_err(|e| e.to_string())?;
                ferry_tls::load_key(key).map_err(|e| e.to_string())?;
                // A certificate and a key that do not belong together.
                install_provider();
                ferry_tls::client_config(&ferry_tls::ClientOptions {
                    cert: Some(cert.clone()),
                    key: Some(key.clone()),
                    ..Default::default()
                })
                .map_err(|e| format!("ssl-cert and ssl-key: {e}"))?;
            }
            (Some(_), None) => return Err("ssl-cert needs ssl-key: give the client certificate's private key too".into()),
            (None, Some(_)) => return Err("ssl-key needs ssl-cert: give the client certificate too".into()),
            (None, None) => {}
        }
        if self.verifies_without_roots() && ferry_tls::system_roots_file().is_none() {
            return Err(format!(
                "ssl-mode={} verifies the server's certificate, but no ssl-ca is given and the system has no CA bundle; give ssl-ca=/path/ca.pem",
                self.mode.name()
            ));
        }
        Ok(())
    }

    fn verifies_without_roots(&self) -> bool {
        self.mode.verifies() && self.ca.is_none()
    }

    /// The trusted CA file: `ssl-ca`, else the system's bundle.
    pub fn roots(&self) -> Option<PathBuf> {
        self.ca.clone().or_else(ferry_tls::system_roots_file)
    }

    /// mysql_async's options for this mode; `None` for plain text. `name_override` is the
    /// certificate name learnt by [`probe_name`] for `VERIFY_CA`.
    pub fn ssl_opts(&self, name_override: Option<&str>) -> Option<mysql_async::SslOpts> {
        if self.mode == SslMode::Disabled {
            return None;
        }
        let mut o = mysql_async::SslOpts::default();
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            o = o.with_client_identity(Some(mysql_async::ClientIdentity::new(cert.clone().into(), key.clone().into())));
        }
        if self.mode.verifies() {
            if let Some(roots) = self.roots() {
                o = o.with_root_certs(vec![roots.into()]).with_disable_built_in_roots(true);
            }
            if let Some(name) = name_override {
                o = o.with_danger_tls_hostname_override(Some(name.to_string()));
            }
        } else {
            o = o.with_danger_accept_invalid_certs(true);
        }
        Some(o)
    }

    /// The same settings for `ferry-tls` (the `VERIFY_CA` probe verifies like `VERIFY_IDENTITY`
    /// and reads the names from a mismatch).
    fn client_options(&self) -> ferry_tls::ClientOptions {
        ferry_tls::ClientOptions {
            verify: ferry_tls::Verify::Full,
            roots: self.roots().map(ferry_tls::Roots::File),
            cert: self.cert.clone(),
            key: self.key.clone(),
            alpn: Vec::new(),
        }
    }
}

/// Makes sure rustls has a process-wide crypto provider (mysql_async builds its configuration
/// with the default one): ring, as everywhere in Ferry.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The MySQL capability flag "the server speaks TLS".
const CLIENT_SSL: u32 = 0x0800;
const CLIENT_PROTOCOL_41: u32 = 0x0200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_LONG_PASSWORD: u32 = 0x0001;

/// A TLS problem, before mapping onto a [`MyError`].
#[derive(Debug)]
pub enum Failure {
    /// The server's greeting does not offer TLS.
    NoTls,
    /// A handshake or certificate problem: the reason and the fix.
    Tls(String, String),
    /// Anything else (network, protocol): the reason.
    Other(String),
}

/// `VERIFY_CA`: connects once, verifies the server's certificate chain, and returns a name the
/// certificate is valid for (`None` when the URL's host itself is one).
pub async fn probe_name(host: &str, port: u16, settings: &TlsSettings, limit: Duration) -> Result<Option<String>, Failure> {
    let config = ferry_tls::client_config(&settings.client_options()).map_err(|e| Failure::Other(e.to_string()))?;
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| Failure::Other(format!("TCP connect failed: {e}")))?;
        let mut header = [0u8; 4];
        tcp.read_exact(&mut header)
            .await
            .map_err(|e| Failure::Other(format!("no greeting from the server: {e}")))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        let mut greeting = vec![0u8; len];
        tcp.read_exact(&mut greeting)
            .await
            .map_err(|e| Failure::Other(format!("the server's greeting was cut short: {e}")))?;
        if greeting.first() == Some(&0xff) {
            let text = String::from_utf8_lossy(greeting.get(3..).unwrap_or_default()).into_owned();
            return Err(Failure::Other(format!("the server refused the connection: {text}")));
        }
        // protocol version, server version (NUL-terminated), thread id (4), scramble (8),
        // filler (1), capability flags (lower 2 bytes).
        let nul = greeting
            .iter()
            .skip(1)
            .position(|b| *b == 0)
            .ok_or_else(|| Failure::Other("the server's greeting is not MySQL's".into()))?;
        let at = 1 + nul + 1 + 4 + 8 + 1;
        let caps = greeting
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
            .ok_or_else(|| Failure::Other("the server's greeting is not MySQL's".into()))?;
        if caps & CLIENT_SSL == 0 {
            return Err(Failure::NoTls);
        }
        let mut request = Vec::with_capacity(36);
        request.extend_from_slice(&[32, 0, 0, 1]);
        request.extend_from_slice(&(CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_SECURE_CONNECTION).to_le_bytes());
        request.extend_from_slice(&(16u32 << 20).to_le_bytes());
        request.push(45); // utf8mb4_general_ci
        request.extend_from_slice(&[0u8; 23]);
        tcp.write_all(&request)
            .await
            .map_err(|e| Failure::Other(format!("sending the TLS request failed: {e}")))?;
        match ferry_tls::connect(&config, host, tcp).await {
            Ok(mut tls) => {
                let _ = tls.shutdown().await;
                Ok(None)
            }
            Err(e) => match rustls_error(&e) {
                Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { presented, .. })) => {
                    usable_name(presented).map(Some).ok_or_else(|| {
                        Failure::Tls(
                            "the server's certificate lists no DNS name or IP address (subjectAltName), so its chain cannot be checked on its own by Ferry's MySQL driver".into(),
                            "give the server a certificate with a subjectAltName, or use ssl-mode=REQUIRED".into(),
                        )
                    })
                }
                Some(_) => Err(explain(&e, host, settings)),
                None => Err(Failure::Other(format!("TLS handshake failed: {e}"))),
            },
        }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Other(format!(
            "no TLS handshake within {} while checking the server's certificate",
            ferry_core::human_duration(limit)
        ))),
    }
}

/// A name from rustls' list of a certificate's names (`DnsName("db.example")`,
/// `IpAddress(10.0.0.1)`), usable as a server name: a wildcard's `*` becomes a label.
fn usable_name(presented: &[String]) -> Option<String> {
    presented.iter().find_map(|p| {
        if let Some(dns) = p.strip_prefix("DnsName(\"").and_then(|r| r.strip_suffix("\")")) {
            let name = match dns.strip_prefix("*.") {
                Some(rest) => format!("ferry-verify-ca.{rest}"),
                None => dns.to_string(),
            };
            rustls::pki_types::ServerName::try_from(name.clone()).ok().map(|_| name)
        } else {
            let ip = p.strip_prefix("IpAddress(").and_then(|r| r.strip_suffix(')'))?;
            ip.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
        }
    })
}

/// The rustls error inside an error chain; `io::Error` hides its payload from `source()`, so
/// each `io::Error` is opened too.
pub fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if let Some(tls) = rustls_error(inner) {
                return Some(tls);
            }
        }
        cur = e.source();
    }
    None
}

/// A certificate or handshake problem in words: what failed, and the fix.
pub fn explain(err: &(dyn std::error::Error + 'static), host: &str, settings: &TlsSettings) -> Failure {
    let Some(tls) = rustls_error(err) else {
        return Failure::Other(err.to_string());
    };
    let ca = match &settings.ca {
        Some(ca) => format!("the CA in {} (ssl-ca)", ca.display()),
        None => "the system's trusted CAs (no ssl-ca given)".to_string(),
    };
    use rustls::CertificateError as C;
    match tls {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => Failure::Tls(
            format!("the server's certificate is not signed by {ca} ({tls})"),
            "give the CA that signed the server's certificate with ssl-ca=/path/ca.pem, and check that you reach the right server".into(),
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => Failure::Tls(
            format!("the server's certificate is not valid for the host name {host:?} ({tls})"),
            "connect with a host name the certificate lists, or use ssl-mode=VERIFY_CA, which checks the chain only".into(),
        ),
        _ => Failure::Tls(
            ferry_tls::explain(tls, host).unwrap_or_else(|| tls.to_string()),
            "check the server's TLS setup and the ssl-ca, ssl-cert and ssl-key options".into(),
        ),
    }
}

/// Whether the error is mysql_async's "the server does not speak TLS".
pub fn is_no_tls(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
}

/// The error of a server without TLS for a mode that needs it.
pub fn no_tls_error(what: &str, mode: SslMode) -> MyError {
    MyError::new(
        what,
        &format!("the server does not offer TLS, and ssl-mode={} requires an encrypted connection", mode.name()),
        "enable TLS on the server (ssl_cert and ssl_key in its configuration, then restart it), or, on a network you trust, use ssl-mode=PREFERRED or DISABLED",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_aliases() {
        for (s, m) in [
            ("DISABLED", SslMode::Disabled),
            ("disable", SslMode::Disabled),
            ("Preferred", SslMode::Preferred),
            ("REQUIRED", SslMode::Required),
            ("require", SslMode::Required),
            ("verify_ca", SslMode::VerifyCa),
            ("VERIFY-CA", SslMode::VerifyCa),
            ("VERIFY_IDENTITY", SslMode::VerifyIdentity),
            ("verify-full", SslMode::VerifyIdentity),
        ] {
            assert_eq!(SslMode::parse(s).unwrap(), m, "{s}");
        }
        let err = SslMode::parse("yes").unwrap_err();
        assert!(err.contains("\"yes\"") && err.contains("VERIFY_IDENTITY"), "{err}");
    }

    #[test]
    fn names_from_certificates() {
        assert_eq!(usable_name(&["DnsName(\"db.example\")".into()]).as_deref(), Some("db.example"));
        assert_eq!(usable_name(&["IpAddress(10.0.0.1)".into()]).as_deref(), Some("10.0.0.1"));
        assert_eq!(
            usable_name(&["DirectoryName".into(), "DnsName(\"*.example.org\")".into()]).as_deref(),
            Some("ferry-verify-ca.example.org")
        );
        assert_eq!(usable_name(&[]), None);
    }

    #[test]
    fn ssl_opts_per_mode() {
        let s = |mode| TlsSettings {
            mode,
            ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(s(SslMode::Disabled).ssl_opts(None).is_none());
        let o = s(SslMode::Required).ssl_opts(None).unwrap();
        assert!(o.accept_invalid_certs());
        let o = s(SslMode::VerifyIdentity).ssl_opts(None).unwrap();
        assert!(!o.accept_invalid_certs() && !o.skip_domain_validation() && o.disable_built_in_roots());
        assert_eq!(o.root_certs().len(), 1);
        let o = s(SslMode::VerifyCa).ssl_opts(Some("db.example")).unwrap();
        assert_eq!(o.tls_hostname_override(), Some("db.example"));
        assert!(!o.accept_invalid_certs());
    }
}
