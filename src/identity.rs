//! Who a peer or a router is: an ed25519 key pair, made once and kept in a
//! file only its owner can read. Only the public key ever travels: in the
//! certificate of every link, in a login, beside a nick in the
//! registry. A nick is a name for a key.
//!
//! Also the exact bytes every signature covers, so signer and checker can
//! never disagree on them.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::Digest;

use crate::proto::ChatMessage;

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Errors of loading or making an identity key, or of reading one.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write identity key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an ed25519 private key (PKCS#8 PEM)")]
    Malformed { path: PathBuf },
    #[error(
        "identity key {path} can be read by others (mode {mode:o}); \
         run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("not an ed25519 public key (want 32 bytes, got {0})")]
    BadKey(usize),
    #[error("{0:?} is not a key fingerprint (SHA256:... as printed by the router or /whois)")]
    BadFingerprint(String),
}

/// An ed25519 public key: who signed, who is at the other end of a link.
/// Decoded once when made, so checking a signature never decodes it again.
#[derive(Clone, Copy)]
pub struct PublicKey(VerifyingKey);

impl PartialEq for PublicKey {
    fn eq(&self, other: &PublicKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PublicKey {
    /// A key from its 32 bytes, checked to be a valid curve point.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, IdentityError> {
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadKey(bytes.len()))?;
        VerifyingKey::from_bytes(&raw)
            .map(PublicKey)
            .map_err(|_| IdentityError::BadKey(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    pub fn to_vec(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    /// `SHA256:` and the unpadded base64 of the key's SHA-256, as SSH
    /// prints host keys: what a person compares and types.
    pub fn fingerprint(&self) -> String {
        let hash = sha2::Sha256::digest(self.as_bytes());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
        )
    }

    /// Whether `signature` is this key's over `bytes`. Strict: refuses the
    /// malleable and small-order forms plain verification lets through.
    pub fn verify(&self, bytes: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(bytes, &sig).is_ok()
    }

    /// Whether `msg.signature` is this key's over the message.
    pub fn verify_message(&self, msg: &ChatMessage) -> bool {
        self.verify(&message_bytes(msg), &msg.signature)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// Checks the form of a fingerprint a person typed (`--router-key`).
pub fn parse_fingerprint(s: &str) -> Result<String, IdentityError> {
    let bad = || IdentityError::BadFingerprint(s.to_owned());
    let b64 = s.strip_prefix("SHA256:").ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|_| bad())?;
    if raw.len() != 32 {
        return Err(bad());
    }
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
    ))
}

/// A private identity key. Never leaves this process but as signatures.
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public().fingerprint())
    }
}

impl Identity {
    /// A fresh key that lives only in memory (tests, tools).
    pub fn generate() -> Identity {
        Identity {
            key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    /// The key made from `seed`: deterministic, for tests and tools only,
    /// never for a real identity.
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The key kept at `path`, made (mode 0600) if there is none. A key
    /// file others can read is refused, as SSH refuses one.
    pub fn load_or_create(path: &Path) -> Result<Identity, IdentityError> {
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                check_private(path)?;
                let key =
                    SigningKey::from_pkcs8_pem(&pem).map_err(|_| IdentityError::Malformed {
                        path: path.to_owned(),
                    })?;
                Ok(Identity { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity::generate();
                if id.write_new(path)? {
                    Ok(id)
                } else {
                    // Another process made one first: that one is the key.
                    Identity::load_or_create(path)
                }
            }
            Err(source) => Err(IdentityError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the key to a new file at `path`, readable by its owner only.
    /// Written under another name and linked into place, so a crash leaves
    /// either no key or a whole one, and of two processes making one at
    /// once exactly one wins. False when a key was there first.
    fn write_new(&self, path: &Path) -> Result<bool, IdentityError> {
        let err = |source| IdentityError::Write {
            path: path.to_owned(),
            source,
        };
        let pem = self
            .key
            .to_pkcs8_pem(Default::default())
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let tmp = path.with_extension(format!(
            "new.{}.{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(pem.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    pub fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(bytes).to_bytes().to_vec()
    }

    /// Signs `msg` in place (its `signature` field).
    pub fn sign_message(&self, msg: &mut ChatMessage) {
        msg.signature = self.sign(&message_bytes(msg));
    }

    /// The key as PKCS#8 DER, for the link certificate.
    pub(crate) fn pkcs8_der(&self) -> Vec<u8> {
        // Encoding a valid in-memory key cannot fail.
        self.key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    // Length-prefixed, so no two different messages share signed bytes.
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

/// What a message's signature covers: everything that identifies and
/// orders it, and its body, under a label no other signed thing uses.
pub fn message_bytes(m: &ChatMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + m.conversation.len() + m.author.len() + m.body.len());
    put(&mut out, b"parley message v1");
    put(&mut out, m.conversation.as_bytes());
    put(&mut out, m.author.as_bytes());
    out.extend_from_slice(&m.incarnation.to_be_bytes());
    out.extend_from_slice(&m.seq.to_be_bytes());
    out.extend_from_slice(&m.lamport.to_be_bytes());
    out.extend_from_slice(&m.sent_at_ms.to_be_bytes());
    put(&mut out, m.body.as_bytes());
    // Appended only for events, so a text message signs the bytes it signed
    // before kinds existed; the length prefixes keep the two apart.
    if m.kind != 0 {
        out.extend_from_slice(&m.kind.to_be_bytes());
    }
    out
}

/// What a login's proof covers: the router's one-time challenge, the nick
/// and address claimed, and the key that claims them.
pub fn login_bytes(challenge: &[u8], nick: &str, address: &str, key: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    put(&mut out, b"parley login v1");
    put(&mut out, challenge);
    put(&mut out, nick.to_ascii_lowercase().as_bytes());
    put(&mut out, address.as_bytes());
    put(&mut out, key.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::msg;

    #[test]
    fn a_signed_message_checks_and_any_change_breaks_it() {
        let id = Identity::generate();
        let mut m = msg();
        id.sign_message(&mut m);
        assert!(id.public().verify_message(&m));
        let changes: Vec<fn(&mut ChatMessage)> = vec![
            |m| m.conversation = "#go".into(),
            |m| m.author = "mallory".into(),
            |m| m.incarnation += 1,
            |m| m.seq += 1,
            |m| m.lamport += 1,
            |m| m.sent_at_ms += 1,
            |m| m.body = "hi!".into(),
            |m| m.kind = crate::proto::Kind::Created as i32,
        ];
        for change in changes {
            let mut forged = m.clone();
            change(&mut forged);
            assert!(!id.public().verify_message(&forged), "{forged:?}");
        }
        assert!(!Identity::generate().public().verify_message(&m));
    }

    #[test]
    fn a_key_file_is_made_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Identity::load_or_create(&path).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn fingerprints_parse_back() {
        let key = Identity::generate().public();
        let fp = key.fingerprint();
        assert_eq!(parse_fingerprint(&fp).unwrap(), fp);
        assert!(parse_fingerprint("SHA256:short").is_err());
        assert!(parse_fingerprint("md5:abc").is_err());
    }
}
