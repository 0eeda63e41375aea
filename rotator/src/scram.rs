//! SCRAM-SHA-256 password verifiers as PostgreSQL stores them
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, RFC 5802 /
//! RFC 7677), computed here so that `ALTER ROLE ... PASSWORD` carries a
//! verifier: the plaintext never reaches the server (nor its statement log),
//! and the literal is base64, so it needs no escaping.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// PostgreSQL's default (`scram_iterations`, SCRAM_DEFAULT_ITERATIONS).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// The password as SCRAM hashes it: SASLprep-normalised, or the raw bytes
/// when normalisation fails, which is what PostgreSQL does.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// Hi(password, salt, i) of RFC 5802: PBKDF2-HMAC-SHA-256, one block.
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let password = normalize(password);
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(&password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(&password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// The verifier for `password` with the given salt.
pub fn verifier_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let salted = salted_password(password, salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// The verifier for `password` with a fresh random salt.
pub fn verifier(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    verifier_with_salt(password, &salt, ITERATIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
        a.iter().zip(b).map(|(x, y)| x ^ y).collect()
    }

    /// RFC 7677 section 3: user "user", password "pencil", 4096 iterations.
    /// The exchange's ClientProof and ServerSignature follow from StoredKey
    /// and ServerKey, so matching them proves the verifier's keys.
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = verifier_with_salt("pencil", &salt, 4096);
        let (head, keys) = v.split_once('$').unwrap().1.split_once('$').unwrap();
        assert_eq!(head, "4096:W22ZaJ0SNY7soEsUEjb6gQ==");
        let (stored, server) = keys.split_once(':').unwrap();
        let stored = B64.decode(stored).unwrap();
        let server = B64.decode(server).unwrap();

        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac(&server, auth_message.as_bytes());
        assert_eq!(
            B64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let client_signature = hmac(&stored, auth_message.as_bytes());
        let client_key = hmac(&salted_password("pencil", &salt, 4096), b"Client Key");
        assert_eq!(
            B64.encode(xor(&client_key, &client_signature)),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(Sha256::digest(client_key).as_slice(), stored.as_slice());
    }

    /// SASLprep maps non-ASCII spaces to U+0020 (RFC 4013), as PostgreSQL
    /// does before hashing; ASCII passwords (every generated one) are as is.
    #[test]
    fn saslprep_applies() {
        let salt = [7u8; 16];
        assert_eq!(
            verifier_with_salt("a\u{00A0}b", &salt, 4096),
            verifier_with_salt("a b", &salt, 4096)
        );
        assert_ne!(
            verifier_with_salt("ab", &salt, 4096),
            verifier_with_salt("a b", &salt, 4096)
        );
    }

    #[test]
    fn random_salt_and_format() {
        let a = verifier("pw");
        let b = verifier("pw");
        assert_ne!(a, b);
        assert!(a.starts_with("SCRAM-SHA-256$4096:"));
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+/=$:-".contains(&c))
        );
    }
}
