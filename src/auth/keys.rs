//! The token-signing keys: the ring every replica signs and verifies with,
//! read from the store they share, and its rotation.
//!
//! A key's life, on the clock tokens are minted by:
//! - **pending** from `created_at`: published in JWKS, not yet signing, so
//!   every replica and every relying party that caches the JWKS knows it
//!   before any token carries it (`PUBLISH_LEAD`);
//! - **active** from `activates_at`, until a newer key activates: it signs;
//! - **retired** from then: published and verifying until the last token
//!   it signed has expired (`access_token_ttl` plus the leeway);
//! - **expired** after that: out of JWKS, refused, and deleted from the
//!   store by the next replica that notices.
//!
//! The states are worked out from the two stored times and the clock, never
//! stored, so replicas agree on them without telling each other; the only
//! thing told (by the store's feed, and a reread every `REREAD` for a store
//! that has no feed) is that a key was added or deleted.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, StoredKey};

/// The only algorithm this server signs with.
pub const ED25519_ALG: &str = "EdDSA";

/// How long a rotated-in key is published before it signs: the JWKS
/// document's `max-age` (300 s), so a relying party's cached copy has it,
/// plus `REREAD`, so a replica that has no feed has read it.
pub const PUBLISH_LEAD: Duration = Duration::from_secs(300 + 60);

/// How often a replica reads the keys again even when nobody told it of a
/// change (SQLite has no feed; a notice can be lost in a cut).
pub const REREAD: Duration = Duration::from_secs(60);

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410 §7): a fixed prefix,
/// then the 32 bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key {kid} in the store is unusable: {reason}")]
    Unusable { kid: String, reason: String },
    #[error("the store holds no Ed25519 signing key")]
    NoKey,
}

/// Where a key is in its life at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Pending,
    Active,
    /// Published and verifying until `until` (unix seconds).
    Retired {
        until: u64,
    },
    Expired,
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyState::Pending => f.write_str("pending"),
            KeyState::Active => f.write_str("active"),
            KeyState::Retired { until } => write!(f, "retired, published until {until}"),
            KeyState::Expired => f.write_str("expired"),
        }
    }
}

/// One key of the ring, ready to sign and verify with.
pub struct RingKey {
    pub kid: String,
    pub created_at: u64,
    pub activates_at: u64,
    /// When the next key activates; `None` while it is the newest.
    pub retires_at: Option<u64>,
    pub signing: EncodingKey,
    pub verifying: DecodingKey,
    /// A key for what the server signs besides tokens (the sign-in form's
    /// CSRF token), derived from this key: the same on every replica.
    pub form_key: [u8; 32],
    /// The public key, base64url, as JWKS carries it.
    x: String,
}

/// Every Ed25519 key in the store, latest activation first.
pub struct KeyRing {
    keys: Vec<RingKey>,
    /// How long a retired key stays published: the access-token lifetime
    /// plus the leeway expiry is checked with.
    outlives: u64,
}

