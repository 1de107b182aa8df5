//! The client side of the router, shared by the peer's session, the tests
//! and the bench: a router client over a TLS link ([`client`]), the login
//! handshake ([`login`]: a challenge, the router's dial-back, a signed
//! login), and [`Routers`], the list a peer talks to: one in use, the next
//! when it stops answering, each router's key pinned on first contact, and
//! every failure mapped to a [`SessionError`] in one place.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::identity::{login_bytes, Identity};
use crate::proto::{self, router_client::RouterClient};
use crate::tls::{Expect, Tls};
use crate::trust::{KnownKeys, Trust};

/// How to start a router at `addr`: `router --listen` takes IP:PORT, so
/// a host name gets the general form rather than a command it refuses.
fn start_hint(addr: &str) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        format!("start one with `router --listen {addr}`")
    } else {
        "is one running there? (`router --listen IP:PORT` starts one)".to_owned()
    }
}

/// Errors of talking to the router.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no router at {addr}: {}", start_hint(addr))]
    Unreachable { addr: String },
    /// None of several routers answered.
    #[error("no router answers at any of {addrs}")]
    NoneAnswers { addrs: String },
    #[error("nick {0} is taken by someone else (another key holds it)")]
    NickTaken(String),
    #[error("{0}")]
    RouterKey(String),
    #[error("{0}")]
    NotFound(String),
    /// The router answered no, for a reason it gives.
    #[error("router refused {what}: {message}")]
    Refused {
        what: &'static str,
        code: Code,
        message: String,
    },
}

impl SessionError {
    /// True when the router could not be asked (as opposed to answering).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SessionError::Unreachable { .. } | SessionError::NoneAnswers { .. }
        )
    }
}

/// The name a router's key is kept under in the known keys: nicks cannot
/// hold an `@`.
pub fn router_name(address: &str) -> String {
    format!("router@{address}")
}

/// A client of the router at `address`, over a lazily connected TLS link
/// presenting `tls`'s key, to a router that must present the key `expect`
/// holds.
pub fn client(
    tls: &Tls,
    address: &str,
    expect: Expect,
) -> Result<RouterClient<Channel>, crate::net::NetError> {
    let endpoint = crate::net::endpoint(address)?;
    Ok(RouterClient::new(tls.channel(endpoint, address, expect)))
}

/// A login request for `nick` at `address`, proven by `identity`'s
/// signature over the router's `challenge`, publishing its mailbox key.
pub fn login_request(
    identity: &Identity,
    nick: &str,
    address: &str,
    challenge: Vec<u8>,
) -> proto::LoginRequest {
    let key = identity.public();
    let signature = identity.sign(&login_bytes(&challenge, nick, address, &key));
    let mailbox = crate::seal::Mailbox::of(identity).publish(identity);
    proto::LoginRequest {
        nick: nick.to_owned(),
        address: address.to_owned(),
        key: key.to_vec(),
        challenge,
        signature,
        mailbox_key: mailbox.key,
        mailbox_signature: mailbox.signature,
    }
}

/// Logs `nick` in at `address` as `identity`: asks for a challenge (with
/// `dial_back`, the router first dials `address` back and the login
/// records whether it could), signs it, logs in.
pub async fn login(
    mut router: RouterClient<Channel>,
    identity: &Identity,
    nick: &str,
    address: &str,
    dial_back: bool,
) -> Result<proto::LoginResponse, Status> {
    let ask = if dial_back {
        proto::ChallengeRequest {
            address: address.to_owned(),
            key: identity.public().to_vec(),
        }
    } else {
        proto::ChallengeRequest::default()
    };
    let challenge = router.login_challenge(ask).await?.into_inner().challenge;
    let req = login_request(identity, nick, address, challenge);
    Ok(router.user_login(req).await?.into_inner())
}

/// One router a peer may talk to.
struct Link {
    addr: String,
    client: RouterClient<Channel>,
    /// The router key the link must present (pinned, given, or the first
    /// one seen).
    expect: Expect,
    /// Its key is in the known keys.
    pinned: AtomicBool,
}

/// What [`Routers`] tells its owner: an outage begins (`false`) or ends
/// (`true`); another router is now in use.
pub struct Hooks {
    pub outage: Box<dyn Fn(bool) + Send + Sync>,
    pub moved: Box<dyn Fn() + Send + Sync>,
}

/// The routers a peer talks to, in the order they are tried.
pub struct Routers {
    links: Vec<Link>,
    current: AtomicUsize,
    /// No router answered the last call that needed one: an outage the
    /// owner has been told of.
    lost: AtomicBool,
    known: KnownKeys,
    /// Named in a taken nick's error.
    nick: String,
    hooks: Hooks,
}

