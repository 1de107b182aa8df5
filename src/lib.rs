//! parley: a peer-to-peer chat over gRPC.
//!
//! # Layout
//!
//! - [`proto`]: the generated wire types and services (`parley.v1`).
//! - [`client`]: the terminal client: commands in, a peer driven, events out.
//! - [`logging`]: how the binaries start: tracing to stderr, runtime, exit code.
//! - [`message`]: what makes a message from the wire valid; the wall clock.
//! - [`names`]: nick, room and conversation names, and the rules they follow.
//! - [`net`]: channels to other peers, kept per address, with deadlines.
//! - [`peer`]: the peer: chat service, router session, sending, outbox.
//! - [`registry`]: who is online and who sits in which room, with leases;
//!   one trait, an in-memory implementation.
//! - [`router`]: the `Router` gRPC service over a registry, and its server.
//! - [`shutdown`]: one signal future for Ctrl-C and SIGTERM.
//! - [`store`]: a peer's durable history in SQLite: messages, versions,
//!   version vectors, the outbox, and the peer's identity.
//! - [`sync`]: catching up on a conversation from the other members.
//! - [`terminal`]: the command parser, the output events (human or JSON) and
//!   terminal input that printing never garbles.

pub mod client;
pub mod logging;
pub mod message;
pub mod names;
pub mod net;
pub mod peer;
pub mod proto;
pub mod registry;
pub mod router;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod terminal;