impl KeyRing {
    /// The ring `stored` (as `Store::signing_keys` lists them) makes, for
    /// tokens that live `outlives` past the moment they are signed.
    pub fn new(stored: &[StoredKey], outlives: Duration) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<RingKey> = Vec::new();
        for k in stored.iter().filter(|k| k.alg == ED25519_ALG) {
            let unusable = |reason: &str| KeyError::Unusable { kid: k.kid.clone(), reason: reason.into() };
            if k.public_key.len() != 32
                || k.private_der.len() != 48
                || !k.private_der.starts_with(&ED25519_PKCS8_PREFIX)
            {
                return Err(unusable("not an Ed25519 key pair"));
            }
            let x = B64.encode(&k.public_key);
            let verifying = DecodingKey::from_ed_components(&x).map_err(|e| unusable(&e.to_string()))?;
            let activates_at = u64::try_from(k.activates_at).unwrap_or(0);
            keys.push(RingKey {
                kid: k.kid.clone(),
                created_at: u64::try_from(k.created_at).unwrap_or(0),
                activates_at,
                retires_at: keys.last().map(|newer| newer.activates_at),
                signing: EncodingKey::from_ed_der(&k.private_der),
                verifying,
                form_key: form_key(&k.private_der),
                x,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(KeyRing { keys, outlives: outlives.as_secs() })
    }

    pub fn keys(&self) -> &[RingKey] {
        &self.keys
    }

    /// Whether `other` holds the same keys with the same times.
    pub fn same_as(&self, other: &KeyRing) -> bool {
        self.keys.len() == other.keys.len()
            && self.keys.iter().zip(&other.keys).all(|(a, b)| a.kid == b.kid && a.activates_at == b.activates_at)
    }

    pub fn state(&self, key: &RingKey, now: u64) -> KeyState {
        // Listed by activation, a key's successor activates no earlier than
        // it does: a pending key has not been overtaken.
        if now < key.activates_at {
            return KeyState::Pending;
        }
        match key.retires_at {
            None => KeyState::Active,
            Some(next) if now < next => KeyState::Active,
            Some(next) => {
                let until = next.saturating_add(self.outlives);
                if now < until { KeyState::Retired { until } } else { KeyState::Expired }
            }
        }
    }

    /// The key that signs at `now`: the latest activated. Should every key
    /// still be pending (a clock set back), the earliest one signs rather
    /// than none.
    pub fn signing(&self, now: u64) -> &RingKey {
        self.keys.iter().find(|k| k.activates_at <= now).unwrap_or_else(|| self.keys.last().expect("never empty"))
    }

    /// The key named `kid`, unless it has expired.
    pub fn verifying(&self, kid: &str, now: u64) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.kid == kid).filter(|k| self.state(k, now) != KeyState::Expired)
    }

    /// The JWKS document (RFC 7517) of the keys published at `now`.
    pub fn jwks(&self, now: u64) -> Bytes {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .filter(|k| self.state(k, now) != KeyState::Expired)
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid, "alg": ED25519_ALG, "use": "sig",
                })
            })
            .collect();
        Bytes::from(serde_json::json!({ "keys": keys }).to_string())
    }

    /// The form keys a form signed at any time a published key signed may
    /// carry: the signing key's first.
    pub fn form_keys(&self, now: u64) -> Vec<[u8; 32]> {
        let signing = self.signing(now);
        std::iter::once(signing.form_key)
            .chain(
                self.keys
                    .iter()
                    .filter(|k| k.kid != signing.kid && self.state(k, now) != KeyState::Expired)
                    .map(|k| k.form_key),
            )
            .collect()
    }

    /// The keys no longer published at `now`, to delete from the store.
    pub fn expired(&self, now: u64) -> Vec<&str> {
        self.keys.iter().filter(|k| self.state(k, now) == KeyState::Expired).map(|k| k.kid.as_str()).collect()
    }
}

/// A new Ed25519 key pair, created at `now`, signing from `activates_at`.
pub fn generate(now: u64, activates_at: u64) -> StoredKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    from_seed(seed, now, activates_at)
}

/// The Ed25519 key pair of `seed`, as the store keeps it: for `generate`,
/// and for a fixed key where one is wanted (the `jwt` fuzz target).
pub fn from_seed(seed: [u8; 32], now: u64, activates_at: u64) -> StoredKey {
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let as_i64 = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
    StoredKey {
        kid: jwk_thumbprint(&public),
        alg: ED25519_ALG.into(),
        private_der: der,
        public_key: public.to_vec(),
        created_at: as_i64(now),
        activates_at: as_i64(activates_at),
    }
}

