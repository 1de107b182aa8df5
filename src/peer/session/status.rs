//! What the router is told of the person (`Router.SetPresence`): the away
//! message and how long since they last sent a line. The whole state goes
//! each time, so telling it again (after a login, after a failed try) is
//! always right.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use super::{Session, SessionError};
use crate::proto;

/// Lines closer together than this are told once: idle time is shown in
/// seconds, and a fast typist (or a script) must not cost a call a line.
/// A line not told is told with the next heartbeat.
const ACTIVE_GRAIN: Duration = Duration::from_secs(1);

/// The person's activity as this peer knows it.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// When the person last sent a line.
    last: Option<Instant>,
    /// When a line was last told at once (see [`ACTIVE_GRAIN`]).
    told: Option<Instant>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Session {
    fn presence_request(&self, token: String) -> proto::PresenceRequest {
        let last = self
            .inner
            .activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last;
        proto::PresenceRequest {
            token,
            away: self
                .inner
                .config
                .away
                .get()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            idle_ms: last.map(|at| ms(at.elapsed())),
        }
    }

    /// Marks the person away with `message`, or back with `None`, here and
    /// at the router. A message the router refuses changes nothing; a
    /// router that cannot be asked now is told later (the next heartbeat
    /// or login), the away state kept meanwhile.
    pub async fn set_away(&self, message: Option<&str>) -> Result<(), SessionError> {
        let away = &self.inner.config.away;
        let before = away.get();
        away.set(message);
        match self.tell_presence().await {
            Ok(()) => Ok(()),
            Err(err)
                if matches!(
                    err,
                    SessionError::Refused {
                        code: Code::InvalidArgument,
                        ..
                    }
                ) =>
            {
                away.set(before.as_deref());
                Err(err)
            }
            Err(err) => {
                tracing::warn!(cause = %err, "cannot tell the router the away state yet");
                self.inner.presence_stale.store(true, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    /// The person sent a line (a message or an action they typed): told
    /// to the router at once, or with the next heartbeat when a line was
    /// told less than [`ACTIVE_GRAIN`] ago.
    pub fn note_active(&self) {
        let now = Instant::now();
        let at_once = {
            let mut a = self
                .inner
                .activity
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            a.last = Some(now);
            let due = a.told.is_none_or(|t| now.duration_since(t) >= ACTIVE_GRAIN);
            if due {
                a.told = Some(now);
            }
            due
        };
        if !at_once {
            self.inner.presence_stale.store(true, Ordering::SeqCst);
            return;
        }
        let s = self.clone();
        self.inner.tasks.spawn(async move {
            if let Err(err) = s.tell_presence().await {
                tracing::debug!(cause = %err, "activity not told; the next heartbeat tells it");
                s.inner.presence_stale.store(true, Ordering::SeqCst);
            }
        });
    }

    /// Tells the router the whole presence, logging in again if the
    /// session was lost.
    pub(super) async fn tell_presence(&self) -> Result<(), SessionError> {
        self.inner.presence_stale.store(false, Ordering::SeqCst);
        self.call("set presence", |mut r, token| {
            let req = self.presence_request(token);
            async move { r.set_presence(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Tells a new session's presence (from [`Session::login`], which holds
    /// the login guard: no new login from here). A failure is left for the
    /// next heartbeat.
    pub(super) async fn tell_presence_after_login(&self) {
        self.inner.presence_stale.store(false, Ordering::SeqCst);
        let req = self.presence_request(self.token());
        let told = self
            .on_any("set presence", |mut r| {
                let req = req.clone();
                async move { r.set_presence(req).await }
            })
            .await;
        if let Err(err) = told {
            tracing::warn!(cause = %err, "cannot tell the router the presence yet");
            self.inner.presence_stale.store(true, Ordering::SeqCst);
        }
    }

    /// Tells the presence if a change or a line was not told yet (from the
    /// heartbeat loop).
    pub(super) async fn tell_presence_if_stale(&self) {
        if self.inner.presence_stale.load(Ordering::SeqCst) {
            if let Err(err) = self.tell_presence().await {
                tracing::warn!(cause = %err, "cannot tell the router the presence yet");
                self.inner.presence_stale.store(true, Ordering::SeqCst);
            }
        }
    }
}
