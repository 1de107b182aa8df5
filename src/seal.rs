//! Sealed mail: what a sender makes of a message for a recipient who is
//! offline, so that the router holding it cannot read it.
//!
//! One HPKE suite (RFC 9180, base mode), fixed at compile time:
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, through the
//! `hpke` crate. An envelope is the 32-byte encapsulated key followed by
//! the ciphertext and its 16-byte tag ([`SEAL_OVERHEAD`] in all).
//!
//! The seal binds its context, so a router cannot move an envelope: `info`
//! names the protocol and the recipient's identity key, `aad` the key of
//! the session that deposits it. What is sealed is the author-signed
//! message itself; the recipient checks its signature as for any other.
//!
//! The X25519 key a peer's mail is sealed to is derived from its ed25519
//! identity seed: HKDF-SHA256 with a label of its own, then the RFC 9180
//! `DeriveKeyPair`. The seed is 32 uniformly random bytes, so HKDF's
//! output under a label no other use of the seed shares is a key
//! independent of the signing key (ed25519 takes SHA-512 of the seed).
//! The peer keeps no second secret, and the public half is published with
//! the identity key's signature over it ([`MailboxKey`]), as MLS signs its
//! key packages: a sender checks it against the key it knows for the nick.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

use crate::identity::{Identity, PublicKey};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// The encapsulated key's length.
const ENC_LEN: usize = 32;
/// What a seal adds to its plaintext: the encapsulated key and the tag.
pub const SEAL_OVERHEAD: usize = ENC_LEN + 16;
/// The label of the seal's `info`.
const INFO_LABEL: &[u8] = b"parley mailbox v1";
/// The label the mailbox key is derived under, and the one its
/// publication is signed under.
const DERIVE_LABEL: &[u8] = b"parley mailbox key v1";

/// Why a seal could not be made or opened. Every failure to open (too
/// short, a bad key, a wrong context, a changed byte) is one `Open`: the
/// reason is nobody's business but the forger's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the mailbox key is not an X25519 public key")]
    BadKey,
    #[error("cannot seal to that key")]
    Seal,
    #[error("the envelope does not open with this key in this context")]
    Open,
}

/// A peer's published mailbox key: the X25519 public key and its identity
/// key's signature over [`mailbox_key_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxKey {
    pub key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What the identity key signs to publish a mailbox key.
pub fn mailbox_key_bytes(mailbox_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DERIVE_LABEL.len() + 8 + mailbox_key.len());
    out.extend_from_slice(DERIVE_LABEL);
    out.extend_from_slice(&(mailbox_key.len() as u64).to_be_bytes());
    out.extend_from_slice(mailbox_key);
    out
}

impl MailboxKey {
    /// Whether `owner` signed this mailbox key, and it is an X25519 key.
    pub fn check(&self, owner: &PublicKey) -> bool {
        <Kem as hpke::Kem>::PublicKey::from_bytes(&self.key).is_ok()
            && owner.verify(&mailbox_key_bytes(&self.key), &self.signature)
    }
}

/// The private half of a peer's mailbox key, derived from its identity.
pub struct Mailbox {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: <Kem as hpke::Kem>::PublicKey,
    owner: PublicKey,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mailbox({})", self.owner.fingerprint())
    }
}

impl Mailbox {
    /// The mailbox of `identity`: the same key every time.
    pub fn of(identity: &Identity) -> Mailbox {
        let ikm = identity.derive_secret(DERIVE_LABEL);
        let (private, public) = Kem::derive_keypair(&ikm);
        Mailbox {
            private,
            public,
            owner: identity.public(),
        }
    }

    /// The public half, signed by `identity` (whose mailbox this is).
    pub fn publish(&self, identity: &Identity) -> MailboxKey {
        let key = self.public.to_bytes().to_vec();
        MailboxKey {
            signature: identity.sign(&mailbox_key_bytes(&key)),
            key,
        }
    }

    /// Opens an envelope deposited by `from` for this mailbox's owner.
    pub fn open(&self, from: &PublicKey, envelope: &[u8]) -> Result<Vec<u8>, SealError> {
        let (enc, ciphertext) = envelope.split_at_checked(ENC_LEN).ok_or(SealError::Open)?;
        if ciphertext.len() < SEAL_OVERHEAD - ENC_LEN {
            return Err(SealError::Open);
        }
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| SealError::Open)?;
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &self.private,
            &enc,
            &info(&self.owner),
            ciphertext,
            from.as_bytes(),
        )
        .map_err(|_| SealError::Open)
    }
}

