//! Connections to other peers: one lazily connected HTTP/2 channel over TLS
//! per peer address and key, kept and reused for every call (never a
//! connection per message), each call under a deadline; and the one
//! delivery every sender (fan-out, outbox, pushes after a sync) makes
//! through them, over a long-lived `Link` stream per channel ([`link`]).
//! A channel reaches only the key the registry gave for the member, and
//! only if that key is the one this peer knows for the nick (see
//! [`crate::trust`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

mod link;
pub mod reach;

pub use reach::Me;

use crate::identity::PublicKey;
use crate::metrics::PeerMetrics;
use crate::proto::chat_client::ChatClient;
use crate::proto::{ChatMessage, Member};
use crate::tls::{Expect, Reversals, Tls};
use crate::trust::{KeyError, Keys};

/// Deadline of one `Deliver` (or version query) to one peer: a frozen or
/// vanished member must not stall the sender.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// How long a TCP connect to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest message a peer decodes: a history page is capped well below it.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Most channels kept at once. Past it the least recently used one is
/// dropped (its connection closes once no call holds it): a peer that has
/// met thousands of addresses over a long life keeps a bounded cache, and a
/// dropped channel simply reconnects on its next use.
pub const MAX_CHANNELS: usize = 1024;

/// Errors of reaching another peer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid peer address {0:?}")]
    BadAddress(String),
    #[error("{0} has no valid key in the registry")]
    BadKey(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Most messages [`Peers::deliver_all`] has on a link at once.
const DELIVER_CHUNK: usize = 1024;

/// How long an address that failed to answer is skipped by senders.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// How a `Deliver` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The member has committed it (or already held it).
    Stored,
    /// The member answered definitely that it will never take this message
    /// as it stands (malformed, not a member, not a party): retrying the
    /// same message cannot help.
    Refused,
    /// No answer in time, no connection, or an answer that says "not now"
    /// (the member's router is unreachable, its session is being renewed):
    /// worth retrying later.
    Unreachable,
}

impl Delivery {
    /// How it is counted (`PeerMetrics::delivery`).
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Stored => "stored",
            Delivery::Refused => "refused",
            Delivery::Unreachable => "unreachable",
        }
    }

    /// What a failed call's status means. Only codes a member returns when
    /// it is sure are definite; everything else is worth another try.
    pub fn of_status(code: Code) -> Delivery {
        match code {
            Code::Ok => Delivery::Stored,
            Code::InvalidArgument | Code::FailedPrecondition | Code::PermissionDenied => {
                Delivery::Refused
            }
            _ => Delivery::Unreachable,
        }
    }
}

/// Kept channels by (address, the member's raw key, its relay router).
type Channels = HashMap<Slot, Kept>;
type Slot = (String, [u8; 32], String);

/// A slot's parts, borrowed, so that the map is searched once per message
/// without building an owned key (the usual trick for a composite key).
trait SlotParts {
    fn parts(&self) -> (&str, &[u8; 32], &str);
}

impl SlotParts for Slot {
    fn parts(&self) -> (&str, &[u8; 32], &str) {
        (&self.0, &self.1, &self.2)
    }
}

impl SlotParts for (&str, &[u8; 32], &str) {
    fn parts(&self) -> (&str, &[u8; 32], &str) {
        (self.0, self.1, self.2)
    }
}

impl<'a> std::borrow::Borrow<dyn SlotParts + 'a> for Slot {
    fn borrow(&self) -> &(dyn SlotParts + 'a) {
        self
    }
}

// Hashes exactly as `Slot` does: a String hashes as its str.
impl std::hash::Hash for dyn SlotParts + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn SlotParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn SlotParts + '_ {}

/// The borrowed slot of `member` with key `raw`.
fn slot_of<'a>(member: &'a Member, raw: &'a [u8; 32]) -> (&'a str, &'a [u8; 32], &'a str) {
    (member.address.as_str(), raw, member.relay.as_str())
}

struct Kept {
    channel: Channel,
    /// The member's key, decoded once when the channel was made.
    key: PublicKey,
    used: Instant,
    /// The link stream deliveries go over, opened on first use.
    link: Option<link::Link>,
}

/// The channels to other peers, by address and key. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    tls: Tls,
    /// Whose key each nick's is: a link reaches only that key.
    keys: Keys,
    /// Held only to look up or insert a channel, never across an `.await`.
    channels: Arc<Mutex<Channels>>,
    /// Addresses that last failed to answer, and when.
    down: Arc<Mutex<HashMap<String, Instant>>>,
    /// For members nobody can dial (see [`reach`]): who this peer is, the
    /// connections dialed back to it, and their relay routers.
    me: Me,
    reversals: Reversals,
    relays: reach::RelayRouters,
    /// Where link tasks run, and what ends them: the peer's, so that a
    /// stopping peer waits for its links and they end with it.
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Counts links, channels, batches and deliveries.
    metrics: PeerMetrics,
}

impl Peers {
    /// Links presenting `tls`'s key, reaching the keys `keys` believes.
    pub fn new(tls: Tls, keys: Keys) -> Peers {
        Peers {
            tls,
            keys,
            channels: Arc::default(),
            down: Arc::default(),
            me: Me::new("", ""),
            reversals: Reversals::default(),
            relays: reach::RelayRouters::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            metrics: PeerMetrics::new(),
        }
    }

