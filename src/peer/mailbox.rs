//! Mail for the offline, both ways: sealing what the outbox owes a member
//! who is away into its mailbox at the router ([`Sealer`]), and draining
//! this peer's own mailbox ([`Drainer`]) at login and whenever the router
//! says something waits.
//!
//! A sender seals only to the key it trusts for the nick, and only to a
//! mailbox key that key signed (`seal`); the outbox row ends when the
//! router answers that the envelope is stored. The recipient opens each
//! envelope, takes the message through intake, as a delivery is taken
//! (its author's key must be the one that deposited it, its signature must
//! check, and a room must be one this peer keeps), stores it, and only then
//! acknowledges, so the router deletes nothing that is not committed here.

use std::sync::Arc;

use prost::Message as _;
use tonic::Code;

use super::events::{Events, PeerEvent};
use super::intake::{Intake, Source};
use super::session::{Session, SessionError};
use crate::identity::{Identity, PublicKey};
use crate::net::Peers;
use crate::proto::{self, ChatMessage};
use crate::router::{MAX_DEPOSIT, MAX_DRAIN};
use crate::seal::{seal, Mailbox, MailboxKey};

/// Bytes of envelopes in one deposit: under the router's request limit
/// (`router::MAX_REQUEST_BYTES`) with room for the request's other fields.
const DEPOSIT_BYTES: usize = 56 * 1024;

/// Why nothing could be deposited for a nick.
#[derive(Debug, thiserror::Error)]
pub enum DepositError {
    #[error("{0} has never logged in: nothing can be kept for them")]
    Unbound(String),
    #[error("{0} has published no mailbox key its own key signed")]
    NoMailbox(String),
    #[error("{0}'s key is not the one trusted here")]
    Untrusted(String),
    #[error(transparent)]
    Router(#[from] SessionError),
}

/// What a deposit did: how many of the messages (from the first) the
/// router stored, and why it refused the rest, if it did.
#[derive(Debug)]
pub struct Deposited {
    pub stored: usize,
    pub refused: Option<String>,
}

/// The sending side: seals and deposits. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    session: Session,
    peers: Peers,
    identity: Arc<Identity>,
}

impl Sealer {
    pub fn new(session: Session, peers: Peers, identity: Arc<Identity>) -> Sealer {
        Sealer {
            session,
            peers,
            identity,
        }
    }

    /// Seals `msgs` (this peer's own, owed to `nick`) to `nick`'s mailbox
    /// key and deposits them at the router, in order. `found`: the
    /// router's answer for the nick, if the caller just asked (else it is
    /// asked here).
    pub async fn deposit(
        &self,
        nick: &str,
        msgs: &[ChatMessage],
        found: Option<proto::FindResponse>,
    ) -> Result<Deposited, DepositError> {
        let found = match found {
            Some(f) => f,
            None => self.session.find(nick).await?,
        };
        if found.key.is_empty() {
            return Err(DepositError::Unbound(nick.to_owned()));
        }
        let key = PublicKey::from_bytes(&found.key)
            .map_err(|_| DepositError::NoMailbox(nick.to_owned()))?;
        // Sealed only to the key this peer would deliver to directly.
        self.peers
            .keys()
            .believe(nick, &key)
            .map_err(|_| DepositError::Untrusted(nick.to_owned()))?;
        let to = MailboxKey {
            key: found.mailbox_key,
            signature: found.mailbox_signature,
        };
        if !to.check(&key) {
            return Err(DepositError::NoMailbox(nick.to_owned()));
        }
        let me = self.identity.public();
        let mut stored = 0;
        let mut rest = msgs;
        while !rest.is_empty() {
            let (envelopes, taken) = seal_some(&to, &key, &me, rest).await;
            if envelopes.is_empty() {
                // Nothing sealed (it cannot be, with a checked key): the
                // messages stay owed rather than be dropped.
                return Ok(Deposited {
                    stored,
                    refused: Some("cannot seal to the mailbox key".into()),
                });
            }
            let req = proto::DepositRequest {
                token: String::new(),
                recipient: nick.to_owned(),
                recipient_key: key.to_vec(),
                envelopes,
            };
            let resp = self
                .session
                .call("deposit", |mut r, token| {
                    let req = proto::DepositRequest {
                        token,
                        ..req.clone()
                    };
                    async move { r.deposit(req).await }
                })
                .await?;
            let took = (resp.stored as usize).min(taken);
            stored += took;
            if resp.code != 0 || took < taken {
                return Ok(Deposited {
                    stored,
                    refused: Some(resp.error),
                });
            }
            rest = &rest[taken..];
        }
        Ok(Deposited {
            stored,
            refused: None,
        })
    }
}

