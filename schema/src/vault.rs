//! Encrypted storage for Instagram access tokens.
//!
//! AES-256-GCM (ring) with a fresh random 96-bit nonce per encryption. Stored form:
//! `v{kver}:` + base64url(nonce ‖ ciphertext ‖ tag). The associated data binds a ciphertext to
//! its merchant and account row, so a ciphertext copied into another row (or tenant) fails to
//! decrypt. The first key of the ring encrypts; every key decrypts (so keys can be rotated).
//! There is no plaintext fallback: anything that does not decrypt is an error.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use igsales_config::{KeyRing, Secret};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::db::MerchantId;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("stored token is not in the v{{kver}}: form")]
    Malformed,
    #[error("stored token is under key version {0}, which ENCRYPTION_KEY does not hold")]
    UnknownKeyVersion(u32),
    #[error("stored token failed authentication (wrong key, wrong row, or tampered)")]
    Decrypt,
    #[error("the system random generator failed")]
    Random,
}

/// Which row a token belongs to; bound into the ciphertext as associated data.
#[derive(Debug, Clone, Copy)]
pub struct TokenRow<'a> {
    pub merchant: MerchantId,
    pub instagram_page_id: &'a str,
}

impl TokenRow<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.instagram_page_id.len());
        aad.extend_from_slice(b"igsales:instagram_accounts.token_ciphertext:v1\0");
        aad.extend_from_slice(self.merchant.0.as_bytes());
        aad.push(0);
        aad.extend_from_slice(self.instagram_page_id.as_bytes());
        aad
    }
}

pub struct Vault {
    keys: Vec<(u32, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("versions", &self.versions())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Builds the vault from a validated ring (non-empty, 32-byte keys, unique versions).
    pub fn new(ring: &KeyRing) -> Self {
        let keys = ring
            .0
            .iter()
            .map(|entry| {
                let key = UnboundKey::new(&AES_256_GCM, &entry.key)
                    .map(LessSafeKey::new)
                    .unwrap_or_else(|_| {
                        unreachable!("AES-256 keys are 32 bytes, checked by config")
                    });
                (entry.version, key)
            })
            .collect();
        Vault {
            keys,
            rng: SystemRandom::new(),
        }
    }

    /// The version new ciphertexts are written under.
    pub fn current_version(&self) -> u32 {
        self.keys.first().map_or(0, |(v, _)| *v)
    }

    /// Every version of the ring, the encrypting one first.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.iter().map(|(v, _)| *v).collect()
    }

    /// The key version a stored ciphertext names, if it is in the `v{kver}:` form.
    pub fn version_of(stored: &str) -> Option<u32> {
        let rest = stored.strip_prefix('v')?;
        let (ver, _) = rest.split_once(':')?;
        ver.parse().ok()
    }

    pub fn encrypt(&self, row: TokenRow<'_>, plaintext: &str) -> Result<String, VaultError> {
        let (version, key) = self.keys.first().ok_or(VaultError::UnknownKeyVersion(0))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let mut buf = plaintext.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(row.aad()),
            &mut buf,
        )
        .map_err(|_| VaultError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!("v{version}:{}", URL_SAFE_NO_PAD.encode(out)))
    }

    pub fn decrypt(&self, row: TokenRow<'_>, stored: &str) -> Result<Secret, VaultError> {
        let version = Self::version_of(stored).ok_or(VaultError::Malformed)?;
        let (_, body) = stored.split_once(':').ok_or(VaultError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, k)| k)
            .ok_or(VaultError::UnknownKeyVersion(version))?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| VaultError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(VaultError::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Malformed)?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(row.aad()), &mut sealed)
            .map_err(|_| VaultError::Decrypt)?;
        let text = std::str::from_utf8(plain).map_err(|_| VaultError::Decrypt)?;
        Ok(Secret::new(text))
    }

    /// Re-encrypts under the current key; `None` when it already is.
    pub fn reencrypt(&self, row: TokenRow<'_>, stored: &str) -> Result<Option<String>, VaultError> {
        if Self::version_of(stored) == Some(self.current_version()) {
            return Ok(None);
        }
        let plain = self.decrypt(row, stored)?;
        self.encrypt(row, plain.expose()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use igsales_config::KeyEntry;

    fn ring(versions: &[(u32, u8)]) -> KeyRing {
        KeyRing(
            versions
                .iter()
                .map(|(version, fill)| KeyEntry {
                    version: *version,
                    key: [*fill; 32],
                })
                .collect(),
        )
    }

    fn row(merchant: MerchantId) -> TokenRow<'static> {
        TokenRow {
            merchant,
            instagram_page_id: "17841400000000001",
        }
    }

    #[test]
    fn round_trip_uses_a_fresh_nonce_and_the_first_key() {
        let vault = Vault::new(&ring(&[(3, 1), (2, 2)]));
        let m = MerchantId::new_random();
        let a = vault.encrypt(row(m), "IGAAtoken").expect("encrypt");
        let b = vault.encrypt(row(m), "IGAAtoken").expect("encrypt");
        assert!(a.starts_with("v3:"));
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.contains("IGAAtoken"));
        assert_eq!(
            vault.decrypt(row(m), &a).expect("decrypt").expose(),
            "IGAAtoken"
        );
    }

    #[test]
    fn a_ciphertext_does_not_open_for_another_merchant_or_row() {
        let vault = Vault::new(&ring(&[(1, 1)]));
        let m = MerchantId::new_random();
        let c = vault.encrypt(row(m), "tok").expect("encrypt");
        let other = MerchantId::new_random();
        assert_eq!(
            vault.decrypt(row(other), &c).err(),
            Some(VaultError::Decrypt)
        );
        let other_row = TokenRow {
            merchant: m,
            instagram_page_id: "17841400000000002",
        };
        assert_eq!(
            vault.decrypt(other_row, &c).err(),
            Some(VaultError::Decrypt)
        );
    }

    #[test]
    fn tampering_and_garbage_fail_without_a_plaintext_fallback() {
        let vault = Vault::new(&ring(&[(1, 1)]));
        let m = MerchantId::new_random();
        let c = vault.encrypt(row(m), "tok").expect("encrypt");
        let mut bytes = c.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert_eq!(
            vault.decrypt(row(m), &tampered).err(),
            Some(VaultError::Decrypt)
        );
        assert_eq!(
            vault.decrypt(row(m), "tok").err(),
            Some(VaultError::Malformed)
        );
        assert_eq!(
            vault.decrypt(row(m), "v1:").err(),
            Some(VaultError::Malformed)
        );
        let unknown = c.replacen("v1:", "v9:", 1);
        assert_eq!(
            vault.decrypt(row(m), &unknown).err(),
            Some(VaultError::UnknownKeyVersion(9))
        );
    }

    #[test]
    fn old_key_ciphertexts_decrypt_and_reencrypt_under_the_new_key() {
        let old = Vault::new(&ring(&[(1, 1)]));
        let m = MerchantId::new_random();
        let c = old.encrypt(row(m), "tok").expect("encrypt");
        let rotated = Vault::new(&ring(&[(2, 2), (1, 1)]));
        assert_eq!(
            rotated.decrypt(row(m), &c).expect("dual read").expose(),
            "tok"
        );
        let fresh = rotated
            .reencrypt(row(m), &c)
            .expect("reencrypt")
            .expect("changed");
        assert!(fresh.starts_with("v2:"));
        assert_eq!(rotated.reencrypt(row(m), &fresh).expect("noop"), None);
        assert_eq!(
            old.decrypt(row(m), &fresh).err(),
            Some(VaultError::UnknownKeyVersion(2))
        );
    }
}