    /// These peers, counting into `metrics` (the peer's own).
    pub fn metered(mut self, metrics: PeerMetrics) -> Peers {
        self.metrics = metrics;
        self
    }

    /// What these peers count into; the sync counts its pulls there too.
    pub fn metrics(&self) -> &PeerMetrics {
        &self.metrics
    }

    /// These peers, running link tasks on `tasks` until `stop`.
    pub fn tracked(mut self, tasks: TaskTracker, stop: CancellationToken) -> Peers {
        self.tasks = tasks;
        self.stop = stop;
        self
    }

    /// These peers, reaching members nobody can dial as `me`.
    pub fn reaching(mut self, me: Me) -> Peers {
        self.me = me;
        self
    }

    /// Who this peer is to those it asks to dial it back.
    pub fn me(&self) -> &Me {
        &self.me
    }

    /// Where connections dialed back to this peer go (its listener hands
    /// them over).
    pub fn reversals(&self) -> Reversals {
        self.reversals.clone()
    }

    /// Whose key each nick's is, as this peer believes.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A client for `member`'s chat service, over the channel kept for its
    /// address and key. Connecting happens on first use, and again after a
    /// failure; the link must present the member's key, and that key must
    /// be the one trusted for its nick.
    pub fn client(&self, member: &Member) -> Result<ChatClient<Channel>, NetError> {
        let bad_key = || NetError::BadKey(member.nick.clone());
        let raw: [u8; 32] = member.key.as_slice().try_into().map_err(|_| bad_key())?;
        let address = member.address.as_str();
        let kept = {
            let mut channels = self.lock_channels();
            let slot = slot_of(member, &raw);
            channels.get_mut(&slot as &dyn SlotParts).map(|kept| {
                kept.used = Instant::now();
                (kept.channel.clone(), kept.key)
            })
        };
        // The trust check runs every time (a key may be trusted or not
        // since), outside the lock: it may write the known keys.
        let channel = match kept {
            Some((channel, key)) => {
                self.keys.believe(&member.nick, &key)?;
                channel
            }
            None => {
                let key = PublicKey::from_bytes(&raw).map_err(|_| bad_key())?;
                self.keys.believe(&member.nick, &key)?;
                let channel = if member.relay.is_empty() {
                    self.tls
                        .channel(endpoint(address)?, address, Expect::key(&key))
                } else {
                    let dial = reach::dial_relayed(
                        self.tls.clone(),
                        self.me.clone(),
                        self.reversals.clone(),
                        self.relays.clone(),
                        member.relay.clone(),
                        key,
                    );
                    let label = format!("{} via {}", member.nick, member.relay);
                    self.tls
                        .channel_via(endpoint(address)?, &label, Expect::key(&key), dial)
                };
                let mut channels = self.lock_channels();
                if channels.len() >= MAX_CHANNELS {
                    let oldest = channels
                        .iter()
                        .min_by_key(|(_, k)| k.used)
                        .map(|(a, _)| a.clone());
                    if let Some(a) = oldest {
                        channels.remove(&a);
                    }
                }
                let slot = (address.to_owned(), raw, member.relay.clone());
                let kept = channels.entry(slot).or_insert(Kept {
                    channel,
                    key,
                    used: Instant::now(),
                    link: None,
                });
                let channel = kept.channel.clone();
                self.metrics.channels(channels.len());
                channel
            }
        };
        Ok(ChatClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn lock_channels(&self) -> std::sync::MutexGuard<'_, Channels> {
        // A plain map: a panic elsewhere cannot leave it half-updated.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many channels are kept now.
    pub fn cached(&self) -> usize {
        self.lock_channels().len()
    }

    /// One `Deliver` of `msg` to `member`, under [`CALL_DEADLINE`].
    /// Remembers whether the address answered.
    pub async fn deliver(&self, member: &Member, msg: ChatMessage) -> Delivery {
        self.deliver_answered(member, msg).await.0
    }

    /// Delivers `msgs` to `member`, in order, all queued on its link at
    /// once, so they travel in a few batches instead of a round trip each.
    /// One answer per message; after a chunk with an unreachable answer the
    /// rest are not tried and answer [`Delivery::Unreachable`].
    pub async fn deliver_all(&self, member: &Member, msgs: Vec<ChatMessage>) -> Vec<Delivery> {
        let total = msgs.len();
        let mut answers = Vec::with_capacity(total);
        let mut rest = msgs.into_iter();
        while answers.len() < total {
            let chunk: Vec<ChatMessage> = rest.by_ref().take(DELIVER_CHUNK).collect();
            let got = join_all(chunk.into_iter().map(|m| self.deliver(member, m))).await;
            let unreachable = got.contains(&Delivery::Unreachable);
            answers.extend(got);
            if unreachable {
                answers.resize(total, Delivery::Unreachable);
            }
        }
        answers
    }

    /// [`Peers::deliver`], with the member's away message when it answered
    /// that its person is away. It goes over the member's link, in a batch
    /// with whatever else is on its way there.
    pub async fn deliver_answered(
        &self,
        member: &Member,
        msg: ChatMessage,
    ) -> (Delivery, Option<String>) {
        let address = member.address.as_str();
        let link = match self.link(member) {
            Ok(link) => link,
            Err(err) => {
                // An address that cannot be parsed today may be replaced by
                // a good one when the member logs in again, and a changed
                // key may be trusted: not a refusal, the message waits.
                tracing::debug!(%err, "not delivering");
                self.metrics.delivery(Delivery::Unreachable.label());
                return (Delivery::Unreachable, None);
            }
        };
        let answer = match tokio::time::timeout(CALL_DEADLINE, link.deliver(msg)).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::debug!(address, "deliver timed out");
                (Delivery::Unreachable, None)
            }
        };
        match answer.0 {
            Delivery::Unreachable => self.mark_down(address),
            _ => self.mark_up(address),
        }
        self.metrics.delivery(answer.0.label());
        answer
    }