/// Adds the next key, signing `lead` from `now`, unless one was created at
/// or after `unless_created_since` (a scheduled rotation that another
/// replica did first). The key added, if one was.
pub async fn rotate(
    store: &dyn Store,
    now: u64,
    lead: Duration,
    unless_created_since: Option<u64>,
) -> Result<Option<StoredKey>, StoreError> {
    let key = generate(now, now.saturating_add(lead.as_secs()));
    let since = unless_created_since.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    Ok(store.add_signing_key(&key, since).await?.then_some(key))
}

/// A key for one other use, from a signing key's private half (HMAC as a
/// key-derivation function: nothing about the signing key can be learnt
/// from it).
fn form_key(private_der: &[u8]) -> [u8; 32] {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(private_der).expect("HMAC takes any key length");
    mac.update(b"portcullis: sign-in form CSRF tokens");
    mac.finalize().into_bytes().into()
}

/// RFC 7638 thumbprint of an Ed25519 public key: a stable `kid`.
fn jwk_thumbprint(public: &[u8]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, B64.encode(public));
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(times: &[(u64, u64)], outlives: u64) -> KeyRing {
        // listed as the store lists them: latest activation first
        let mut stored: Vec<StoredKey> =
            times.iter().map(|&(created, activates)| generate(created, activates)).collect();
        stored.sort_by_key(|k| std::cmp::Reverse((k.activates_at, k.created_at)));
        KeyRing::new(&stored, Duration::from_secs(outlives)).unwrap()
    }

    /// The life of two keys: the first alone, the second published ahead
    /// of signing, the first retired and published for the tokens' life.
    #[test]
    fn a_rotated_key_is_published_before_it_signs_and_the_old_one_after() {
        let r = ring(&[(100, 100), (1_000, 1_360)], 60);
        let (new, old) = (&r.keys()[0], &r.keys()[1]);
        let states = |now| (r.state(new, now), r.state(old, now), r.signing(now).kid.clone());
        assert_eq!(states(1_000), (KeyState::Pending, KeyState::Active, old.kid.clone()));
        assert_eq!(states(1_359), (KeyState::Pending, KeyState::Active, old.kid.clone()));
        assert_eq!(states(1_360), (KeyState::Active, KeyState::Retired { until: 1_420 }, new.kid.clone()));
        assert_eq!(states(1_419), (KeyState::Active, KeyState::Retired { until: 1_420 }, new.kid.clone()));
        assert_eq!(states(1_420), (KeyState::Active, KeyState::Expired, new.kid.clone()));

        let published = |now| -> Vec<String> {
            let doc: serde_json::Value = serde_json::from_slice(&r.jwks(now)).unwrap();
            doc["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(published(1_000), [new.kid.clone(), old.kid.clone()]);
        assert_eq!(published(1_420), [new.kid.as_str()]);
        assert!(r.verifying(&old.kid, 1_419).is_some());
        assert!(r.verifying(&old.kid, 1_420).is_none());
        assert_eq!(r.expired(1_420), [old.kid.as_str()]);
        assert_eq!(r.form_keys(1_000), [old.form_key, new.form_key]);
        assert_eq!(r.form_keys(1_360), [new.form_key, old.form_key]);
    }

    /// Of two keys that activate together, the later created signs; with
    /// every key pending (a clock set back), the earliest signs.
    #[test]
    fn ties_go_to_the_newer_key_and_some_key_always_signs() {
        let r = ring(&[(100, 500), (200, 500)], 60);
        assert_eq!(r.signing(500).created_at, 200);
        assert_eq!(r.state(&r.keys()[1], 500), KeyState::Retired { until: 560 });
        assert_eq!(r.signing(50).activates_at, 500);
        assert_eq!(r.signing(50).created_at, 100);
    }

    #[test]
    fn malformed_and_missing_keys_are_errors() {
        let mut bad = generate(1, 1);
        bad.private_der.pop();
        assert!(matches!(KeyRing::new(&[bad], Duration::ZERO), Err(KeyError::Unusable { .. })));
        assert!(matches!(KeyRing::new(&[], Duration::ZERO), Err(KeyError::NoKey)));
    }
}
