//! The router's side of mailboxes: who may deposit what, how much and how
//! fast, handing a mailbox only to its owner's session, and the age limit's
//! sweep. What is kept, and where, is the registry's mail store
//! (`crate::mailbox`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::limits::{BindingRate, Buckets};
use crate::identity::PublicKey;
use crate::mailbox::{Deposit, Listing, MailError, MailStore, Quota};
use crate::message::now_ms;
use crate::metrics::RouterMetrics;
use crate::seal::{MailboxKey, SEAL_OVERHEAD};

/// Most envelopes one deposit may carry (proto `DepositRequest`).
pub const MAX_DEPOSIT: usize = 256;
/// Largest envelope: a message of 10,000 characters (40,000 bytes at
/// most), its fields and signature, sealed, fits with room to spare, and a
/// deposit of one stays under the router's request limit.
pub const MAX_ENVELOPE: usize = 48 * 1024;
/// Most envelopes one drain hands over.
pub const MAX_DRAIN: usize = 256;

/// What the router's mailboxes allow; the defaults are `router`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailLimits {
    /// What one mailbox may hold.
    pub quota: Quota,
    /// How fast one sender's key may deposit envelopes (all mailboxes
    /// together): a burst, then one per interval.
    pub rate: BindingRate,
    /// How long an envelope waits before it is removed unread.
    pub max_age: Duration,
}

impl Default for MailLimits {
    /// 10,000 envelopes or 64 MiB a mailbox (a few weeks of a busy
    /// conversation); 1,000 envelopes at once from one sender, then ten a
    /// second; 30 days, as Briar's mailbox keeps files.
    fn default() -> Self {
        MailLimits {
            quota: Quota {
                count: 10_000,
                bytes: 64 * 1024 * 1024,
            },
            rate: BindingRate {
                burst: 1000,
                every: Duration::from_millis(100),
            },
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// How often the age limit's sweep runs (and once soon after start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
const FIRST_SWEEP: Duration = Duration::from_secs(5);

impl From<MailError> for Status {
    fn from(err: MailError) -> Status {
        match err {
            MailError::Full(why) => Status::resource_exhausted(format!(
                "the recipient's mailbox is full ({why}); the message stays owed"
            )),
            MailError::Unavailable(cause) => {
                tracing::error!(%cause, "mail store failed");
                Status::unavailable("the router's mail store is unavailable; try later")
            }
        }
    }
}

/// The mailboxes as one router serves them.
pub struct Mailboxes {
    store: Arc<dyn MailStore>,
    limits: MailLimits,
    /// Per sender key.
    rate: Buckets<PublicKey>,
    /// Counts what the age limit removes.
    metrics: RouterMetrics,
}

/// What a deposit did: how many were stored, and why the rest were not.
pub struct Deposited {
    pub stored: usize,
    pub refused: Option<Status>,
}

impl Mailboxes {
    /// Serves `store` under `limits`; sweeps expired envelopes until `stop`.
    pub fn new(
        store: Arc<dyn MailStore>,
        limits: MailLimits,
        metrics: RouterMetrics,
        stop: CancellationToken,
    ) -> Arc<Mailboxes> {
        let mailboxes = Arc::new(Mailboxes {
            rate: Buckets::new(limits.rate),
            store,
            limits,
            metrics,
        });
        tokio::spawn(sweep(mailboxes.clone(), stop));
        mailboxes
    }

    /// Keeps the mailbox key a login published (the login checked that
    /// its key signed it).
    pub async fn publish(&self, owner: &PublicKey, key: MailboxKey) -> Result<(), Status> {
        Ok(self.store.publish(owner, &key).await?)
    }

    /// The mailbox key `owner` published, if any.
    pub async fn published(&self, owner: &PublicKey) -> Result<Option<MailboxKey>, Status> {
        Ok(self.store.published(owner).await?)
    }

    /// Stores `envelopes` from `from` (nick `from_nick`) for `to`, as many
    /// as the sender's rate and the mailbox's quota allow, from the first.
    pub async fn deposit(
        &self,
        (from, from_nick): (&PublicKey, &str),
        to: &PublicKey,
        envelopes: Vec<Vec<u8>>,
    ) -> Result<Deposited, Status> {
        if envelopes.len() > MAX_DEPOSIT {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_DEPOSIT} envelopes a deposit"
            )));
        }
        if let Some(bad) = envelopes
            .iter()
            .find(|e| e.len() < SEAL_OVERHEAD || e.len() > MAX_ENVELOPE)
        {
            return Err(Status::invalid_argument(format!(
                "an envelope of {} bytes: each is a seal of {SEAL_OVERHEAD} to {MAX_ENVELOPE} bytes",
                bad.len()
            )));
        }
        let want = u32::try_from(envelopes.len()).unwrap_or(u32::MAX);
        let (allowed, wait) = self.rate.take_up_to(*from, want);
        let mut envelopes = envelopes;
        let rated = (allowed as usize) < envelopes.len();
        envelopes.truncate(allowed as usize);
        let rate_refusal = || {
            Status::resource_exhausted(format!(
                "too many envelopes from this key; the next in {} ms",
                wait.unwrap_or_default().as_millis().max(1)
            ))
        };
        if envelopes.is_empty() {
            return Ok(Deposited {
                stored: 0,
                refused: Some(rate_refusal()),
            });
        }
        let offered = envelopes.len();
        let deposit = Deposit {
            from: *from,
            from_nick: from_nick.to_owned(),
            at_ms: now_ms(),
            envelopes,
        };
        match self.store.deposit(to, deposit, self.limits.quota).await {
            Ok(stored) if stored < offered => Ok(Deposited {
                stored,
                refused: Some(Status::from(MailError::Full("its quota".into()))),
            }),
            Ok(stored) => Ok(Deposited {
                stored,
                refused: rated.then(rate_refusal),
            }),
            Err(err @ MailError::Full(_)) => Ok(Deposited {
                stored: 0,
                refused: Some(err.into()),
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// The oldest envelopes of `owner`'s mailbox.
    pub async fn list(&self, owner: &PublicKey, limit: usize) -> Result<Listing, Status> {
        Ok(self.store.list(owner, limit.clamp(1, MAX_DRAIN)).await?)
    }

    pub async fn ack(&self, owner: &PublicKey, ids: &[String], expired: u64) -> Result<(), Status> {
        if ids.len() > MAX_DRAIN {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_DRAIN} ids an ack"
            )));
        }
        Ok(self.store.ack(owner, ids, expired).await?)
    }

    /// How many envelopes wait for `owner` (0 if the store cannot say: a
    /// heartbeat is not failed for it).
    pub async fn waiting(&self, owner: &PublicKey) -> u64 {
        match self.store.waiting(owner).await {
            Ok(n) => n,
            Err(err) => {
                tracing::debug!(cause = %err, "cannot count a mailbox");
                0
            }
        }
    }
}

/// Removes envelopes past the age limit, soon after start and then every
/// [`SWEEP_EVERY`] (as Briar's mailbox does).
async fn sweep(mailboxes: Arc<Mailboxes>, stop: CancellationToken) {
    let mut wait = FIRST_SWEEP;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = SWEEP_EVERY;
        let age = i64::try_from(mailboxes.limits.max_age.as_millis()).unwrap_or(i64::MAX);
        match mailboxes.store.expire(now_ms().saturating_sub(age)).await {
            Ok(0) => {}
            Ok(n) => {
                mailboxes.metrics.mail_expired(n);
                tracing::info!(expired = n, "mailbox envelopes past the age limit removed");
            }
            Err(err) => tracing::warn!(cause = %err, "cannot sweep mailboxes"),
        }
    }
}
