//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, without channel
//! binding. The proxy keeps only the salt, StoredKey and ServerKey of each user, computed once at
//! start, never the salted password.
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
