//! TLS for every connection Ferry makes or accepts.
//!
//! One place builds rustls configurations so that PostgreSQL connections (tokio-postgres and
//! Ferry's own protocol clients), the proxy's listener and upstreams, the HTTP API and the
//! webhook all verify and present certificates the same way:
//!
//! * [`Verify`] is the strength of server verification, libpq's and MySQL's modes mapped onto
//!   three levels: encrypt only (`require`, `REQUIRED`), verify the chain (`verify-ca`,
//!   `VERIFY_CA`), verify the chain and the host name (`verify-full`, `VERIFY_IDENTITY`).
//! * [`Roots`] is where trusted CAs come from: a PEM file, or the operating system's trust store
//!   (libpq's `sslrootcert=system`).
//! * Private key files must be readable by their owner only (libpq's rule): a key anyone on the
//!   host can read is refused with the `chmod` that fixes it.
//!
//! The crypto provider is `ring` (see docs/decisions.md, "TLS everywhere").

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
pub use tokio_rustls;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Encrypt, check nothing (libpq `require`/`prefer`/`allow` without a root certificate,
    /// MySQL `REQUIRED`/`PREFERRED`). Protects against eavesdropping, not impersonation.
    #[default]
    Nothing,
    /// The chain must lead to a trusted CA; any host name (libpq `verify-ca`, MySQL `VERIFY_CA`).
    Chain,
    /// The chain must lead to a trusted CA and name the host connected to (libpq `verify-full`,
    /// MySQL `VERIFY_IDENTITY`, HTTPS).
    Full,
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's trust store (libpq's `sslrootcert=system`).
    System,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
}

/// Everything a client-side TLS configuration depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Server verification.
    pub verify: Verify,
    /// Trusted CAs; required unless `verify` is [`Verify::Nothing`].
    pub roots: Option<Roots>,
    /// Client certificate chain (PEM) to present, with `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM, PKCS#8, PKCS#1 or SEC1), owner-readable only.
    pub key: Option<PathBuf>,
    /// ALPN protocols to offer (`postgresql` for PostgreSQL's direct TLS negotiation).
    pub alpn: Vec<Vec<u8>>,
}

/// A TLS configuration could not be built. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}; check the path and that Ferry's user may read it", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {} holds no {expected} in PEM format; give a PEM file (-----BEGIN ...-----)", path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {} is not usable: {why}", path.display())]
    Invalid { what: &'static str, path: PathBuf, why: String },
    #[error(
        "private key file {} can be read by other users (mode {mode:o}); a key must be readable by its owner only: run chmod 600 {}",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the system's trust store has no usable CA certificate{detail}; give a CA file instead (sslrootcert=/path/ca.crt)")]
    NoSystemRoots { detail: String },
    #[error("a client certificate needs its key: give both the certificate and the key file")]
    CertWithoutKey,
    #[error("{0}")]
    Other(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every certificate of a PEM file.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Invalid {
                what,
                path: path.to_path_buf(),
                why: format!("not a PEM certificate file ({e})"),
            })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

/// Refuses a private key file that others may read (libpq's rule: owner-only, or owned by root
/// and at most group-readable, mode 0640).
pub fn check_private_file(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        what: "private key file",
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.mode() & 0o777;
    let ok = if meta.uid() == 0 { mode & 0o037 == 0 } else { mode & 0o077 == 0 };
    if ok {
        Ok(())
    } else {
        Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        })
    }
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM) after checking its permissions.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_private_file(path)?;
    let pem = read("private key file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key file",
            path: path.to_path_buf(),
            expected: "private key",
        },
        e => TlsError::Invalid {
            what: "private key file",
            path: path.to_path_buf(),
            why: format!("not a PEM private key ({e}); an encrypted key must be decrypted first (openssl pkey -in KEY -out KEY.plain)"),
        },
    })
}

/// The trusted CAs of `roots`.
pub fn root_store(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for cert in load_certs("CA file", path)? {
                store.add(cert).map_err(|e| TlsError::Invalid {
                    what: "CA file",
                    path: path.clone(),
                    why: format!("a certificate in it cannot be used as a trust anchor ({e})"),
                })?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let detail = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(TlsError::NoSystemRoots { detail });
            }
        }
    }
    Ok(store)
}

