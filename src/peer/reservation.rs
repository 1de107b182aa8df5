//! Holding a reservation while nobody can dial this peer: whenever a login
//! finds the peer unreachable, it keeps a `Reserve` stream open at that
//! router and turns what it asks (dial-backs, circuits) into connections
//! its chat service serves ([`crate::net::reach::serve_incoming`]). A lost
//! stream is opened again; a login elsewhere (failover) moves it.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::session::Session;
use crate::proto::incoming;
use crate::tls::{Tls, TlsConn};

/// Pause before opening a lost reservation again.
const AGAIN: Duration = Duration::from_secs(1);

/// Opens the session's reservation at its router and waits for the router
/// to confirm it; the stream of its asks.
pub async fn open(session: &Session) -> Option<tonic::Streaming<crate::proto::Incoming>> {
    let mut asks = match session.reserve().await {
        Ok(asks) => asks,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot hold a reservation at the router");
            return None;
        }
    };
    match asks.message().await {
        Ok(Some(crate::proto::Incoming {
            kind: Some(incoming::Kind::Reserved(r)),
        })) => {
            tracing::info!(relay = %r.relay, circuit_bytes = r.circuit_bytes, "reservation held");
            Some(asks)
        }
        other => {
            tracing::warn!(?other, "the router did not confirm the reservation");
            None
        }
    }
}

/// Keeps a reservation while the session is relayed, until `stop`.
/// `first` is one already opened (at start, before the peer said ready).
pub async fn hold(
    session: Session,
    tls: Tls,
    conns: mpsc::Sender<TlsConn>,
    mut first: Option<tonic::Streaming<crate::proto::Incoming>>,
    stop: CancellationToken,
) {
    let mut at = session.relayed_at();
    loop {
        let router = at.borrow_and_update().clone();
        let Some(router) = router else {
            first = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = at.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let asks = match first.take() {
            Some(asks) => Some(asks),
            None => open(&session).await,
        };
        if let Some(asks) = asks {
            let serving =
                crate::net::reach::serve_incoming(tls.clone(), router, asks, conns.clone());
            tokio::select! {
                _ = stop.cancelled() => return,
                () = serving => tracing::info!("the reservation ended; holding it again"),
                // A new login: hold it where that login says.
                changed = at.changed() => {
                    if changed.is_err() { return }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(AGAIN) => {}
        }
    }
}
