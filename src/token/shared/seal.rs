//! Sealing of shared-store entries with authenticated encryption (AES-256-GCM, from `ring`).
//!
//! With `--shared-key-file`, every entry written to Redis is sealed: a Redis user who can read
//! the key sees no token, and one who can write it cannot make a replica adopt a token of
//! their own, because an entry that does not open with one of the keys is never used. The
//! associated data binds an entry to its Redis key and to the `version` field beside it, so
//! neither can be changed without the entry failing to open.
//!
//! Format of a sealed entry: `tsv2.<key id>.<base64url(nonce || ciphertext || tag)>`, where the
//! key id is the first 4 bytes of SHA-256 of the key, in hex (it picks the key to try; it says
//! nothing about the key).

use std::path::Path;

use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The prefix of a sealed entry.
pub const SEALED_PREFIX: &str = "tsv2.";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One or more keys: the first seals, every one opens (so that a key can be rotated without a
/// moment in which replicas cannot read each other's entries).
pub struct SealKeys {
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKeys")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why an entry did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The entry is not sealed (plain JSON written without the key).
    #[error("the entry is not sealed")]
    Unsealed,
    /// It is sealed, but not by any of our keys, or it was modified.
    #[error("the entry does not open with the shared key (modified, or sealed with another key)")]
    Tampered,
}

fn key_id(raw: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, raw);
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl SealKeys {
    /// Keys from raw 32-byte values (the first seals).
    pub fn from_raw(raw: &[[u8; 32]]) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("no key".into());
        }
        let keys = raw
            .iter()
            .map(|k| {
                UnboundKey::new(&AES_256_GCM, k)
                    .map(|u| (key_id(k), LessSafeKey::new(u)))
                    .map_err(|_| "not a valid AES-256 key".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SealKeys {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Reads a key file: exactly 32 bytes (a raw key), or text with one key per line, each 32
    /// bytes in base64 (standard or URL-safe, padded or not). The first key seals. Error
    /// messages never quote the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let data = crate::secret::read_bounded(path).map_err(|e| e.to_string())?;
        let display = path.display();
        if data.len() == 32 {
            let mut raw = Zeroizing::new([0u8; 32]);
            raw.copy_from_slice(&data);
            return Self::from_raw(&[*raw]);
        }
        let text = std::str::from_utf8(&data)
            .map_err(|_| format!("key file {display}: neither 32 raw bytes nor base64 text"))?;
        let mut keys: Vec<[u8; 32]> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let decoded = Zeroizing::new(
                decode_any_base64(line)
                    .ok_or_else(|| format!("key file {display}, line {}: not base64", i + 1))?,
            );
            let key: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
                format!(
                    "key file {display}, line {}: a key must be 32 bytes, this one is {}",
                    i + 1,
                    decoded.len()
                )
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(format!("key file {display}: holds no key"));
        }
        let sealed = Self::from_raw(&keys);
        for k in &mut keys {
            zeroize::Zeroize::zeroize(k);
        }
        sealed.map_err(|e| format!("key file {display}: {e}"))
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<String, String> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_owned())?;
        let mut buf = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + 16));
        buf.extend_from_slice(plaintext);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut *buf,
        )
        .map_err(|_| "sealing failed".to_owned())?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED_PREFIX}{id}.{}", B64.encode(out)))
    }

    /// Opens an entry sealed by [`SealKeys::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], entry: &str) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let rest = entry
            .strip_prefix(SEALED_PREFIX)
            .ok_or(OpenError::Unsealed)?;
        let (id, body) = rest.split_once('.').ok_or(OpenError::Tampered)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(kid, _)| kid == id)
            .ok_or(OpenError::Tampered)?;
        let raw = B64.decode(body).map_err(|_| OpenError::Tampered)?;
        if raw.len() < NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return Err(OpenError::Tampered);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).map_err(|_| OpenError::Tampered)?;
        let mut buf = Zeroizing::new(raw[NONCE_LEN..].to_vec());
        let len = key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| OpenError::Tampered)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Whether an entry looks sealed (whatever the key).
pub fn is_sealed(entry: &str) -> bool {
    entry.starts_with(SEALED_PREFIX)
}

fn decode_any_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seeds: &[u8]) -> SealKeys {
        SealKeys::from_raw(&seeds.iter().map(|s| [*s; 32]).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn seals_and_opens() {
        let k = keys(&[1]);
        let sealed = k.seal(b"aad", b"{\"access_token\":\"secret\"}").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("secret"));
        assert_eq!(
            &k.open(b"aad", &sealed).unwrap()[..],
            b"{\"access_token\":\"secret\"}"
        );
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            k.seal(b"aad", b"{\"access_token\":\"secret\"}").unwrap()
        );
    }

    #[test]
    fn refuses_what_it_did_not_seal() {
        let k = keys(&[1]);
        let sealed = k.seal(b"aad", b"payload").unwrap();
        assert_eq!(k.open(b"other", &sealed), Err(OpenError::Tampered));
        assert_eq!(k.open(b"aad", "{\"a\":1}"), Err(OpenError::Unsealed));
        assert_eq!(keys(&[2]).open(b"aad", &sealed), Err(OpenError::Tampered));
        // Every single-character change of the sealed text fails to open.
        for i in SEALED_PREFIX.len()..sealed.len() {
            let mut bytes = sealed.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != sealed {
                assert!(k.open(b"aad", &changed).is_err(), "position {i}");
            }
        }
        assert_eq!(k.open(b"aad", "tsv2."), Err(OpenError::Tampered));
        assert_eq!(k.open(b"aad", "tsv2.x.y"), Err(OpenError::Tampered));
    }

    #[test]
    fn every_key_opens_and_the_first_seals() {
        let old = keys(&[1]);
        let rotating = keys(&[2, 1]);
        let by_old = old.seal(b"a", b"x").unwrap();
        assert_eq!(&rotating.open(b"a", &by_old).unwrap()[..], b"x");
        let by_new = rotating.seal(b"a", b"y").unwrap();
        assert!(old.open(b"a", &by_new).is_err());
        assert_eq!(&keys(&[2]).open(b"a", &by_new).unwrap()[..], b"y");
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let b64 = dir.path().join("b64");
        let std_b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        std::fs::write(&b64, format!("{std_b64}\n")).unwrap();
        let sealed = SealKeys::load(&raw).unwrap().seal(b"a", b"x").unwrap();
        assert!(SealKeys::load(&b64).unwrap().open(b"a", &sealed).is_ok());
        let two = dir.path().join("two");
        let other = B64.encode([8u8; 32]);
        std::fs::write(&two, format!("# new key first\n{other}\n{std_b64}\n")).unwrap();
        assert!(SealKeys::load(&two).unwrap().open(b"a", &sealed).is_ok());
        for (name, content) in [
            ("short", "c2hvcnQ=\n".to_owned()),
            ("notb64", "not base64 at all!\n".to_owned()),
            ("empty", "\n# nothing\n".to_owned()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, &content).unwrap();
            let err = SealKeys::load(&p).unwrap_err();
            assert!(!err.contains(content.trim()), "{err}");
        }
    }
}
