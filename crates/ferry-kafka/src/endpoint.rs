//! A Kafka cluster and topic prefix, from a URL:
//! `kafka://[user[:password]@]host:port[,host:port...]/PREFIX[?option=value&...]`.
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `schemas` | `true`: JSON with the schema part (JsonConverter's `schemas.enable=true`); `false`: the payload alone | `true` |
//! | `partitions` | partitions of each topic Ferry creates | `1` |
//! | `replication-factor` | replicas of each topic Ferry creates (`-1`: the broker's default) | `-1` |
//! | `retention-ms` | `retention.ms` of each topic Ferry creates | the broker's |
//! | `create-topics` | `false`: topics must exist; a missing one is an error naming it | `true` |
//! | `tls` | `true`: TLS to the brokers | `false` |
//! | `ssl-ca`, `ssl-cert`, `ssl-key` | CA bundle; client certificate and key (PEM files) | the system's CAs |
//! | `sasl-mechanism` | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` (with the URL's user) | none |
//!
//! The password may also come from `FERRY_KAFKA_PASSWORD`. Any other option is an error that
//! names it. Every connection has a connect timeout, TCP keepalives and request deadlines.

use std::time::Duration;

use ferry_core::Secret;
use rdkafka::ClientConfig;

/// A bad Kafka URL: what is wrong, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Kafka URL {url}: {reason}")]
pub struct UrlError {
    /// The URL, password masked.
    pub url: String,
    /// Why.
    pub reason: String,
}

/// Connecting to a broker may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request to a broker without an answer for this long has failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Where events go (or come from).
#[derive(Debug, Clone)]
pub struct KafkaEndpoint {
    /// `host:port` of each bootstrap broker.
    pub brokers: Vec<String>,
    /// Topic prefix (Debezium's `topic.prefix`).
    pub prefix: String,
    /// JSON with the schema part.
    pub schemas: bool,
    /// Partitions of created topics.
    pub partitions: i32,
    /// Replication factor of created topics (-1: broker default).
    pub replication: i32,
    /// `retention.ms` of created topics.
    pub retention_ms: Option<i64>,
    /// Create missing topics.
    pub create_topics: bool,
    /// TLS to the brokers.
    pub tls: bool,
    /// CA bundle file.
    pub ssl_ca: Option<String>,
    /// Client certificate file.
    pub ssl_cert: Option<String>,
    /// Client key file.
    pub ssl_key: Option<String>,
    /// SASL mechanism.
    pub sasl_mechanism: Option<String>,
    /// SASL user.
    pub user: Option<String>,
    /// SASL password.
    pub password: Option<Secret>,
}

/// Whether a URL names Kafka.
pub fn is_kafka_url(url: &str) -> bool {
    url.trim_start().to_ascii_lowercase().starts_with("kafka://")
}

fn percent_decode(s: &str) -> Result<String, String> {
    ferry_core::url::percent_decode(s).map_err(|e| e.to_string())
}

/// The URL with its password masked and its options left out.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let rest = rest.split('?').next().unwrap_or("");
    match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => format!("{scheme}://{rest}"),
    }
}

