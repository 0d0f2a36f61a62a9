//! Credentials, in one place for both binaries: an API key is presented as
//! `<tenant_id>:<secret>` and only the SHA-256 of the secret is stored; a
//! signing key is an Ed25519 public key, stored as base64 of its 32 bytes.

use sha2::{Digest, Sha256};

/// SHA-256 of an API key's secret (compared in constant time by the gateway).
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Hex SHA-256 of a secret: the form `auth.keys[].secret_sha256` and
/// `api_keys.secret_sha256` take.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(secret_digest(secret))
}

/// A new random secret: 32 bytes from the OS, hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Why a text is not an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PublicKeyError(String);

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Reads an Ed25519 public key: a PEM `PUBLIC KEY` block (what
/// `openssl pkey -pubout` writes), or base64 of the SubjectPublicKeyInfo or of
/// the raw 32 bytes. Returns the raw key.
pub fn parse_ed25519_public(text: &str) -> Result<[u8; 32], PublicKeyError> {
    use base64::Engine as _;
    let text = text.trim();
    let b64: String = if text.starts_with("-----BEGIN") {
        let mut lines = text.lines().map(str::trim);
        if lines.next() != Some("-----BEGIN PUBLIC KEY-----") {
            return Err(PublicKeyError(
                "expected a `-----BEGIN PUBLIC KEY-----` block".into(),
            ));
        }
        let body: Vec<&str> = lines.take_while(|l| !l.starts_with("-----END")).collect();
        body.concat()
    } else {
        text.to_string()
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| PublicKeyError(format!("not base64: {e}")))?;
    let raw: &[u8] = match der.len() {
        32 => &der,
        44 if der[..12] == ED25519_SPKI_PREFIX => &der[12..],
        44 => {
            return Err(PublicKeyError(
                "not an Ed25519 key (the key's algorithm is not 1.3.101.112)".into(),
            ))
        }
        n => {
            return Err(PublicKeyError(format!(
                "{n} bytes: an Ed25519 public key is 32 raw bytes or a 44-byte SubjectPublicKeyInfo"
            )))
        }
    };
    let mut key = [0u8; 32];
    key.copy_from_slice(raw);
    Ok(key)
}

/// The canonical (base64 of the raw 32 bytes) form stored in `api_keys`.
pub fn encode_ed25519_public(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_spki_and_raw_forms_give_the_same_key() {
        // From `openssl genpkey -algorithm ed25519 | openssl pkey -pubout`.
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEADP/umylhcc2ZKmLq0Up2XQVIkz5YuK/mByid5XZW2bY=\n-----END PUBLIC KEY-----\n";
        let key = parse_ed25519_public(pem).expect("pem");
        let raw = encode_ed25519_public(&key);
        assert_eq!(parse_ed25519_public(&raw).expect("raw"), key);
        assert_eq!(
            parse_ed25519_public("MCowBQYDK2VwAyEADP/umylhcc2ZKmLq0Up2XQVIkz5YuK/mByid5XZW2bY=")
                .expect("spki"),
            key
        );
        assert!(parse_ed25519_public("bm9wZQ==").is_err());
        // An RSA/X25519 SPKI of the same length is refused by its algorithm.
        let mut other = ED25519_SPKI_PREFIX.to_vec();
        other[8] = 0x6e;
        other.extend([0u8; 32]);
        use base64::Engine as _;
        let x = base64::engine::general_purpose::STANDARD.encode(other);
        assert!(parse_ed25519_public(&x)
            .unwrap_err()
            .to_string()
            .contains("algorithm"));
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn secrets_hash_to_the_stored_form() {
        // printf abc | sha256sum
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = new_secret().expect("os random");
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_secret().expect("os random"));
    }
}