    /// The link to `member`, kept with its channel; a new one when there
    /// is none or the last one ended. Trust is checked as for [`Peers::client`].
    fn link(&self, member: &Member) -> Result<link::Link, NetError> {
        let raw: [u8; 32] = member
            .key
            .as_slice()
            .try_into()
            .map_err(|_| NetError::BadKey(member.nick.clone()))?;
        // The usual case, once per message: the link is open. One lookup,
        // no client built, no slot key allocated.
        let open = {
            let mut channels = self.lock_channels();
            let slot = slot_of(member, &raw);
            channels.get_mut(&slot as &dyn SlotParts).and_then(|kept| {
                kept.used = Instant::now();
                let link = kept.link.as_ref().filter(|l| !l.is_closed())?;
                Some((link.clone(), kept.key))
            })
        };
        if let Some((link, key)) = open {
            // Trust is checked every time (a key may be trusted or not
            // since), outside the lock: it may write the known keys.
            self.keys.believe(&member.nick, &key)?;
            return Ok(link);
        }
        let client = self.client(member)?;
        let mut channels = self.lock_channels();
        let slot = slot_of(member, &raw);
        let Some(kept) = channels.get_mut(&slot as &dyn SlotParts) else {
            // Dropped from the cache just now: a link for this message.
            return Ok(link::Link::open(
                client,
                self.metrics.clone(),
                &self.tasks,
                self.stop.clone(),
            ));
        };
        match &kept.link {
            Some(link) if !link.is_closed() => Ok(link.clone()),
            _ => {
                let link =
                    link::Link::open(client, self.metrics.clone(), &self.tasks, self.stop.clone());
                kept.link = Some(link.clone());
                Ok(link)
            }
        }
    }

    /// Records that `address` did not answer in time.
    pub fn mark_down(&self, address: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        // Entries older than DOWN_FOR mean nothing: drop them so the map
        // stays as small as the set of addresses failing now.
        down.retain(|_, t| t.elapsed() < DOWN_FOR);
        down.insert(address.to_owned(), Instant::now());
    }

    /// Records that `address` answered.
    pub fn mark_up(&self, address: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if !down.is_empty() {
            down.remove(address);
        }
    }

    /// Whether `address` failed to answer within the last [`DOWN_FOR`].
    pub fn is_down(&self, address: &str) -> bool {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.get(address).is_some_and(|t| t.elapsed() < DOWN_FOR)
    }
}

/// An endpoint with the settings every parley connection uses.
pub fn endpoint(address: &str) -> Result<Endpoint, NetError> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| NetError::BadAddress(address.to_owned()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// A listener on a free port of 127.0.0.1 (port 0): where the tests and the
/// bench serve.
pub async fn bind_loopback() -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_channel_cache_is_bounded() {
        let id = crate::identity::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let known = crate::trust::KnownKeys::open(&dir.path().join("known_keys")).unwrap();
        // Links believe keys met first-hand; the registry is never asked.
        struct Nobody;
        #[async_trait::async_trait]
        impl crate::trust::Registry for Nobody {
            async fn bound_key(&self, _: &str) -> Result<Option<PublicKey>, String> {
                Err("no registry here".into())
            }
        }
        let keys = Keys::new(known, Arc::new(Nobody), Arc::new(|_, _, _| {}));
        let peers = Peers::new(Tls::new(&id).unwrap(), keys);
        let key = crate::identity::Identity::generate().public().to_vec();
        for port in 0..(MAX_CHANNELS + 10) {
            let member = Member {
                nick: "bob".into(),
                address: format!("127.0.0.1:{}", 1 + port),
                key: key.clone(),
                relay: String::new(),
            };
            peers.client(&member).unwrap();
        }
        assert_eq!(peers.cached(), MAX_CHANNELS);
    }

    #[test]
    fn only_definite_answers_are_refusals() {
        assert_eq!(Delivery::of_status(Code::Ok), Delivery::Stored);
        assert_eq!(
            Delivery::of_status(Code::PermissionDenied),
            Delivery::Refused
        );
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert_eq!(Delivery::of_status(code), Delivery::Unreachable);
        }
    }
}
