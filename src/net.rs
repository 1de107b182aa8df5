//! Connections to other peers: one lazily connected HTTP/2 channel per peer
//! address, kept and reused for every call (never a connection per
//! message), each call under a deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::proto::chat_client::ChatClient;

/// Deadline of one `Deliver` (or version query) to one peer: a frozen or
/// vanished member must not stall the sender.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// How long a TCP connect to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest message a peer decodes: a history page is capped well below it.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Errors of reaching another peer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid peer address {0:?}")]
    BadAddress(String),
}

/// How long an address that failed to answer is skipped by senders.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// The channels to other peers, by address. Cheap to clone.
#[derive(Clone, Default)]
pub struct Peers {
    /// Held only to look up or insert a channel, never across an `.await`.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Addresses that last failed to answer, and when.
    down: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    /// A client for the peer at `address` (host:port), over the channel kept
    /// for it. Connecting happens on first use, and again after a failure.
    pub fn client(&self, address: &str) -> Result<ChatClient<Channel>, NetError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(address) {
            Some(c) => c.clone(),
            None => {
                let c = endpoint(address)?.connect_lazy();
                channels.insert(address.to_owned(), c.clone());
                c
            }
        };
        Ok(ChatClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Records that `address` did not answer in time.
    pub fn mark_down(&self, address: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
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
