//! Presence: the loops that keep the session's picture of the world
//! ([`World`]) current: the heartbeat that keeps the lease, the `Watch`
//! stream whose events feed the picture (opened again after a break, the
//! picture then rebuilt from the router), and what those events mean to
//! the peer ([`SessionEvent`]s).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tokio_stream::StreamExt;
use tonic::Code;

use super::{Session, SessionError, SessionEvent};
use crate::peer::world::Change;
use crate::proto;

impl Session {
    pub(super) async fn refresh_users(&self) {
        let token = self.token();
        let users = self
            .on_any("list users", |mut r| {
                let req = proto::ListUsersRequest {
                    token: token.clone(),
                };
                async move { r.list_users(req).await }
            })
            .await;
        match users {
            Ok(r) => self.inner.world.set_users(r.into_inner().users),
            // Logged out meanwhile, or stopping: the answer means nothing.
            Err(_) if self.inner.leaving.load(Ordering::SeqCst) => {}
            Err(_) if self.inner.stop.is_cancelled() => {}
            // The token lapsed under the call; the watch and the heartbeat
            // log in again, and the next login lists the users afresh.
            Err(
                err @ SessionError::Refused {
                    code: Code::Unauthenticated,
                    ..
                },
            ) => tracing::debug!(cause = %err, "cannot list users"),
            Err(err) => tracing::warn!(cause = %err, "cannot list users"),
        }
    }

    /// Sleeps, or returns true at once if the peer is stopping.
    pub(super) async fn sleep_or_stop(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.inner.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    pub(super) async fn heartbeat_loop(&self) {
        loop {
            let lease = *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner());
            // A third of the lease, with jitter so peers do not beat in step.
            let third = lease / 3;
            let jitter = rand::rng().random_range(0.8..1.0);
            if self.sleep_or_stop(third.mul_f64(jitter)).await {
                return;
            }
            let token = self.token();
            let req = proto::HeartbeatRequest {
                token: token.clone(),
            };
            let beat = self
                .on_any("heartbeat", |mut r| {
                    let req = req.clone();
                    async move { r.heartbeat(req).await }
                })
                .await;
            if self.inner.leaving.load(Ordering::SeqCst) {
                return; // logged out meanwhile: the answer means nothing
            }
            match beat {
                Ok(beat) if beat.get_ref().mail > 0 => {
                    self.emit(SessionEvent::Mail {
                        waiting: beat.get_ref().mail,
                    });
                    self.tell_presence_if_stale().await;
                }
                Ok(_) => self.tell_presence_if_stale().await,
                Err(SessionError::Refused {
                    code: Code::Unauthenticated,
                    ..
                }) => {
                    tracing::warn!("session lost; logging in again");
                    let _ = self.relogin(&token, true).await;
                }
                Err(err) => tracing::warn!(cause = %err, "heartbeat failed"),
            }
        }
    }

    pub(super) async fn watch_loop(&self) {
        let mut backoff = Backoff::new();
        let mut first = true;
        let mut refollowed = false;
        loop {
            let token = self.token();
            let req = proto::WatchRequest {
                token: token.clone(),
                follow: self.follows(),
            };
            let opened = self
                .on_any("watch", |mut r| {
                    let req = req.clone();
                    async move { r.watch(req).await }
                })
                .await;
            match opened {
                Ok(stream) => {
                    backoff.reset();
                    let mut stream = stream.into_inner();
                    // Rebuild the picture: events missed while the stream was
                    // down are not replayed.
                    self.refresh_users().await;
                    self.refresh_rooms().await;
                    if !first && !refollowed {
                        self.emit(SessionEvent::Reconnected);
                    }
                    first = false;
                    refollowed = false;
                    loop {
                        let next = tokio::select! {
                            _ = self.inner.stop.cancelled() => return,
                            // A new partner to follow: watch again at once.
                            _ = self.inner.refollow.notified() => {
                                refollowed = true;
                                break;
                            }
                            n = stream.next() => n,
                        };
                        match next {
                            Some(Ok(event)) => self.on_event(event),
                            Some(Err(status)) => {
                                tracing::debug!(%status, "watch stream broke");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(SessionError::Refused {
                    code: Code::Unauthenticated,
                    ..
                }) => {
                    if self.relogin(&token, true).await.is_err() {
                        return; // logged out (a persistent relogin ends no other way)
                    }
                    continue;
                }
                Err(err) => tracing::debug!(cause = %err, "cannot open watch"),
            }
            if refollowed {
                continue;
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = self.inner.rewatch.notified() => backoff.reset(),
            }
        }
    }

    /// Re-reads the members of every room this peer sits in.
    pub(super) async fn refresh_rooms(&self) {
        for name in self.inner.world.my_rooms() {
            if let Err(err) = self.refresh_room(&name).await {
                tracing::debug!(room = %name, cause = %err, "cannot refresh a room");
            }
        }
    }

    /// Re-reads the members of `room` (one this peer sits in) from the
    /// router; the picture stays as it was if the router cannot answer.
    pub async fn refresh_room(&self, room: &str) -> Result<(), SessionError> {
        let r = self.find(room).await?;
        if r.found && self.inner.world.in_room(room) {
            self.inner.world.set_owner(&r.name, &r.owner);
            self.inner.world.set_room(&r.name, r.members, r.revision);
        }
        Ok(())
    }

    pub(super) fn on_event(&self, event: proto::RegistryEvent) {
        match self.inner.world.apply(event) {
            Change::Nothing => {}
            Change::Online(member) => {
                if !member.nick.eq_ignore_ascii_case(self.nick().as_str()) {
                    self.emit(SessionEvent::Online(member));
                }
            }
            Change::RoomGone { room, by } => self.emit(SessionEvent::RoomGone { room, by }),
            // Others' comings and goings; this peer's own are not news.
            Change::Presence { nick, .. } if nick.eq_ignore_ascii_case(self.nick().as_str()) => {}
            Change::Presence {
                room,
                nick,
                joined,
                departure,
                message,
            } => self.emit(SessionEvent::Presence {
                room,
                nick,
                joined,
                departure,
                message,
            }),
        }
    }
}

/// Exponential backoff, capped, reset on success.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub(super) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub(super) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        d
    }

    pub(super) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_resets() {
        let mut b = Backoff::new();
        let seen: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert_eq!(seen[0], Duration::from_millis(100));
        assert_eq!(seen[1], Duration::from_millis(200));
        assert!(seen.iter().all(|d| *d <= Backoff::CAP));
        assert_eq!(seen[9], Backoff::CAP);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
