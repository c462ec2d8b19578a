//! [`SecretBox`]: authenticated encryption of secrets at rest.
//!
//! XChaCha20-Poly1305 with a fresh random 24-byte nonce per value. The stored form is
//! `version (1 byte) || nonce (24) || ciphertext+tag`. Every value is sealed with
//! *associated data* naming what it is and which row it belongs to (e.g.
//! `gsr/runner-token/<runner id>`), so a ciphertext copied into another row or column fails
//! to open instead of yielding another runner's token.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::{Result, StoreError};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Name of the generated key file inside the data dir.
pub const KEY_FILE: &str = "secret.key";
/// Environment variable holding the base64-encoded 32-byte key.
pub const KEY_ENV: &str = "GSR_SECRET_KEY";

/// The encryption key and cipher. `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox([redacted])")
    }
}

impl SecretBox {
    /// A box using exactly this key.
    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// A box with a fresh random key (tests, or the first start without a key).
    pub fn generate() -> Self {
        Self::from_key(random_key())
    }

    /// Parse a standard-base64 32-byte key (the `GSR_SECRET_KEY` format).
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| StoreError::Key("not valid base64".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| StoreError::Key(format!("expected 32 bytes, got {}", b.len())))?;
        Ok(Self::from_key(key))
    }

    /// The production rule: `GSR_SECRET_KEY` from the environment if set, otherwise
    /// [`load_or_create_key_file`](Self::load_or_create_key_file) in `data_dir`.
    pub fn from_env_or_data_dir(data_dir: &Path) -> Result<Self> {
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                Self::from_base64(&text).map_err(|e| StoreError::Key(format!("{KEY_ENV}: {e}")))
            }
            _ => Self::load_or_create_key_file(data_dir),
        }
    }

    /// Read `data_dir/secret.key`, or create it (mode 0600, never overwriting) with a new
    /// random key. A key file readable by group or others is refused.
    pub fn load_or_create_key_file(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(KEY_FILE);
        std::fs::create_dir_all(data_dir)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(&path) {
            Ok(mut file) => {
                use std::io::Write as _;
                let key = random_key();
                let text = base64::engine::general_purpose::STANDARD.encode(key);
                file.write_all(text.as_bytes())?;
                file.sync_all()?;
                Ok(Self::from_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt as _;
                    let mode = std::fs::metadata(&path)?.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(StoreError::Key(format!(
                            "{} is accessible by other users (mode {:o}); chmod 600 it",
                            path.display(),
                            mode & 0o777
                        )));
                    }
                }
                let text = std::fs::read_to_string(&path)?;
                Self::from_base64(&text)
                    .map_err(|e| StoreError::Key(format!("{}: {e}", path.display())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Encrypt `plaintext`, binding it to `aad` (what the value is and whose it is).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt a value made by [`seal`](Self::seal) with the same `aad`. Any mismatch (key,
    /// aad, tampering, truncation) is [`StoreError::Decrypt`] — never garbage.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(StoreError::Decrypt);
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| StoreError::Decrypt)
    }

    /// [`open`](Self::open) for UTF-8 secrets.
    pub fn open_string(&self, aad: &[u8], sealed: &[u8]) -> Result<secrecy::SecretString> {
        let bytes = self.open(aad, sealed)?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::Decrypt)?;
        Ok(secrecy::SecretString::from(text))
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    key
}

/// A fresh random secret for webhooks: 32 random bytes, URL-safe base64 without padding.
pub fn generate_webhook_secret() -> secrecy::SecretString {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    secrecy::SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// SHA-256 of a webhook secret: the only form in which it is stored. The secret is 256 random
/// bits, so a fast unsalted hash is enough (no dictionary to attack).
pub fn hash_webhook_secret(secret: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time comparison of a presented secret against a stored hash.
pub fn verify_webhook_secret(stored_hash: &[u8], presented: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let presented = hash_webhook_secret(presented);
    stored_hash.ct_eq(&presented).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding() {
        let b = SecretBox::generate();
        let sealed = b.seal(b"a", b"glrt-secret");
        assert!(!sealed.windows(11).any(|w| w == b"glrt-secret"));
        assert_eq!(b.open(b"a", &sealed).unwrap(), b"glrt-secret");
        assert!(matches!(b.open(b"b", &sealed), Err(StoreError::Decrypt)));
        let other = SecretBox::generate();
        assert!(matches!(
            other.open(b"a", &sealed),
            Err(StoreError::Decrypt)
        ));
        assert_ne!(
            b.seal(b"a", b"x"),
            b.seal(b"a", b"x"),
            "nonce must be random"
        );
        assert_eq!(format!("{b:?}"), "SecretBox([redacted])");
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load_or_create_key_file(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                dir.path().join(KEY_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            let err = SecretBox::load_or_create_key_file(dir.path()).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
            std::fs::set_permissions(
                dir.path().join(KEY_FILE),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let b = SecretBox::load_or_create_key_file(dir.path()).unwrap();
        assert_eq!(b.open(b"x", &a.seal(b"x", b"v")).unwrap(), b"v");
    }

    #[test]
    fn bad_base64_key_is_clear() {
        assert!(SecretBox::from_base64("nope!").is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        let err = SecretBox::from_base64(&short).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }

    #[test]
    fn webhook_secret_hash_verifies() {
        use secrecy::ExposeSecret as _;
        let s = generate_webhook_secret();
        let h = hash_webhook_secret(s.expose_secret());
        assert!(verify_webhook_secret(&h, s.expose_secret()));
        assert!(!verify_webhook_secret(&h, "wrong"));
    }
}
