//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, without channel binding.
//!
//! Server side (clients logging in to the proxy): the proxy keeps only the salt, StoredKey and
//! ServerKey of each user, computed once at start, never the salted password.
//!
//! Client side (the proxy logging in to an upstream): the salted password (PBKDF2, 4096 HMACs) is
//! computed once per upstream user and salt and then cached, so that a switch opening hundreds
//! of connections at once spends no CPU on key stretching; the server still proves it knows the
//! password on every connection (its signature is checked).
//!
//! Passwords are used as UTF-8 bytes without SASLprep: identical for ASCII passwords, which is
//! what PostgreSQL clients send after their own normalisation.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Iterations of PBKDF2 used for the proxy's own verifiers (PostgreSQL's default).
pub const ITERATIONS: u32 = 4096;
const NONCE_LEN: usize = 18;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// PBKDF2-HMAC-SHA-256 for one output block (SCRAM's `Hi`).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// What the proxy keeps of one user's password.
#[derive(Clone)]
pub struct Verifier {
    salt: [u8; 16],
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// Derives a verifier with a fresh random 16-byte salt.
    pub fn new(password: &str) -> Verifier {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt[..]);
        Verifier::with_salt(password, salt, ITERATIONS)
    }

    fn with_salt(password: &str, salt: [u8; 16], iterations: u32) -> Verifier {
        let salted = hi(password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Verifier {
            salt,
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// A verifier nobody can satisfy, used for unknown users so that the exchange looks the same
    /// as for a known user with a wrong password.
    pub fn impossible() -> Verifier {
        let mut v = Verifier::with_salt("", [0; 16], 1);
        rand::fill(&mut v.salt[..]);
        rand::fill(&mut v.stored_key[..]);
        v.iterations = ITERATIONS;
        v
    }
}

/// Why an exchange failed. `Mismatch` is a wrong password; the others are protocol errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported by the Ferry proxy (connect with channel_binding=disable or prefer)")]
    ChannelBinding,
    #[error("wrong password")]
    Mismatch,
}

/// One server-side exchange: `client_first` → server-first message, `client_final` → server-final.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    state: Option<(String, String, String)>, // (client-first-bare, server-first, full nonce)
    gs2_header: String,
}

impl ServerExchange {
    pub fn new(verifier: Verifier) -> ServerExchange {
        ServerExchange {
            verifier,
            state: None,
            gs2_header: String::new(),
        }
    }

    /// Takes the client-first message and returns the server-first message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authorization identity is not supported"));
        }
        self.gs2_header = format!("{flag},,");
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let mut nonce = client_nonce.to_owned();
        let mut rng = rand::rng();
        for _ in 0..NONCE_LEN {
            // Printable ASCII except ',' as RFC 5802 requires.
            let mut c = rand::RngExt::random_range(&mut rng, 0x21u8..0x7f);
            if c == b',' {
                c = b'~';
            }
            nonce.push(c as char);
        }
        let server_first = format!("r={nonce},s={},i={}", B64.encode(self.verifier.salt), self.verifier.iterations);
        self.state = Some((bare.to_owned(), server_first.clone(), nonce));
        Ok(server_first.into_bytes())
    }

    /// Takes the client-final message; on a correct proof returns the server-final message
    /// (to send in AuthenticationSASLFinal).
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let (client_first_bare, server_first, nonce) = self.state.take().ok_or(ScramError::Malformed("unexpected message"))?;
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        if cbind != B64.encode(self.gs2_header.as_bytes()) {
            return Err(ScramError::ChannelBinding);
        }
        let r = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if r != nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof has the wrong length"));
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let candidate = sha256(&client_key);
        // Constant-time comparison.
        let diff = candidate
            .iter()
            .zip(self.verifier.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::Mismatch);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// One client-side exchange: `ClientExchange::new` gives the client-first message,
/// `server_first` the client-final one, `server_final` checks the server's signature.
pub struct ClientExchange {
    password: Vec<u8>,
    nonce: String,
    /// (AuthMessage, ServerKey) once the server-first message is in.
    pending: Option<(String, [u8; 32])>,
}

impl std::fmt::Debug for ClientExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientExchange(..)")
    }
}

/// Salted passwords by (SHA-256 of the password, salt, iterations): bounded, process-wide.
type SaltCache = std::collections::HashMap<([u8; 32], Vec<u8>, u32), [u8; 32]>;
static SALTED: std::sync::Mutex<Option<SaltCache>> = std::sync::Mutex::new(None);
const SALT_CACHE_MAX: usize = 256;

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let key = (sha256(password), salt.to_vec(), iterations);
    if let Some(hit) = SALTED.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|c| c.get(&key)) {
        return *hit;
    }
    let salted = hi(password, salt, iterations);
    let mut cache = SALTED.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(Default::default);
    if cache.len() >= SALT_CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, salted);
    salted
}