/// Seals the first of `msgs` that fit one deposit, off the runtime's
/// threads (an X25519 operation each); how many it took.
async fn seal_some(
    to: &MailboxKey,
    recipient: &PublicKey,
    me: &PublicKey,
    msgs: &[ChatMessage],
) -> (Vec<Vec<u8>>, usize) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for m in msgs.iter().take(MAX_DEPOSIT) {
        let size = m.encoded_len() + crate::seal::SEAL_OVERHEAD;
        if !batch.is_empty() && bytes + size > DEPOSIT_BYTES {
            break;
        }
        bytes += size;
        batch.push(m.encode_to_vec());
    }
    let taken = batch.len();
    let (to, recipient, me) = (to.clone(), *recipient, *me);
    let sealed = tokio::task::spawn_blocking(move || {
        batch
            .iter()
            .map(|plain| seal(&to, &recipient, &me, plain))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match sealed {
        Ok(Ok(envelopes)) => (envelopes, taken),
        Ok(Err(err)) => {
            tracing::warn!(cause = %err, "cannot seal");
            (Vec::new(), 0)
        }
        Err(err) => {
            tracing::warn!(cause = %err, "sealing did not finish");
            (Vec::new(), 0)
        }
    }
}

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Messages new here.
    pub delivered: usize,
    /// Of those, how many per conversation (its key).
    pub by_conversation: std::collections::HashMap<String, usize>,
    /// Envelopes the router removed unread at its age limit.
    pub expired: u64,
    /// Envelopes refused for good: forged, damaged, or a message this peer
    /// does not take.
    pub refused: usize,
}