fn info(recipient: &PublicKey) -> Vec<u8> {
    let mut out = INFO_LABEL.to_vec();
    out.extend_from_slice(recipient.as_bytes());
    out
}

/// Seals `plaintext` for `recipient` (its identity key) to its published
/// mailbox key `to`, as deposited by `from`. The caller has checked `to`
/// against `recipient` ([`MailboxKey::check`]).
pub fn seal(
    to: &MailboxKey,
    recipient: &PublicKey,
    from: &PublicKey,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let key = <Kem as hpke::Kem>::PublicKey::from_bytes(&to.key).map_err(|_| SealError::BadKey)?;
    let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &key,
        &info(recipient),
        plaintext,
        from.as_bytes(),
    )
    .map_err(|_| SealError::Seal)?;
    let mut out = enc.to_bytes().to_vec();
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (Identity, Mailbox, MailboxKey) {
        let id = Identity::generate();
        let mb = Mailbox::of(&id);
        let published = mb.publish(&id);
        (id, mb, published)
    }

    #[test]
    fn the_mailbox_key_is_derived_the_same_every_time_and_differs_per_identity() {
        let id = Identity::from_seed([7; 32]);
        let a = Mailbox::of(&id).publish(&id);
        let b = Mailbox::of(&id).publish(&id);
        assert_eq!(a.key, b.key);
        let other = Identity::from_seed([8; 32]);
        assert_ne!(a.key, Mailbox::of(&other).publish(&other).key);
        assert!(a.check(&id.public()));
        assert!(!a.check(&other.public()), "another key's signature");
    }

    #[test]
    fn a_published_key_checks_only_as_signed() {
        let (id, _, published) = pair();
        let mut forged = published.clone();
        forged.key[0] ^= 1;
        assert!(!forged.check(&id.public()));
        let mut short = published.clone();
        short.key.truncate(31);
        assert!(!short.check(&id.public()));
        let mut bad_sig = published;
        bad_sig.signature[5] ^= 1;
        assert!(!bad_sig.check(&id.public()));
    }

    #[test]
    fn a_seal_opens_only_for_its_recipient_from_its_depositor() {
        let (bob, bob_box, bob_key) = pair();
        let (carol, carol_box, _) = pair();
        let alice = Identity::generate();
        let sealed = seal(&bob_key, &bob.public(), &alice.public(), b"hi bob").unwrap();
        assert_eq!(sealed.len(), 6 + SEAL_OVERHEAD);
        assert_eq!(bob_box.open(&alice.public(), &sealed).unwrap(), b"hi bob");
        // Another mailbox, another claimed depositor, another named
        // recipient: none opens.
        assert_eq!(
            carol_box.open(&alice.public(), &sealed),
            Err(SealError::Open)
        );
        assert_eq!(bob_box.open(&carol.public(), &sealed), Err(SealError::Open));
        let misnamed = seal(&bob_key, &carol.public(), &alice.public(), b"x").unwrap();
        assert_eq!(
            bob_box.open(&alice.public(), &misnamed),
            Err(SealError::Open)
        );
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_fails_to_open() {
        let (bob, bob_box, bob_key) = pair();
        let alice = Identity::generate();
        let sealed = seal(&bob_key, &bob.public(), &alice.public(), b"hello").unwrap();
        for n in 0..sealed.len() {
            assert_eq!(
                bob_box.open(&alice.public(), &sealed[..n]),
                Err(SealError::Open)
            );
        }
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    bob_box.open(&alice.public(), &bad).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn a_low_order_mailbox_key_cannot_be_sealed_to() {
        let bob = Identity::generate();
        let alice = Identity::generate();
        // The all-zero point: X25519 with it gives an all-zero secret,
        // which RFC 9180 requires refusing.
        let zero = MailboxKey {
            key: vec![0; 32],
            signature: vec![],
        };
        assert!(seal(&zero, &bob.public(), &alice.public(), b"x").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn seals_round_trip_and_never_repeat(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (bob, bob_box, bob_key) = pair();
            let alice = Identity::generate();
            let a = seal(&bob_key, &bob.public(), &alice.public(), &body).unwrap();
            let b = seal(&bob_key, &bob.public(), &alice.public(), &body).unwrap();
            prop_assert_eq!(a.len(), body.len() + SEAL_OVERHEAD);
            prop_assert_ne!(&a, &b);
            prop_assert_eq!(bob_box.open(&alice.public(), &a).unwrap(), body.clone());
            prop_assert_eq!(bob_box.open(&alice.public(), &b).unwrap(), body);
        }
    }
}