impl ClientExchange {
    /// Starts an exchange; returns it and the client-first message. PostgreSQL takes the user
    /// from the startup packet, so the SCRAM user name is empty.
    pub fn new(password: &[u8]) -> (ClientExchange, Vec<u8>) {
        let mut rng = rand::rng();
        let nonce: String = (0..24)
            .map(|_| {
                let c = rand::RngExt::random_range(&mut rng, 0x21u8..0x7f);
                if c == b',' {
                    '~'
                } else {
                    c as char
                }
            })
            .collect();
        let first = format!("n,,n=,r={nonce}").into_bytes();
        let x = ClientExchange {
            password: password.to_vec(),
            nonce,
            pending: None,
        };
        (x, first)
    }

    /// Takes the server-first message (`r=...,s=...,i=...`); returns the client-final message.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut attrs = msg.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("the server's nonce does not extend ours"));
        }
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramError::Malformed("no salt"))?;
        let iterations: u32 = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .filter(|i| *i > 0)
            .ok_or(ScramError::Malformed("no iteration count"))?;
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n=,r={},{msg},{without_proof}", self.nonce);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(signature.iter()) {
            *p ^= s;
        }
        self.pending = Some((auth_message, hmac(&salted, &[b"Server Key"])));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server's signature proves it knows the password.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let (auth_message, server_key) = self.pending.take().ok_or(ScramError::Malformed("unexpected message"))?;
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if msg.starts_with("e=") {
            return Err(ScramError::Mismatch);
        }
        let sig = msg
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("no server signature"))?;
        let expected = hmac(&server_key, &[auth_message.as_bytes()]);
        let diff = expected.iter().zip(sig.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if sig.len() != 32 || diff != 0 {
            return Err(ScramError::Mismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(server_pw: &str, client_pw: &str, cb: ChannelBinding) -> Result<(), ScramError> {
        let mut server = ServerExchange::new(Verifier::new(server_pw));
        let mut client = ScramSha256::new(client_pw.as_bytes(), cb);
        let server_first = server.client_first(client.message())?;
        client.update(&server_first).unwrap();
        let server_final = server.client_final(client.message())?;
        client.finish(&server_final).expect("client accepts the server signature");
        Ok(())
    }

    /// Our client against our server, twice (the second from the salted-password cache), and
    /// against a wrong password.
    #[test]
    fn client_exchange_logs_in_and_checks_the_server() {
        let verifier = Verifier::new("s3cret");
        for _ in 0..2 {
            let mut server = ServerExchange::new(verifier.clone());
            let (mut client, first) = ClientExchange::new(b"s3cret");
            let server_first = server.client_first(&first).unwrap();
            let fin = client.server_first(&server_first).unwrap();
            let server_final = server.client_final(&fin).unwrap();
            client.server_final(&server_final).unwrap();
        }
        let mut server = ServerExchange::new(verifier.clone());
        let (mut client, first) = ClientExchange::new(b"guess");
        let server_first = server.client_first(&first).unwrap();
        let fin = client.server_first(&server_first).unwrap();
        assert_eq!(server.client_final(&fin), Err(ScramError::Mismatch));
        // A server that does not know the password cannot fake its signature.
        let mut server = ServerExchange::new(verifier);
        let (mut client, first) = ClientExchange::new(b"s3cret");
        let server_first = server.client_first(&first).unwrap();
        client.server_first(&server_first).unwrap();
        assert_eq!(
            client.server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::Mismatch)
        );
    }

    #[test]
    fn accepts_the_right_password() {
        run("s3cret", "s3cret", ChannelBinding::unrequested()).unwrap();
        run("s3cret", "s3cret", ChannelBinding::unsupported()).unwrap();
    }

    #[test]
    fn refuses_a_wrong_password() {
        assert_eq!(run("s3cret", "guess", ChannelBinding::unrequested()), Err(ScramError::Mismatch));
    }

    #[test]
    fn impossible_verifier_refuses_everything() {
        let mut server = ServerExchange::new(Verifier::impossible());
        let mut client = ScramSha256::new(b"", ChannelBinding::unrequested());
        let first = server.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        assert_eq!(server.client_final(client.message()), Err(ScramError::Mismatch));
    }

    #[test]
    fn refuses_channel_binding_and_garbage() {
        let mut server = ServerExchange::new(Verifier::new("x"));
        assert_eq!(
            server.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        let mut server = ServerExchange::new(Verifier::new("x"));
        assert!(server.client_first(b"garbage").is_err());
        let mut server = ServerExchange::new(Verifier::new("x"));
        server.client_first(b"n,,n=,r=abc").unwrap();
        assert!(server.client_final(b"c=biws,r=wrong,p=AAAA").is_err());
    }

    #[test]
    fn hi_matches_rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = hi(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = hmac(&sha256(&client_key), &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(sig.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(B64.encode(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    }
}
