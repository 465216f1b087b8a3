//! Password hashing (argon2id, PHC strings) and the password policy.
//!
//! Hashing costs tens of milliseconds of CPU, so both directions run on tokio's blocking
//! pool, never on a runtime worker.

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use ganglion_core::{Error, ErrorKind, Result};
use rand::Rng;

/// Longest password accepted, in bytes (Synapse refuses longer ones in `register.py` and
/// `account.py`: hashing unbounded input is a denial-of-service vector).
pub(crate) const MAX_PASSWORD_BYTES: usize = 512;

/// Checks a new password against the policy: not over [`MAX_PASSWORD_BYTES`] (400
/// `M_UNKNOWN`, as Synapse) and at least `min_length` characters (400 `M_WEAK_PASSWORD`).
pub(crate) fn check_policy(password: &str, min_length: usize) -> Result<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::unknown("Invalid password"));
    }
    if password.chars().count() < min_length {
        return Err(Error::new(
            ErrorKind::WeakPassword,
            format!("Password must be at least {min_length} characters long"),
        ));
    }
    Ok(())
}

/// How many argon2 computations run at once. Each takes 19 MiB and a core for ~50 ms;
/// more at once than there are cores only adds memory (and queueing is fairer than
/// thrashing). Process-wide by nature: it guards the machine, not a service.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The argon2id hasher for new passwords: OWASP's m = 7 MiB, t = 5, p = 1 setting, which
/// its cheat sheet rates equal to the crate default (19 MiB, t = 2) at a third of the
/// memory. Verification reads the parameters from each stored hash, so older hashes
/// keep working.
fn hasher() -> Result<Argon2<'static>> {
    let params = argon2::Params::new(7 * 1024, 5, 1, None)
        .map_err(|e| Error::internal(format!("argon2 params: {e}")))?;
    Ok(Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// Hashes a password into an argon2id PHC string.
pub(crate) async fn hash(password: &str) -> Result<String> {
    let password = password.to_owned();
    let salt_bytes: [u8; 16] = rand::rng().random();
    // The permit moves into the task, so a client hanging up cannot free it early.
    let permit = HASHING
        .acquire()
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let salt = SaltString::encode_b64(&salt_bytes)
            .map_err(|e| Error::internal(format!("salt: {e}")))?;
        hasher()?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("argon2 hash: {e}")))
    })
    .await
    .map_err(|e| Error::internal(format!("hashing task failed: {e}")))?
}

/// Whether `password` matches the stored PHC string. A hash that does not parse is logged
/// and never matches.
pub(crate) async fn verify(password: &str, phc: &str) -> Result<bool> {
    let password = password.to_owned();
    let phc = phc.to_owned();
    let permit = HASHING
        .acquire()
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        match PasswordHash::new(&phc) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "stored password hash does not parse");
                false
            }
        }
    })
    .await
    .map_err(|e| Error::internal(format!("verification task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert!(check_policy("abc", 0).is_ok());
        assert_eq!(
            check_policy("abc", 4).map_err(|e| e.kind),
            Err(ErrorKind::WeakPassword)
        );
        assert_eq!(
            check_policy(&"x".repeat(513), 0).map_err(|e| e.kind),
            Err(ErrorKind::Unknown)
        );
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let phc = hash("hunter2").await.expect("hashes");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("hunter2", &phc).await.expect("verifies"));
        assert!(!verify("hunter3", &phc).await.expect("verifies"));
        assert!(
            !verify("hunter2", "not a phc string")
                .await
                .expect("verifies")
        );
    }
}
