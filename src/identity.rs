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

/// Below this many signatures a batch saves nothing: they are checked one
/// by one.
const BATCH_AT_LEAST: usize = 8;

/// Which of `items` (a key and a message each) carry their key's signature,
/// in order: [`PublicKey::verify_message`] for many at once, for a pull's
/// pages.
///
/// One batch equation (ed25519-dalek's `verify_batch`) covers every
/// signature that meets the strict check's preconditions: a key that is not
/// of small order, an R that is canonically encoded and not of small order
/// (and, checked by the batch itself, a canonical s). Those failing them are
/// checked alone, strictly, and refused. A batch that fails is halved and
/// each half checked again, down to single strict checks, so a bad
/// signature costs a few more equations and never a good message. Where
/// the batch and the strict equation could still disagree (a point with a
/// small-order part, which only the key's owner can put into a valid-looking
/// signature), the owner gains nothing it lacks: it can already show
/// different peers different messages under one seq.
pub fn verify_messages(items: &[(PublicKey, &ChatMessage)]) -> Vec<bool> {
    // Too few for a batch: the preconditions would only be paid on top of
    // the strict checks (a link's single message, say).
    if items.len() < BATCH_AT_LEAST {
        return items.iter().map(|(k, m)| k.verify_message(m)).collect();
    }
    let mut ok = vec![false; items.len()];
    // (index, bytes, signature) of those the batch may take.
    let mut batch = Vec::with_capacity(items.len());
    for (i, (key, m)) in items.iter().enumerate() {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&m.signature) else {
            continue;
        };
        let bytes = message_bytes(m);
        if batchable(key, &sig) {
            batch.push((i, bytes, sig));
        } else {
            ok[i] = key.0.verify_strict(&bytes, &sig).is_ok();
        }
    }
    check_batch(items, &batch, &mut ok);
    ok
}

/// Whether the strict check's preconditions hold, so the batch equation
/// may stand in for it: a key not of small order, and an R canonically
/// encoded and not of small order.
///
/// R is judged by its bytes, so that it is decompressed once, inside the
/// batch, not twice (decompressing, then compressing again to compare, was
/// 70% on top of the batch equation itself). A canonical encoding has y
/// below p and no sign bit on x = 0 (y = 1 or y = -1); a canonical point of
/// small order is one of the eight encodings in [`SMALL_ORDER`]. An R that
/// does not decompress at all fails the batch, which then finds it by
/// halving, down to single strict checks; the verdict is the same.
fn batchable(key: &PublicKey, sig: &ed25519_dalek::Signature) -> bool {
    !key.0.is_weak() && canonical_not_small(sig.r_bytes())
}