impl KafkaEndpoint {
    /// Parses a `kafka://` URL; `env_password` is `FERRY_KAFKA_PASSWORD`, if set.
    pub fn parse(url: &str, env_password: Option<String>) -> Result<KafkaEndpoint, UrlError> {
        let shown = redact(url);
        let bad = |reason: &str| UrlError {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        let rest = url
            .trim()
            .strip_prefix("kafka://")
            .or_else(|| url.trim().strip_prefix("KAFKA://"))
            .ok_or_else(|| bad("it must start with kafka://"))?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, hostpath) = match main.rfind('@') {
            Some(at) => (Some(&main[..at]), &main[at + 1..]),
            None => (None, main),
        };
        let (hosts, prefix) = hostpath
            .split_once('/')
            .ok_or_else(|| bad("the topic prefix is missing (kafka://host:port/PREFIX)"))?;
        let prefix = percent_decode(prefix).map_err(|e| bad(&e))?;
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(bad(
                "the topic prefix must be non-empty and use only letters, digits, '.', '_' and '-' (Kafka's topic characters)",
            ));
        }
        let mut brokers = Vec::new();
        for h in hosts.split(',') {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("broker {h:?} has no port (host:port)")))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(&format!("broker {h:?} is not host:port")));
            }
            brokers.push(h.to_string());
        }
        let (user, url_password) = match auth {
            Some(a) => {
                let (u, p) = a.split_once(':').map(|(u, p)| (u, Some(p))).unwrap_or((a, None));
                (
                    Some(percent_decode(u).map_err(|e| bad(&e))?),
                    p.map(percent_decode).transpose().map_err(|e| bad(&e))?.map(Secret::new),
                )
            }
            None => (None, None),
        };
        let mut ep = KafkaEndpoint {
            brokers,
            prefix,
            schemas: true,
            partitions: 1,
            replication: -1,
            retention_ms: None,
            create_topics: true,
            tls: false,
            ssl_ca: None,
            ssl_cert: None,
            ssl_key: None,
            sasl_mechanism: None,
            user,
            password: url_password.or(env_password.map(Secret::new)),
        };
        let flag = |name: &str, v: &str| match v {
            "true" | "1" | "on" => Ok(true),
            "false" | "0" | "off" => Ok(false),
            _ => Err(bad(&format!("option {name}={v:?} must be true or false"))),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').ok_or_else(|| bad(&format!("option {pair:?} has no value")))?;
            let value = percent_decode(value).map_err(|e| bad(&format!("option {name}: {e}")))?;
            match name {
                "schemas" => ep.schemas = flag(name, &value)?,
                "create-topics" => ep.create_topics = flag(name, &value)?,
                "tls" => ep.tls = flag(name, &value)?,
                "partitions" => {
                    ep.partitions = value
                        .parse()
                        .ok()
                        .filter(|n: &i32| *n >= 1)
                        .ok_or_else(|| bad(&format!("partitions={value:?} must be a whole number of at least 1")))?
                }
                "replication-factor" => {
                    ep.replication = value
                        .parse()
                        .ok()
                        .filter(|n: &i32| *n >= 1 || *n == -1)
                        .ok_or_else(|| bad(&format!("replication-factor={value:?} must be at least 1, or -1 for the broker's default")))?
                }
                "retention-ms" => {
                    ep.retention_ms = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|n: &i64| *n >= -1)
                            .ok_or_else(|| bad(&format!("retention-ms={value:?} must be milliseconds, or -1 to keep forever")))?,
                    )
                }
                "ssl-ca" => ep.ssl_ca = Some(value),
                "ssl-cert" => ep.ssl_cert = Some(value),
                "ssl-key" => ep.ssl_key = Some(value),
                "sasl-mechanism" => {
                    let m = value.to_ascii_uppercase();
                    if !matches!(m.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
                        return Err(bad(&format!("sasl-mechanism={value:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")));
                    }
                    ep.sasl_mechanism = Some(m)
                }
                other => {
                    return Err(bad(&format!(
                        "unknown option {other:?} (known: schemas, partitions, replication-factor, retention-ms, create-topics, tls, ssl-ca, ssl-cert, ssl-key, sasl-mechanism)"
                    )))
                }
            }
        }
        if ep.sasl_mechanism.is_some() && (ep.user.is_none() || ep.password.is_none()) {
            return Err(bad(
                "sasl-mechanism needs a user and a password (kafka://user@..., the password in the URL or FERRY_KAFKA_PASSWORD)",
            ));
        }
        if ep.sasl_mechanism.is_none() && ep.user.is_some() {
            return Err(bad(
                "a user is given without sasl-mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
            ));
        }
        if ep.ssl_cert.is_some() != ep.ssl_key.is_some() {
            return Err(bad("ssl-cert and ssl-key go together"));
        }
        if !ep.tls && (ep.ssl_ca.is_some() || ep.ssl_cert.is_some()) {
            return Err(bad("ssl-ca, ssl-cert and ssl-key need tls=true"));
        }
        for f in [&ep.ssl_ca, &ep.ssl_cert, &ep.ssl_key].into_iter().flatten() {
            if let Err(e) = std::fs::metadata(f) {
                return Err(bad(&format!("cannot read {f}: {e}")));
            }
        }
        Ok(ep)
    }

    /// The cluster and prefix for messages (no secret).
    pub fn describe(&self) -> String {
        format!("kafka://{}/{}", self.brokers.join(","), self.prefix)
    }

    /// librdkafka's settings for any client of this cluster: bootstrap, security, and the
    /// deadlines every connection of Ferry has.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("socket.keepalive.enable", "true")
            .set("socket.connection.setup.timeout.ms", CONNECT_TIMEOUT.as_millis().to_string())
            .set("socket.timeout.ms", REQUEST_TIMEOUT.as_millis().to_string())
            .set("request.timeout.ms", REQUEST_TIMEOUT.as_millis().to_string())
            .set("client.id", "ferry")
            .set("log_level", "4");
        let protocol = match (self.tls, self.sasl_mechanism.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(ca) = &self.ssl_ca {
            c.set("ssl.ca.location", ca);
        } else if self.tls {
            c.set("ssl.ca.location", "probe");
        }
        if let (Some(cert), Some(key)) = (&self.ssl_cert, &self.ssl_key) {
            c.set("ssl.certificate.location", cert).set("ssl.key.location", key);
        }
        if let (Some(m), Some(u), Some(p)) = (&self.sasl_mechanism, &self.user, &self.password) {
            c.set("sasl.mechanisms", m).set("sasl.username", u).set("sasl.password", p.expose());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = KafkaEndpoint::parse("kafka://127.0.0.1:9092,h2:9093/dbserver1?schemas=false&partitions=3", None).unwrap();
        assert_eq!(e.brokers, ["127.0.0.1:9092", "h2:9093"]);
        assert_eq!((e.prefix.as_str(), e.schemas, e.partitions), ("dbserver1", false, 3));
        assert_eq!(e.describe(), "kafka://127.0.0.1:9092,h2:9093/dbserver1");
        let err = KafkaEndpoint::parse("kafka://u:p%40ss@h:1/x?compression=zstd", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option \"compression\""), "{err}");
        assert!(!err.contains("p@ss") && !err.contains("p%40ss"), "{err}");
        let e = KafkaEndpoint::parse("kafka://u:p%40ss@h:1/x?sasl-mechanism=scram-sha-512", None).unwrap();
        assert_eq!(e.password.as_ref().map(|p| p.expose()), Some("p@ss"));
        assert!(!format!("{e:?}").contains("p@ss"));
        for (url, needle) in [
            ("kafka://h:1", "prefix is missing"),
            ("kafka://h/x", "no port"),
            ("kafka://h:1/a b", "prefix must"),
            ("kafka://u@h:1/x?sasl-mechanism=PLAIN", "needs a user and a password"),
            ("kafka://h:1/x?ssl-ca=/nonexistent", "need tls=true"),
            (
                "kafka://h:1/x?tls=true&ssl-ca=/nonexistent/ca.pem",
                "cannot read /nonexistent/ca.pem",
            ),
            ("kafka://h:1/x?partitions=0", "at least 1"),
            ("postgres://h:1/x", "must start with kafka://"),
        ] {
            let err = KafkaEndpoint::parse(url, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }
}
