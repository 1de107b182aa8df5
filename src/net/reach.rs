//! Reaching a peer nobody can dial, and being that peer.
//!
//! A member whose registry entry names a relay router cannot be dialed at
//! its address. A sender that can itself be dialed asks that router to
//! have the member dial it (a connection reversal: [`crate::tls::Reversals`]
//! takes the connection, and the sender runs the TLS client over it, so
//! the member serves its chat service as usual); a sender that cannot, or
//! whose reversal does not arrive in time, opens a relay circuit through
//! the router. Either way the result is a byte stream under the same
//! end-to-end TLS and the same kept channel as a direct connection, so
//! links, batches and answers are unchanged above it.
//!
//! [`serve_incoming`] is the member's side: what its reservation asks for
//! (a dial-back, a circuit) becomes a connection its chat service serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::Channel;

use crate::identity::PublicKey;
use crate::proto::router_client::RouterClient;
use crate::proto::{incoming, Incoming, ReachRequest};
use crate::tls::{Dial, Expect, Io, Reversals, Tls, TlsConn, REVERSE_PREAMBLE};

/// How long a sender waits for a member to dial it back before it opens a
/// relay circuit instead.
pub const REVERSAL_WAIT: Duration = Duration::from_secs(2);
/// Dial-backs and circuits a member sets up at once; more wait.
const SETUPS: usize = 16;

/// Who this peer is to those it asks to dial it back, and whether it can
/// be dialed at all (as its router last found). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Me {
    inner: Arc<MeInner>,
}

#[derive(Debug, Default)]
struct MeInner {
    nick: Mutex<String>,
    advertise: Mutex<String>,
    reachable: AtomicBool,
}

impl Me {
    pub fn new(nick: &str, advertise: &str) -> Me {
        let me = Me::default();
        *lock(&me.inner.nick) = nick.to_owned();
        *lock(&me.inner.advertise) = advertise.to_owned();
        // Until a router says otherwise, as a login with no check is.
        me.inner.reachable.store(true, Ordering::Release);
        me
    }

    pub fn nick(&self) -> String {
        lock(&self.inner.nick).clone()
    }

    pub fn advertise(&self) -> String {
        lock(&self.inner.advertise).clone()
    }

    /// Whether the router could dial this peer back at its last login.
    pub fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Acquire)
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.inner.reachable.store(reachable, Ordering::Release);
    }
}

/// Router clients for the relay routers of members, by address. The
/// router's key is not pinned: it only passes asks and ciphertext on.
#[derive(Clone, Default)]
pub struct RelayRouters {
    clients: Arc<Mutex<HashMap<String, RouterClient<Channel>>>>,
}

/// Relay routers kept at once (a peer meets few).
const MAX_RELAY_ROUTERS: usize = 64;

impl RelayRouters {
    fn client(&self, tls: &Tls, address: &str) -> std::io::Result<RouterClient<Channel>> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_RELAY_ROUTERS {
            clients.clear();
        }
        let client = crate::router_client::client(tls, address, Expect::first_seen())
            .map_err(std::io::Error::other)?;
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

/// How each connection to `key` (a member reserved at the router `relay`)
/// is made: reversed when this peer can be dialed, else (or when the
/// member does not dial in time) over a relay circuit.
pub fn dial_relayed(
    tls: Tls,
    me: Me,
    reversals: Reversals,
    routers: RelayRouters,
    relay: String,
    key: PublicKey,
) -> Dial {
    Arc::new(move || {
        let (tls, me, reversals, routers, relay) = (
            tls.clone(),
            me.clone(),
            reversals.clone(),
            routers.clone(),
            relay.clone(),
        );
        Box::pin(async move {
            if me.reachable() {
                match reversed(&tls, &me, &reversals, &routers, &relay, &key).await {
                    Ok(io) => return Ok(io),
                    Err(err) => tracing::debug!(%key, %err, "no reversal; relaying"),
                }
            }
            crate::relay::connect(&tls, &relay, key.as_bytes(), &me.nick()).await
        })
    })
}

/// Asks the member's router to have it dial this peer, and waits for the
/// connection.
async fn reversed(
    tls: &Tls,
    me: &Me,
    reversals: &Reversals,
    routers: &RelayRouters,
    relay: &str,
    key: &PublicKey,
) -> std::io::Result<Io> {
    let (nonce, arrives) = reversals
        .expect()
        .ok_or_else(|| std::io::Error::other("too many reversals waited for"))?;
    let mut router = routers.client(tls, relay)?;
    let ask = ReachRequest {
        target: key.to_vec(),
        nick: me.nick(),
        address: me.advertise(),
        nonce: nonce.to_vec(),
    };
    tokio::time::timeout(REVERSAL_WAIT, router.reach(ask))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the router did not answer")
        })?
        .map_err(|s| std::io::Error::other(format!("the router refused: {}", s.message())))?;
    let tcp = tokio::time::timeout(REVERSAL_WAIT, arrives)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no dial-back in time"))?
        .map_err(|_| std::io::Error::other("the reversal was dropped"))?;
    Ok(Box::new(tcp))
}

/// The member's side: serves what its reservation at `router` asks for,
/// handing each connection made to `conns` (the chat service's incoming),
/// until the reservation stream ends.
pub async fn serve_incoming(
    tls: Tls,
    router: String,
    mut asks: tonic::Streaming<Incoming>,
    conns: mpsc::Sender<TlsConn>,
) {
    let setups = Arc::new(Semaphore::new(SETUPS));
    loop {
        let ask = match asks.message().await {
            Ok(Some(ask)) => ask,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "the reservation ended");
                return;
            }
        };
        let Ok(permit) = setups.clone().acquire_owned().await else {
            return;
        };
        let (tls, router, conns) = (tls.clone(), router.clone(), conns.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let made = match ask.kind {
                Some(incoming::Kind::Dial(d)) => {
                    dial_back(&tls, &d.address, &d.key, &d.nonce).await
                }
                Some(incoming::Kind::Circuit(c)) => {
                    take_circuit(&tls, &router, c.id, &c.from).await
                }
                Some(incoming::Kind::Reserved(_)) | None => return,
            };
            match made {
                Ok(conn) => {
                    let _ = conns.send(conn).await;
                }
                Err(err) => tracing::debug!(%err, "could not take an incoming connection"),
            }
        });
    }
}

/// Dials `address` for a reversal and serves it as TLS server to `key`.
async fn dial_back(tls: &Tls, address: &str, key: &[u8], nonce: &[u8]) -> std::io::Result<TlsConn> {
    let mut tcp = tokio::time::timeout(
        super::CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "dial-back timed out"))??;
    tcp.set_nodelay(true)?;
    let mut head = REVERSE_PREAMBLE.to_vec();
    head.extend_from_slice(nonce);
    tcp.write_all(&head).await?;
    let conn = tls.accept(Box::new(tcp)).await?;
    expect_caller(conn, key)
}

/// Takes circuit `id` at `router` and serves it as TLS server to `from`.
async fn take_circuit(tls: &Tls, router: &str, id: u64, from: &[u8]) -> std::io::Result<TlsConn> {
    let io = crate::relay::accept(tls, router, id).await?;
    let conn = tls.accept(io).await?;
    expect_caller(conn, from)
}

/// Keeps `conn` only if the one at its other end is the key the router
/// named: nobody else gets in by a dial-back or a circuit.
fn expect_caller(conn: TlsConn, key: &[u8]) -> std::io::Result<TlsConn> {
    if conn.caller().key.as_bytes().as_slice() == key {
        Ok(conn)
    } else {
        Err(std::io::Error::other("another key than the one announced"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
