//! Arbitrary bytes decoded as each wire message a server receives, and what
//! decodes run through the same validation the servers run. Nothing may
//! panic, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley::names::{check_address, check_body, Conversation, Name, Nick, Room};
use parley::identity::{Identity, PublicKey};
use parley::proto::{
    ChatMessage, DeliverRequest, DepositRequest, DrainResponse, GetVersionRequest,
    JoinRoomRequest, LinkAck, LinkBatch, LoginRequest, PullHistoryRequest, RegistryEvent,
};
use parley::seal::{Mailbox, MailboxKey};
use prost::Message;
use std::sync::OnceLock;

/// One recipient's mailbox for every run: what a drain opens with.
fn mailbox() -> &'static (Identity, Mailbox) {
    static M: OnceLock<(Identity, Mailbox)> = OnceLock::new();
    M.get_or_init(|| {
        let id = Identity::from_seed([3; 32]);
        let m = Mailbox::of(&id);
        (id, m)
    })
}

fn names(s: &str) {
    let _ = Conversation::parse_key(s).map(|c| c.key());
    if let Ok(n) = Nick::parse(s) {
        assert_eq!(Nick::parse(&n.key()).map(|k| k.key()), Ok(n.key()));
    }
    if let Ok(r) = Room::parse(s) {
        assert_eq!(Room::parse(&r.key()).map(|k| k.key()), Ok(r.key()));
    }
    let _ = Name::parse(s);
}

fn message(m: &ChatMessage) {
    if let Ok(conv) = parley::message::valid_message(m) {
        // What validates round-trips to the same canonical key.
        assert_eq!(conv.key(), m.conversation);
        assert!(check_body(&m.body).is_ok());
    }
    names(&m.conversation);
    names(&m.author);
    // Re-encoding what decoded must decode to the same message.
    let again = ChatMessage::decode(m.encode_to_vec().as_slice()).expect("re-decode");
    assert_eq!(&again, m);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ChatMessage::decode(data) {
        message(&m);
    }
    if let Ok(d) = DeliverRequest::decode(data) {
        if let Some(m) = &d.message {
            message(m);
        }
    }
    // A peer's link receives batches; a sender's link, their answers.
    if let Ok(b) = LinkBatch::decode(data) {
        for m in &b.messages {
            message(m);
        }
    }
    if let Ok(a) = LinkAck::decode(data) {
        let again = LinkAck::decode(a.encode_to_vec().as_slice()).expect("re-decode");
        assert_eq!(again, a);
    }
    if let Ok(p) = PullHistoryRequest::decode(data) {
        names(&p.conversation);
        for v in &p.have {
            names(&v.author);
        }
    }
    if let Ok(g) = GetVersionRequest::decode(data) {
        names(&g.conversation);
    }
    if let Ok(l) = LoginRequest::decode(data) {
        names(&l.nick);
        let _ = check_address(&l.address);
        if let Ok(key) = PublicKey::from_bytes(&l.key) {
            let published = MailboxKey {
                key: l.mailbox_key.clone(),
                signature: l.mailbox_signature.clone(),
            };
            let _ = published.check(&key);
        }
    }
    // A router receives deposits; a peer, its drained mailbox: every
    // envelope is opened, and what opens decodes as a message.
    if let Ok(d) = DepositRequest::decode(data) {
        names(&d.recipient);
        let _ = PublicKey::from_bytes(&d.recipient_key);
    }
    if let Ok(r) = DrainResponse::decode(data) {
        let (_, mailbox) = mailbox();
        for e in &r.envelopes {
            if let Ok(from) = PublicKey::from_bytes(&e.from) {
                if let Ok(plain) = mailbox.open(&from, &e.sealed) {
                    if let Ok(m) = ChatMessage::decode(plain.as_slice()) {
                        message(&m);
                    }
                }
            }
        }
    }
    // Raw bytes as one envelope's seal.
    if let (Some(from), Some(sealed)) = (data.get(..32), data.get(32..)) {
        if let Ok(from) = PublicKey::from_bytes(from) {
            let _ = mailbox().1.open(&from, sealed);
        }
    }
    if let Ok(j) = JoinRoomRequest::decode(data) {
        names(&j.room);
    }
    if let Ok(e) = RegistryEvent::decode(data) {
        let _ = e.encode_to_vec();
    }
});
