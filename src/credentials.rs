//! Password hashing: argon2id, PHC strings, never a plaintext password on
//! disk.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is longer than 1024 bytes")]
    TooLong,
    #[error("could not hash the password: {0}")]
    Hash(String),
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    if password.is_empty() {
        return Err(CredentialError::Empty);
    }
    if password.len() > 1024 {
        return Err(CredentialError::TooLong);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// Checks a password against a stored hash. With no hash (unknown login) a
/// dummy hash is still verified, so the time taken does not tell whether
/// the login exists.
pub fn verify_password(hash: Option<&str>, password: &str) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("relaygate-dummy").unwrap_or_default());
    let parsed = match PasswordHash::new(hash.unwrap_or(dummy)) {
        Ok(p) => p,
        Err(_) => return false,
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && hash.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(Some(&h), "s3cret"));
        assert!(!verify_password(Some(&h), "S3cret"));
        assert!(!verify_password(None, "s3cret"));
        assert!(!verify_password(Some("garbage"), "s3cret"));
        assert!(hash_password("").is_err());
    }
}