/// A PEM file holding the system's trusted CAs, for tools that need a file (libpq before 16
/// does not know `sslrootcert=system`). `SSL_CERT_FILE` wins, then the usual distribution paths.
pub fn system_roots_file() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(f);
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
        "/usr/local/share/certs/ca-root-nss.crt",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration for `o`.
pub fn client_config(o: &ClientOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(e.to_string()))?;
    let builder = match (o.verify, &o.roots) {
        (Verify::Nothing, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider.clone()))),
        (v, roots) => {
            let roots = roots.clone().ok_or_else(|| {
                TlsError::Other("verifying the server's certificate needs trusted CAs: give a CA file or use the system's store".into())
            })?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(&roots)?), provider.clone())
                .build()
                .map_err(|e| TlsError::Other(format!("cannot use the trusted CAs: {e}")))?;
            if v == Verify::Chain {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            } else {
                builder.with_webpki_verifier(webpki)
            }
        }
    };
    let mut config = match (&o.cert, &o.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("client certificate file", cert)?;
            let key_der = load_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| TlsError::Invalid {
                what: "client certificate",
                path: cert.clone(),
                why: format!("it does not match the key {} ({e})", key.display()),
            })?
        }
        (Some(_), None) => return Err(TlsError::CertWithoutKey),
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = o.alpn.clone();
    Ok(Arc::new(config))
}

/// A server configuration presenting `cert` (PEM chain) with `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs("certificate file", cert)?;
    let key_der = load_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Invalid {
            what: "certificate",
            path: cert.to_path_buf(),
            why: format!("it does not match the key {} ({e})", key.display()),
        })?;
    Ok(Arc::new(config))
}

/// The name verified against the server's certificate (and sent as SNI for DNS names).
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?} is not a valid TLS server name")))
}

/// Runs the client handshake on `stream` for `host`.
pub async fn connect<S>(config: &Arc<ClientConfig>, host: &str, stream: S) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(server_name(host)?, stream)
        .await
}

/// A person's explanation of a failed handshake, when it is a certificate problem: which check
/// failed and what to change. `None` for other I/O errors.
pub fn explain(err: &(dyn std::error::Error + 'static), host: &str) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(tls, host));
        }
        // An io::Error's `source()` skips the error it wraps; `get_ref()` is that error.
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            cur = Some(inner as &(dyn std::error::Error + 'static));
            continue;
        }
        cur = e.source();
    }
    None
}

fn explain_rustls(e: &rustls::Error, host: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not signed by a trusted CA ({e}); give the CA that signed it (sslrootcert / ssl-ca) or check that you reach the right server"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the server's certificate is not valid for the host name {host:?} ({e}); connect with a name the certificate lists, or use the verify-ca mode if names cannot match"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the server's certificate has expired ({e}); the server needs a new certificate")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the server's certificate is not valid yet ({e}); check the clocks of both machines")
            }
            _ => format!("the server's certificate was rejected ({e})"),
        },
        rustls::Error::AlertReceived(a) => format!(
            "the server refused the TLS handshake ({a:?}); if it asks for a client certificate, give one (sslcert/sslkey, ssl-cert/ssl-key)"
        ),
        other => format!("TLS handshake failed ({other})"),
    }
}

/// Verifies the chain but not the name: libpq's `verify-ca`.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name mismatch means the chain
        // itself was good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate but still checks the handshake's signatures: encryption without
/// authentication, libpq's `require`.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_readable_keys_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ferry-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private_file(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_private_file(&key).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_files_name_the_file() {
        let o = ClientOptions {
            verify: Verify::Full,
            roots: Some(Roots::File("/nonexistent/ca.crt".into())),
            ..Default::default()
        };
        let err = client_config(&o).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.crt") && err.contains("CA file"), "{err}");
    }

    #[test]
    fn ip_and_dns_names() {
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("db.example.com").unwrap(), ServerName::DnsName(_)));
    }
}
