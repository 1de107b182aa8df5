//! What a chat message is, below everything that moves or stores one: the
//! rules a message from the wire must follow, and the wall clock it carries.
//! (The Lamport clock is the store's: a new message's time is one past the
//! highest it holds for the conversation, allocated in the same transaction.)

use crate::names::{check_body, Conversation, NameError, Nick};
use crate::proto::{ChatMessage, Kind};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks a message from the wire: conversation key, author, counters, body.
pub fn valid_message(m: &ChatMessage) -> Result<Conversation, NameError> {
    let conv = Conversation::parse_key(&m.conversation)?;
    Nick::parse(&m.author)?;
    check_body(&m.body)?;
    if m.seq == 0 || m.lamport == 0 || m.incarnation == 0 {
        return Err(NameError::new(
            "invalid message: seq, lamport and incarnation start at 1",
        ));
    }
    match Kind::try_from(m.kind) {
        Ok(Kind::Text) => {}
        // A room's creation names that room, and only a room has one.
        Ok(Kind::Created)
            if matches!(conv, Conversation::Room(_))
                && m.body.eq_ignore_ascii_case(&m.conversation) => {}
        Ok(Kind::Created) => {
            return Err(NameError::new(
                "invalid message: a creation event belongs to a room and names it",
            ))
        }
        Ok(Kind::Topic) if matches!(conv, Conversation::Room(_)) => {}
        Ok(Kind::Topic) => {
            return Err(NameError::new("invalid message: a topic belongs to a room"))
        }
        // A nick change is told to rooms (private partners follow the key)
        // and names the author's previous nick, another one.
        Ok(Kind::Nick)
            if matches!(conv, Conversation::Room(_))
                && Nick::parse(&m.body)
                    .is_ok_and(|old| !old.as_str().eq_ignore_ascii_case(&m.author)) => {}
        Ok(Kind::Nick) => {
            return Err(NameError::new(
                "invalid message: a nick change belongs to a room and names another, valid nick",
            ))
        }
        Err(_) => {
            return Err(NameError::new(format!(
                "invalid message: unknown kind {}",
                m.kind
            )))
        }
    }
    Ok(conv)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid message of #rust by alice, for unit tests.
    pub(crate) fn msg() -> ChatMessage {
        ChatMessage {
            conversation: "#rust".into(),
            author: "alice".into(),
            incarnation: 1,
            seq: 1,
            lamport: 1,
            sent_at_ms: now_ms(),
            body: "hi".into(),
            signature: Vec::new(),
            kind: 0,
        }
    }

    #[test]
    fn counters_start_at_one_and_names_follow_the_rules() {
        assert!(valid_message(&msg()).is_ok());
        for broken in [
            ChatMessage { seq: 0, ..msg() },
            ChatMessage {
                lamport: 0,
                ..msg()
            },
            ChatMessage {
                incarnation: 0,
                ..msg()
            },
            ChatMessage {
                author: "#x".into(),
                ..msg()
            },
            ChatMessage {
                conversation: "rust".into(),
                ..msg()
            },
            ChatMessage {
                body: String::new(),
                ..msg()
            },
        ] {
            assert!(valid_message(&broken).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn events_belong_to_rooms() {
        let topic = ChatMessage {
            kind: Kind::Topic as i32,
            ..msg()
        };
        assert!(valid_message(&topic).is_ok());
        let private_topic = ChatMessage {
            conversation: "@alice+bob".into(),
            ..topic.clone()
        };
        assert!(valid_message(&private_topic).is_err());
        let created = ChatMessage {
            kind: Kind::Created as i32,
            body: "#Rust".into(),
            ..msg()
        };
        assert!(valid_message(&created).is_ok());
        let elsewhere = ChatMessage {
            body: "#go".into(),
            ..created
        };
        assert!(valid_message(&elsewhere).is_err());
        assert!(valid_message(&ChatMessage { kind: 99, ..msg() }).is_err());
    }
}
