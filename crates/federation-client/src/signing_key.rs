//! The server's ed25519 signing key.
//!
//! Stored as one line, `ed25519 <version> <base64 PKCS#8 DER>`, created on first start
//! with mode 0600. The key id is `ed25519:<version>`.

use std::{io::Write, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::signatures::Ed25519KeyPair;

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("signing key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is not a key we wrote.
    #[error("signing key file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The server's signing key.
pub struct ServerKey {
    /// The key pair (signs events and requests).
    pub pair: Ed25519KeyPair,
    /// `ed25519:<version>`.
    pub key_id: String,
    /// The public key, unpadded base64, as published at `/_matrix/key/v2/server`.
    pub public_base64: String,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ServerKey {
    /// Loads the key at `path`, creating it (and its directory) if it does not exist.
    pub fn load_or_generate(path: &str) -> Result<ServerKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let malformed = |reason: &str| KeyError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if !Path::new(path).exists() {
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let der = Ed25519KeyPair::generate();
            let version: String = {
                use rand::Rng;
                let mut rng = rand::rng();
                (0..6)
                    .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
                    .collect()
            };
            let line = format!("ed25519 a_{version} {}\n", STANDARD_NO_PAD.encode(&der[..]));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(io)?;
            f.write_all(line.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut parts = text.split_whitespace();
        if parts.next() != Some("ed25519") {
            return Err(malformed("expected `ed25519 <version> <key>`"));
        }
        let version = parts
            .next()
            .ok_or_else(|| malformed("missing key version"))?
            .to_owned();
        let der = STANDARD_NO_PAD
            .decode(
                parts
                    .next()
                    .ok_or_else(|| malformed("missing key"))?
                    .trim_end_matches('='),
            )
            .map_err(|e| malformed(&e.to_string()))?;
        let pair = Ed25519KeyPair::from_der(&der, version.clone())
            .map_err(|e| malformed(&e.to_string()))?;
        let public_base64 = STANDARD_NO_PAD.encode(pair.public_key());
        Ok(ServerKey {
            pair,
            key_id: format!("ed25519:{version}"),
            public_base64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_reloads_the_same_key() {
        let dir = std::env::temp_dir().join(format!("ganglion-key-{}", std::process::id()));
        let path = dir.join("signing.key");
        let path = path.to_str().expect("utf-8 temp path");
        let a = ServerKey::load_or_generate(path).expect("generate");
        let b = ServerKey::load_or_generate(path).expect("reload");
        assert_eq!(a.key_id, b.key_id);
        assert_eq!(a.public_base64, b.public_base64);
        std::fs::write(path, "rsa nope").expect("overwrite");
        assert!(matches!(
            ServerKey::load_or_generate(path),
            Err(KeyError::Malformed { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
