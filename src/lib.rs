//! parley: a peer-to-peer chat over gRPC.
//!
//! # Layout
//!
//! `docs/architecture.md` draws the same map with the direction of every
//! dependency; the benchmark is its own package (`bench/`).
//!
//! - [`proto`]: the generated wire types and services (`parley.v1`).
//! - [`client`]: the terminal client: commands in, a peer driven, events out.
//! - [`identity`]: a peer's or router's ed25519 key, kept in a 0600 file,
//!   and the exact bytes messages and logins sign.
//! - [`logging`]: how the binaries start: tracing to stderr (or, for a peer on
//!   a terminal, to its log file), runtime, exit code.
//! - [`mailbox`]: the sealed envelopes a router keeps for offline
//!   recipients: one store trait, in SQLite or in etcd, with quotas and
//!   the age limit.
//! - [`message`]: what makes a message from the wire valid; the wall clock.
//! - [`metrics`]: a router's or a peer's Prometheus figures, one registry
//!   each, and the HTTP server that answers `GET /metrics`.
//! - [`names`]: nick, room and conversation names, and the rules they follow.
//! - [`net`]: channels to other peers (a bounded cache, deadlines), the
//!   long-lived `Link` stream per channel that carries every delivery in
//!   batches, and what an answer means.
//! - [`peer`]: the [`peer::Peer`] handle over its parts: the router session
//!   and the picture of the world, fan-out and the outbox, the `Chat`
//!   service, the rooms kept across restarts, the events for the person.
//! - [`registry`]: who is online and who sits in which room, with leases;
//!   one trait, an in-memory implementation.
//! - [`router`]: the `Router` gRPC service over a registry, its server, and
//!   a handle to run one in-process.
//! - [`seal`]: HPKE sealing of mail to a recipient's published mailbox
//!   key, derived from its identity.
//! - [`shutdown`]: one signal future for Ctrl-C and SIGTERM.
//! - [`store`]: a peer's durable history in SQLite: messages, versions,
//!   version vectors, the outbox, the rooms it is in, and its identity.
//! - [`sync`]: catching up from the other members: join syncs,
//!   anti-entropy, gap repair, pushing own messages.
//! - [`tls`]: TLS 1.3 links with a self-signed certificate of the identity
//!   key on each side; the caller's key for every request served.
//! - [`trust`]: the keys met first for each nick and router (trust on first
//!   use), and the changed ones waiting for `/trust`.
//! - [`terminal`]: the command parser, the output events (human or JSON) and
//!   terminal input that printing never garbles.

pub mod client;
pub mod identity;
pub mod logging;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod names;
pub mod net;
pub mod peer;
pub mod proto;
pub mod registry;
pub mod relay;
pub mod router;
pub mod router_client;
pub mod seal;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod terminal;
pub mod tls;
pub mod trust;