impl Routers {
    /// Links to every router of `addrs`, presenting `tls`'s key. Each
    /// router must present the key given for it in `router_keys` (one for
    /// all, or one per router in order), else the one pinned in `known`,
    /// else whatever answers first (then pinned).
    pub fn new(
        addrs: &[String],
        router_keys: &[String],
        tls: &Tls,
        known: KnownKeys,
        nick: &str,
        hooks: Hooks,
    ) -> Result<Routers, SessionError> {
        if addrs.is_empty() {
            return Err(SessionError::Unreachable {
                addr: String::new(),
            });
        }
        if router_keys.len() > 1 && router_keys.len() != addrs.len() {
            return Err(SessionError::RouterKey(format!(
                "{} router keys for {} routers: give one key for all, or one per router in \
                 the same order",
                router_keys.len(),
                addrs.len()
            )));
        }
        let mut links = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            let given = match router_keys {
                [one] => Some(one),
                keys => keys.get(i),
            };
            let expect = match (given, known.get(&router_name(addr))) {
                (Some(fp), _) => Expect::fingerprint(fp.clone()),
                (None, Some(pinned)) => Expect::key(&pinned),
                (None, None) => Expect::first_seen(),
            };
            let client = client(tls, addr, expect.clone())
                .map_err(|_| SessionError::Unreachable { addr: addr.clone() })?;
            links.push(Link {
                addr: addr.clone(),
                client,
                expect,
                pinned: AtomicBool::new(false),
            });
        }
        Ok(Routers {
            links,
            current: AtomicUsize::new(0),
            lost: AtomicBool::new(false),
            known,
            nick: nick.to_owned(),
            hooks,
        })
    }

    /// How many routers there are.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Never: a list is made with at least one router.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The router in use, and its index.
    fn link(&self) -> (usize, &Link) {
        let i = self.current.load(Ordering::Acquire) % self.links.len();
        (i, &self.links[i])
    }

    /// The address of the router in use.
    pub fn current(&self) -> &str {
        &self.link().1.addr
    }

    /// A client of the router in use (for a call that must not move on,
    /// as a logout).
    pub fn current_client(&self) -> RouterClient<Channel> {
        self.link().1.client.clone()
    }

    /// A router answered (whatever it said): an outage, if there was one,
    /// is over.
    fn answered(&self) {
        if self.lost.swap(false, Ordering::AcqRel) {
            tracing::info!("a router answers again");
            (self.hooks.outage)(true);
        }
    }

    /// No router could be asked: the start of an outage, unless one is on.
    fn unanswered(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            (self.hooks.outage)(false);
        }
    }

    /// The router at `from` stopped answering: move to the next one (if
    /// there are several and no other task moved already). Returns whether
    /// another router is now in use.
    fn fail_over(&self, from: usize) -> bool {
        let n = self.links.len();
        if n < 2 {
            return false;
        }
        let to = (from + 1) % n;
        let moved = self
            .current
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            tracing::debug!(
                from = %self.links[from].addr,
                to = %self.links[to].addr,
                "router stopped answering; moving to the next"
            );
            (self.hooks.moved)();
        }
        true
    }

    /// Whether `status` says the router could not be asked (it is gone, or
    /// it cannot reach its own registry), so another router may answer.
    fn is_unreachable(status: &Status) -> bool {
        matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        )
    }

    fn error(&self, what: &'static str, status: Status, link: &Link) -> SessionError {
        if Self::is_unreachable(&status) {
            if let Some(refusal) = link.expect.refused() {
                return SessionError::RouterKey(format!(
                    "{refusal}; if the router's key changed on purpose, start with \
                     --router-key {}",
                    refusal.got
                ));
            }
            return match self.links.as_slice() {
                [one] => SessionError::Unreachable {
                    addr: one.addr.clone(),
                },
                many => SessionError::NoneAnswers {
                    addrs: many
                        .iter()
                        .map(|l| l.addr.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                },
            };
        }
        match status.code() {
            Code::AlreadyExists => SessionError::NickTaken(self.nick.clone()),
            Code::NotFound => SessionError::NotFound(status.message().to_owned()),
            code => SessionError::Refused {
                what,
                code,
                message: status.message().to_owned(),
            },
        }
    }

    /// Runs `f` against the router in use, moving on to the next router
    /// each time one cannot be asked, until every one has been tried.
    pub async fn on_any<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, SessionError>
    where
        F: Fn(RouterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tries = self.links.len();
        let mut left: Option<&str> = None;
        loop {
            let (i, link) = self.link();
            match f(link.client.clone()).await {
                Ok(v) => {
                    self.answered();
                    self.pin(link);
                    if let Some(from) = left {
                        // Said once, when it worked: a list of routers none
                        // of which answers ends in one error instead.
                        tracing::warn!(from, to = %link.addr, "router stopped answering; moved to the next");
                    }
                    return Ok(v);
                }
                Err(s) if Self::is_unreachable(&s) && tries > 1 && self.fail_over(i) => {
                    tracing::debug!(router = %link.addr, status = %s, what, "trying the next router");
                    left.get_or_insert(link.addr.as_str());
                    tries -= 1;
                }
                Err(s) => {
                    if Self::is_unreachable(&s) {
                        self.unanswered();
                    } else {
                        self.answered();
                    }
                    return Err(self.error(what, s, link));
                }
            }
        }
    }

    /// Remembers the key `link`'s router presented, the first time one
    /// answers (each router of several has its own).
    fn pin(&self, link: &Link) {
        if link.pinned.load(Ordering::Acquire) {
            return;
        }
        let Some(key) = link.expect.seen() else {
            return;
        };
        match self.known.check(&router_name(&link.addr), &key) {
            Ok((Trust::New, _)) => {
                tracing::info!(router = %link.addr, key = %key, "pinned the router's key")
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(cause = %err, "cannot remember the router's key");
                return;
            }
        }
        link.pinned.store(true, Ordering::Release);
    }
}
