//! The sealed envelopes a router keeps for recipients who are offline, and
//! the mailbox keys peers publish: one store trait, kept in SQLite beside
//! the in-memory registry's file (`sqlite`) or in etcd beside the shared
//! registry (`etcd`), so every router of one registry serves the same
//! mailboxes.
//!
//! A store holds ciphertext it cannot open (see `seal`), keyed by the
//! recipient's identity key, never by a nick. It enforces each mailbox's
//! quota (count and bytes) as it writes, counts what the age limit
//! removed, and writes every deposit durably before it answers. Who may
//! deposit and how fast is the router's business (`router::mailbox`).

mod etcd;
mod sqlite;

pub use etcd::{EtcdMail, MAIL_PREFIX};
pub use sqlite::{SqliteMail, MAILBOX_FILE};

use crate::identity::PublicKey;
use crate::seal::MailboxKey;

/// How much one mailbox may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Envelopes.
    pub count: u64,
    /// Bytes of envelopes (their sealed bytes).
    pub bytes: u64,
}

/// Envelopes one session deposits for one recipient, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    /// The depositing session's key (bound into each seal).
    pub from: PublicKey,
    /// Its nick, as it logged in.
    pub from_nick: String,
    /// Wall-clock milliseconds of the deposit: the age limit counts from it.
    pub at_ms: i64,
    pub envelopes: Vec<Vec<u8>>,
}

/// One envelope as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The store's name for it: unique within the mailbox, and ordered as
    /// deposited (within one store; across routers, by deposit time).
    pub id: String,
    pub from: PublicKey,
    pub from_nick: String,
    pub at_ms: i64,
    pub sealed: Vec<u8>,
}

/// What a mailbox hands over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Oldest first.
    pub envelopes: Vec<Envelope>,
    /// Envelopes the age limit removed unread, not yet acknowledged.
    pub expired: u64,
    /// More envelopes wait than `envelopes` holds.
    pub more: bool,
}

/// Errors of a mail store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The mailbox holds its quota: nothing more fits until it is drained.
    #[error("the mailbox is full ({0})")]
    Full(String),
    /// The backing store (the file, etcd) cannot be reached or failed.
    #[error("mail store unavailable: {0}")]
    Unavailable(String),
}

/// Where a router keeps mailboxes. Safe under concurrent calls, also from
/// several routers sharing one store (etcd): a quota is never exceeded.
#[async_trait::async_trait]
pub trait MailStore: Send + Sync + 'static {
    /// Keeps `key` as the mailbox key `owner` published (the caller has
    /// checked its signature), replacing any before.
    async fn publish(&self, owner: &PublicKey, key: &MailboxKey) -> Result<(), MailError>;

    /// The mailbox key `owner` published last, if any.
    async fn published(&self, owner: &PublicKey) -> Result<Option<MailboxKey>, MailError>;

    /// Stores `deposit`'s envelopes in `to`'s mailbox, from the first, as
    /// many as fit in `quota`; returns how many, all durable by then.
    /// `Full` when not even the first fits.
    async fn deposit(
        &self,
        to: &PublicKey,
        deposit: Deposit,
        quota: Quota,
    ) -> Result<usize, MailError>;

    /// The oldest `limit` envelopes of `to`'s mailbox.
    async fn list(&self, to: &PublicKey, limit: usize) -> Result<Listing, MailError>;

    /// Deletes `ids` from `to`'s mailbox (unknown ones are ignored) and
    /// takes `expired` off its expired count (never below zero).
    async fn ack(&self, to: &PublicKey, ids: &[String], expired: u64) -> Result<(), MailError>;

    /// How many envelopes wait in `to`'s mailbox.
    async fn waiting(&self, to: &PublicKey) -> Result<u64, MailError>;

    /// Removes every envelope deposited before `before_ms`, counting them
    /// as expired in their mailboxes; returns how many it removed.
    async fn expire(&self, before_ms: i64) -> Result<u64, MailError>;
}
