//! The random strings we hand out: access and refresh tokens, device ids, UIA session ids,
//! shared-secret nonces, generated registration tokens and user localparts.

use rand::{Rng, distr::Alphanumeric};

/// Prefix of every access token, so a leaked one is recognisable (secret scanners).
const ACCESS_TOKEN_PREFIX: &str = "gl_";
/// Prefix of every refresh token.
const REFRESH_TOKEN_PREFIX: &str = "glr_";
/// Random characters after the prefix: 40 alphanumerics is about 238 bits.
const TOKEN_RANDOM_CHARS: usize = 40;
/// Device ids are 10 uppercase letters, as Synapse generates them.
const DEVICE_ID_LEN: usize = 10;

/// `n` random ASCII letters and digits.
pub(crate) fn alphanumeric(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A new access token: `gl_` and 40 random alphanumerics.
pub(crate) fn access_token() -> String {
    format!("{ACCESS_TOKEN_PREFIX}{}", alphanumeric(TOKEN_RANDOM_CHARS))
}

/// A new refresh token: `glr_` and 40 random alphanumerics.
pub(crate) fn refresh_token() -> String {
    format!("{REFRESH_TOKEN_PREFIX}{}", alphanumeric(TOKEN_RANDOM_CHARS))
}

/// A new device id: 10 uppercase letters.
pub(crate) fn device_id() -> String {
    let mut rng = rand::rng();
    (0..DEVICE_ID_LEN)
        .map(|_| char::from(rng.random_range(b'A'..=b'Z')))
        .collect()
}

/// A new UIA session id.
pub(crate) fn session_id() -> String {
    alphanumeric(24)
}

/// A new shared-secret registration nonce: 64 random bytes in lowercase hex, as Synapse
/// (`secrets.token_hex(64)` in `synapse/rest/admin/users.py`).
pub(crate) fn nonce() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    let more: [u8; 32] = rand::rng().random();
    hex(bytes.iter().chain(more.iter()))
}

/// A localpart for a client that registered without choosing one. Numeric, as Synapse's
/// (`generate_user_id`): numeric localparts are refused to clients, so these never collide
/// with a chosen name.
pub(crate) fn numeric_localpart() -> String {
    let n: u64 = rand::rng().random_range(1_000_000_000..10_000_000_000);
    n.to_string()
}

/// `length` characters from `alphabet`.
pub(crate) fn from_alphabet(alphabet: &[u8], length: usize) -> String {
    let mut rng = rand::rng();
    (0..length)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// Lowercase hex of some bytes.
pub(crate) fn hex<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> String {
    use std::fmt::Write;
    bytes.into_iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = access_token();
        assert!(
            t.starts_with("gl_")
                && t.len() == 43
                && t[3..].chars().all(|c| c.is_ascii_alphanumeric())
        );
        assert!(refresh_token().starts_with("glr_"));
        let d = device_id();
        assert!(d.len() == 10 && d.chars().all(|c| c.is_ascii_uppercase()));
        assert_eq!(nonce().len(), 128);
        assert!(numeric_localpart().parse::<u64>().is_ok());
        assert_eq!(from_alphabet(b"ab", 7).len(), 7);
        assert_eq!(hex(&[0u8, 255, 16]), "00ff10");
    }
}
