//! Arbitrary bytes decoded as each wire message a server receives, and what
//! decodes run through the same validation the servers run. Nothing may
//! panic, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley::names::{check_address, check_body, Conversation, Name, Nick, Room};
use parley::proto::{
    ChatMessage, DeliverRequest, GetVersionRequest, JoinRoomRequest, LinkAck, LinkBatch,
    LoginRequest, PullHistoryRequest, RegistryEvent,
};
use prost::Message;

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
    }
    if let Ok(j) = JoinRoomRequest::decode(data) {
        names(&j.room);
    }
    if let Ok(e) = RegistryEvent::decode(data) {
        let _ = e.encode_to_vec();
    }
});