/// The receiving side: drains this peer's mailbox. Cheap to clone.
#[derive(Clone)]
pub struct Drainer {
    intake: Intake,
    session: Session,
    mailbox: Arc<Mailbox>,
    events: Events,
    /// One drain at a time: two would hand the same envelopes over twice.
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl Drainer {
    pub(super) fn new(
        intake: Intake,
        session: Session,
        identity: &Identity,
        events: Events,
    ) -> Drainer {
        Drainer {
            intake,
            session,
            mailbox: Arc::new(Mailbox::of(identity)),
            events,
            busy: Arc::default(),
        }
    }

    /// Takes everything waiting in this peer's mailbox, acknowledging what
    /// is committed (or refused for good) as it goes, and tells the person
    /// how many messages waited (`always`: even none, as at start).
    pub async fn drain(&self, always: bool) -> Result<Drained, SessionError> {
        let _one = self.busy.lock().await;
        let mut total = Drained::default();
        let result = self.drain_all(&mut total).await;
        if always || total.delivered > 0 || total.expired > 0 {
            self.events.emit(PeerEvent::Mailbox {
                delivered: total.delivered,
                expired: total.expired,
            });
        }
        if total.refused > 0 {
            self.events.emit(PeerEvent::Notice(format!(
                "{} envelope(s) in your mailbox were refused (forged, damaged or not for you); see the log",
                total.refused
            )));
        }
        result.map(|()| total)
    }

    async fn drain_all(&self, total: &mut Drained) -> Result<(), SessionError> {
        loop {
            let resp = self
                .session
                .call("drain", |mut r, token| async move {
                    r.drain(proto::DrainRequest {
                        token,
                        limit: MAX_DRAIN as u32,
                    })
                    .await
                })
                .await?;
            let (ids, kept) = self.take(resp.envelopes, total).await;
            if !ids.is_empty() || resp.expired > 0 {
                let req = proto::AckRequest {
                    token: String::new(),
                    ids,
                    expired: resp.expired,
                };
                self.session
                    .call("ack", |mut r, token| {
                        let req = proto::AckRequest {
                            token,
                            ..req.clone()
                        };
                        async move { r.ack(req).await }
                    })
                    .await?;
                total.expired += resp.expired;
            }
            // What this peer cannot take yet stays for the next drain.
            if !resp.more || kept {
                return Ok(());
            }
        }
    }

    /// Opens each envelope (an X25519 operation each: off the runtime's
    /// threads), and decodes what opens: its depositor and message, or
    /// None for one that does not.
    async fn open_all(
        &self,
        envelopes: Vec<proto::Envelope>,
    ) -> Option<Vec<(proto::Envelope, Option<(PublicKey, ChatMessage)>)>> {
        let mailbox = self.mailbox.clone();
        let open = move |envelopes: Vec<proto::Envelope>| {
            envelopes
                .into_iter()
                .map(|e| {
                    let opened = PublicKey::from_bytes(&e.from).ok().and_then(|from| {
                        let plain = mailbox.open(&from, &e.sealed).ok()?;
                        let msg = ChatMessage::decode(plain.as_slice()).ok()?;
                        Some((from, msg))
                    });
                    (e, opened)
                })
                .collect::<Vec<_>>()
        };
        // None when not opened (the runtime is stopping): nothing is
        // taken or acknowledged, and the next drain hands them over again.
        tokio::task::spawn_blocking(move || open(envelopes))
            .await
            .ok()
    }

    /// Opens and takes `envelopes`; the ids to acknowledge, and whether any
    /// was kept for later.
    async fn take(
        &self,
        envelopes: Vec<proto::Envelope>,
        total: &mut Drained,
    ) -> (Vec<String>, bool) {
        let mut ack = Vec::new();
        // Consecutive envelopes of one depositor go to the admission as
        // one batch (one signature batch, one store job).
        let mut runs: Vec<(PublicKey, Vec<(String, ChatMessage)>)> = Vec::new();
        let Some(opened) = self.open_all(envelopes).await else {
            return (ack, true);
        };
        for (e, opened) in opened {
            let Some((from, msg)) = opened else {
                tracing::warn!(id = %e.id, from = %e.from_nick, "refused an envelope that does not open as a message sealed to this peer by its depositor");
                total.refused += 1;
                ack.push(e.id);
                continue;
            };
            match runs.last_mut() {
                Some((k, run)) if *k == from => run.push((e.id, msg)),
                _ => runs.push((from, vec![(e.id, msg)])),
            }
        }
        let mut kept = false;
        for (from, run) in runs {
            let (ids, msgs): (Vec<String>, Vec<ChatMessage>) = run.into_iter().unzip();
            let convs: Vec<String> = msgs.iter().map(|m| m.conversation.clone()).collect();
            let answers = self.intake.take(Source::Mailbox, &from, msgs).await;
            for ((id, conv), answer) in ids.into_iter().zip(convs).zip(answers) {
                match answer {
                    Ok(r) => {
                        if r.stored {
                            total.delivered += 1;
                            *total.by_conversation.entry(conv).or_default() += 1;
                        }
                        ack.push(id);
                    }
                    Err(s) if definite(s.code()) => {
                        tracing::warn!(%id, from = %from, cause = %s.message(), "refused a message from the mailbox");
                        total.refused += 1;
                        ack.push(id);
                    }
                    Err(s) => {
                        tracing::debug!(%id, cause = %s.message(), "a message from the mailbox kept for later");
                        kept = true;
                    }
                }
            }
        }
        (ack, kept)
    }
}

/// A refusal that taking the message again would only repeat.
fn definite(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition
    )
}
