//! Meta's `signed_request` (deauthorize and data-deletion callbacks):
//! `base64url(signature).base64url(payload)`, the signature an HMAC-SHA256 of the payload part
//! (as sent, still encoded) keyed with the app secret.

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use ring::hmac;
use serde::Deserialize;

use crate::ids::IdString;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedRequestError {
    #[error("signed_request is not two base64url parts")]
    Malformed,
    #[error("signed_request signature does not match")]
    BadSignature,
    #[error("signed_request payload is not the expected JSON")]
    BadPayload,
    #[error("signed_request algorithm must be HMAC-SHA256")]
    Algorithm,
    #[error("signed_request has no issued_at, or one outside the accepted window")]
    Stale,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SignedRequest {
    pub user_id: IdString,
    pub algorithm: String,
    #[serde(default)]
    pub issued_at: Option<i64>,
}

fn decode(part: &str) -> Result<Vec<u8>, SignedRequestError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .or_else(|_| URL_SAFE.decode(part))
        .map_err(|_| SignedRequestError::Malformed)
}

/// Verifies against any of `secrets` (constant time) and only then parses the payload.
pub fn verify<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    signed_request: &str,
) -> Result<SignedRequest, SignedRequestError> {
    let (sig_part, payload_part) = signed_request
        .trim()
        .split_once('.')
        .ok_or(SignedRequestError::Malformed)?;
    let sig = decode(sig_part)?;
    let ok = secrets.into_iter().any(|secret| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        hmac::verify(&key, payload_part.as_bytes(), &sig).is_ok()
    });
    if !ok {
        return Err(SignedRequestError::BadSignature);
    }
    let payload = decode(payload_part)?;
    let req: SignedRequest =
        serde_json::from_slice(&payload).map_err(|_| SignedRequestError::BadPayload)?;
    if !req.algorithm.eq_ignore_ascii_case("HMAC-SHA256") {
        return Err(SignedRequestError::Algorithm);
    }
    Ok(req)
}

impl SignedRequest {
    /// Refuses a request issued more than `max_age` before `now` (a captured one replayed later)
    /// or more than `max_age` after it (a clock that far off is not Meta's). Without `issued_at`
    /// there is nothing to judge freshness by: refused.
    pub fn fresh(
        self,
        now: std::time::SystemTime,
        max_age: std::time::Duration,
    ) -> Result<Self, SignedRequestError> {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let max = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        match self.issued_at {
            Some(at) if now.saturating_sub(at).abs() <= max => Ok(self),
            _ => Err(SignedRequestError::Stale),
        }
    }
}

/// Builds a `signed_request` the way Meta does (tests and the fake Meta use it).
pub fn sign(secret: &str, payload_json: &str) -> String {
    let payload = URL_SAFE_NO_PAD.encode(payload_json.as_bytes());
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, payload.as_bytes()).as_ref());
    format!("{sig}.{payload}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_round_trips_and_forgeries_fail() {
        let sr = sign(
            "app-secret",
            r#"{"algorithm":"HMAC-SHA256","issued_at":1762022388,"user_id":27640875392278831}"#,
        );
        let req = verify(["other", "app-secret"], &sr).expect("valid");
        assert_eq!(req.user_id.as_str(), "27640875392278831");
        assert_eq!(
            verify(["wrong"], &sr).err(),
            Some(SignedRequestError::BadSignature)
        );
        let (sig, _) = sr.split_once('.').expect("two parts");
        let forged = format!(
            "{sig}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"algorithm":"HMAC-SHA256","user_id":"1"}"#)
        );
        assert_eq!(
            verify(["app-secret"], &forged).err(),
            Some(SignedRequestError::BadSignature)
        );
        assert_eq!(
            verify(["app-secret"], "nodot").err(),
            Some(SignedRequestError::Malformed)
        );
        let plain = sign("app-secret", r#"{"algorithm":"plain","user_id":"1"}"#);
        assert_eq!(
            verify(["app-secret"], &plain).err(),
            Some(SignedRequestError::Algorithm)
        );
    }

    #[test]
    fn only_a_recent_issued_at_is_fresh() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |issued: Option<i64>| SignedRequest {
            user_id: IdString("1".into()),
            algorithm: "HMAC-SHA256".into(),
            issued_at: issued,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let window = Duration::from_secs(600);
        assert!(at(Some(1_800_000_000 - 600)).fresh(now, window).is_ok());
        assert!(at(Some(1_800_000_000 + 30)).fresh(now, window).is_ok());
        for stale in [Some(1_800_000_000 - 601), Some(1_800_000_000 + 601), None] {
            assert_eq!(
                at(stale).fresh(now, window).err(),
                Some(SignedRequestError::Stale)
            );
        }
    }
}