/// The canonical encodings of the eight points of small order (the torsion
/// subgroup): the identity, the point of order 2, two of order 4 and four
/// of order 8.
const SMALL_ORDER: [[u8; 32]; 8] = {
    const fn hex(s: &[u8; 64]) -> [u8; 32] {
        let mut out = [0u8; 32];
        const fn nib(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                _ => c - b'a' + 10,
            }
        }
        let mut i = 0;
        while i < 32 {
            out[i] = nib(s[2 * i]) << 4 | nib(s[2 * i + 1]);
            i += 1;
        }
        out
    }
    [
        hex(b"0100000000000000000000000000000000000000000000000000000000000000"),
        hex(b"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex(b"0000000000000000000000000000000000000000000000000000000000000000"),
        hex(b"0000000000000000000000000000000000000000000000000000000000000080"),
        hex(b"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        hex(b"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
        hex(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        hex(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    ]
};

/// Whether `r` is a canonical point encoding (y below p = 2^255 - 19, and
/// no sign bit where x = 0) that is not one of [`SMALL_ORDER`].
fn canonical_not_small(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    let negative = r[31] & 0x80 != 0;
    // y >= p: the top 250 bits all set and the lowest byte at least 0xed.
    let at_least_p = y[31] == 0x7f && y[1..31].iter().all(|b| *b == 0xff) && y[0] >= 0xed;
    if at_least_p {
        return false;
    }
    // x = 0 exactly where y = 1 or y = p - 1.
    let mut one = [0u8; 32];
    one[0] = 1;
    let x_is_zero = y == one || y == SMALL_ORDER[1];
    if negative && x_is_zero {
        return false;
    }
    !SMALL_ORDER.contains(r)
}

/// Sets `ok` for every entry of `part`: all at once if the batch holds,
/// else each half again, and one by one below [`BATCH_AT_LEAST`].
fn check_batch(
    items: &[(PublicKey, &ChatMessage)],
    part: &[(usize, Vec<u8>, ed25519_dalek::Signature)],
    ok: &mut [bool],
) {
    if part.len() < BATCH_AT_LEAST {
        for (i, bytes, sig) in part {
            ok[*i] = items[*i].0 .0.verify_strict(bytes, sig).is_ok();
        }
        return;
    }
    let messages: Vec<&[u8]> = part.iter().map(|(_, b, _)| b.as_slice()).collect();
    let signatures: Vec<ed25519_dalek::Signature> = part.iter().map(|(_, _, s)| *s).collect();
    let keys: Vec<VerifyingKey> = part.iter().map(|(i, _, _)| items[*i].0 .0).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        for (i, _, _) in part {
            ok[*i] = true;
        }
        return;
    }
    let (a, b) = part.split_at(part.len() / 2);
    check_batch(items, a, ok);
    check_batch(items, b, ok);
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

    /// 32 bytes derived from the key's seed under `label` (HKDF-SHA256):
    /// a secret of its own for another use, independent of the signing key
    /// and of every other label's (see `seal` for the one use).
    pub(crate) fn derive_secret(&self, label: &[u8]) -> [u8; 32] {
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, label).extract(&self.key.to_bytes());
        let mut out = [0u8; 32];
        // Expanding 32 bytes of SHA-256 cannot fail (the limit is 255 blocks).
        if let Ok(okm) = prk.expand(&[label], Len32) {
            let _ = okm.fill(&mut out);
        }
        out
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
    use ed25519_dalek::Verifier;

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

    /// The old precondition, with the decompression it paid twice.
    fn batchable_by_decompressing(r: &[u8; 32]) -> bool {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let r = CompressedEdwardsY(*r);
        r.decompress()
            .is_some_and(|p| !p.is_small_order() && p.compress() == r)
    }

    /// The byte-level precondition agrees with decompressing wherever R
    /// decompresses: on every encoding of small order, every encoding with
    /// y at or past p, x = 0 with either sign, and many random points.
    #[test]
    fn r_is_judged_by_its_bytes_as_by_decompressing() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::traits::IsIdentity;
        let mut special: Vec<[u8; 32]> = Vec::new();
        for enc in SMALL_ORDER {
            special.push(enc);
            let mut flipped = enc;
            flipped[31] ^= 0x80;
            special.push(flipped);
        }
        // y = p + k for k in 0..19 (2^255 - 19 + k), and y = 1, with both signs.
        for k in 0..19u8 {
            let mut y = [0xffu8; 32];
            y[0] = 0xed + k;
            y[31] = 0x7f;
            special.push(y);
            y[31] = 0xff;
            special.push(y);
        }
        for small in 0..=255u8 {
            let mut y = [0u8; 32];
            y[0] = small;
            special.push(y);
            y[31] = 0x80;
            special.push(y);
        }
        let mut decompressed = 0;
        for r in &special {
            if CompressedEdwardsY(*r).decompress().is_some() {
                decompressed += 1;
                assert_eq!(
                    canonical_not_small(r),
                    batchable_by_decompressing(r),
                    "{r:02x?}"
                );
            }
        }
        assert!(decompressed > 100, "{decompressed}");
        // Every small-order point is among the eight, canonically encoded.
        for r in &special {
            if let Some(p) = CompressedEdwardsY(*r).decompress() {
                if p.is_small_order() {
                    assert!(SMALL_ORDER.contains(&p.compress().0), "{r:02x?}");
                    assert!(p.mul_by_cofactor().is_identity());
                }
            }
        }
        for _ in 0..2000 {
            let id = Identity::generate();
            let sig = id.sign(b"any");
            let r: [u8; 32] = sig[..32].try_into().unwrap();
            assert!(canonical_not_small(&r));
            assert!(batchable_by_decompressing(&r));
        }
    }

    /// `n` messages, signed by `a` (even seqs) and `b` (odd), with keys.
    fn signed(a: &Identity, b: &Identity, n: u64) -> Vec<(PublicKey, ChatMessage)> {
        (0..n)
            .map(|seq| {
                let id = if seq % 2 == 0 { a } else { b };
                let mut m = ChatMessage { seq, ..msg() };
                id.sign_message(&mut m);
                (id.public(), m)
            })
            .collect()
    }

    fn batch(items: &[(PublicKey, ChatMessage)]) -> Vec<bool> {
        let refs: Vec<(PublicKey, &ChatMessage)> = items.iter().map(|(k, m)| (*k, m)).collect();
        verify_messages(&refs)
    }

    #[test]
    fn a_batch_finds_exactly_the_messages_that_do_not_check() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let mut items = signed(&a, &b, 100);
        assert!(batch(&items).iter().all(|ok| *ok));
        // A changed body, a signature by the other key, a truncated one.
        items[7].1.body = "forged".into();
        items[40].0 = b.public();
        items[93].1.signature.truncate(10);
        let ok = batch(&items);
        for (i, (key, m)) in items.iter().enumerate() {
            assert_eq!(ok[i], key.verify_message(m), "message {i}");
            assert_eq!(ok[i], ![7, 40, 93].contains(&i), "message {i}");
        }
        // Below the batch size, the same answers.
        assert_eq!(batch(&items[..5]), [true; 5]);
        assert_eq!(batch(&items[5..9]), [true, true, false, true]);
        assert!(batch(&[]).is_empty());
    }

    #[test]
    fn a_batch_refuses_small_order_forms_as_the_strict_check_does() {
        // The identity point as the key, R the identity and s zero: the
        // plain equation holds ([0]B = R + [k]A), the strict check refuses.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let weak = PublicKey::from_bytes(&identity_point).unwrap();
        let mut sig = identity_point.to_vec();
        sig.extend([0u8; 32]);
        let forged = ChatMessage {
            signature: sig.clone(),
            ..msg()
        };
        let plain = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        assert!(weak.0.verify(&message_bytes(&forged), &plain).is_ok());
        assert!(!weak.verify_message(&forged));
        // Among good ones, in a batch, and alone.
        let (a, b) = (Identity::generate(), Identity::generate());
        let mut items = signed(&a, &b, 30);
        items[12] = (weak, forged.clone());
        let ok = batch(&items);
        assert_eq!(ok.iter().filter(|ok| !**ok).count(), 1, "{ok:?}");
        assert!(!ok[12]);
        // A good key with that small-order R: refused too.
        items[12] = (a.public(), forged);
        assert!(!batch(&items)[12]);
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
