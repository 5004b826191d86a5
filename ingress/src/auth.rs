//! Bearer tokens and small crypto helpers.

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};

use crate::error::AppError;

/// Compares a presented secret with the configured one in constant time and without leaking
/// its length: both sides go through an HMAC under a per-process random key.
pub struct SecretMatcher {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl SecretMatcher {
    pub fn new(secret: &str) -> Self {
        let rng = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()));
        let tag = hmac::sign(&key, secret.as_bytes());
        SecretMatcher { key, tag }
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

/// `Authorization: Bearer <ADMIN_API_TOKEN>` or 401.
pub fn require_bearer(matcher: &SecretMatcher, headers: &HeaderMap) -> Result<(), AppError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(token) if matcher.matches(token) => Ok(()),
        _ => Err(AppError::Unauthorized("a valid bearer token is required")),
    }
}

/// `n` random bytes, base64url without padding (32 bytes → 43 characters).
pub fn random_token(n: usize) -> Result<String, AppError> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| AppError::Internal("system random generator failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// base64url(SHA-256(text)), no padding: the PKCE S256 challenge and the state cookie.
pub fn sha256_b64url(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, text.as_bytes()).as_ref())
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    hex::encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matcher_accepts_only_the_secret() {
        let m = SecretMatcher::new("0123456789abcdef0123456789abcdef");
        assert!(m.matches(b"0123456789abcdef0123456789abcdef"));
        assert!(!m.matches(b"0123456789abcdef0123456789abcdeF"));
        assert!(!m.matches(b""));
    }

    #[test]
    fn pkce_challenge_is_base64url_sha256() {
        // RFC 7636 appendix B.
        assert_eq!(
            sha256_b64url("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(random_token(32).expect("random").len(), 43);
    }
}
