//! Prometheus figures of one router ([`RouterMetrics`]) or one peer
//! ([`PeerMetrics`]), and the plain HTTP/1.1 server that hands them to a
//! scraper ([`MetricsServer`]: `GET /metrics`, OpenMetrics text).
//!
//! Each router and each peer owns its registry: tests and the benchmark run
//! several of them in one process, and a global registry would mix their
//! figures. The handles are cheap to clone and count with atomics; the code
//! that counts calls small methods named for what happened, and never
//! touches the registry. Figures kept elsewhere (the relay's counters) are
//! read at scrape time by a [`Collector`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The content type of the OpenMetrics text exposition.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Connections served at once: a scraper or two, and room for a person's
/// curl. More wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server lets a scrape under way finish.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// After a failed accept (out of file descriptors, say), a pause, so a
/// lasting failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One label, as the families here take it.
type Label = [(&'static str, &'static str); 1];

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn level(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Batch sizes, in messages: 1, 2, 4 ... 1024 (a link's batch holds at
/// most 1024).
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// A family with every label value it is known to take already present
/// (at zero): a scraper sees the whole set of series from the first scrape.
fn family<M>(key: &'static str, values: &[&'static str]) -> Family<Label, M>
where
    M: Default
        + prometheus_client::encoding::EncodeMetric
        + prometheus_client::metrics::TypedMetric,
{
    let family = Family::default();
    for v in values {
        drop(family.get_or_create(&[(key, *v)]));
    }
    family
}

/// Where messages a peer takes in come from.
pub const SOURCES: [&str; 3] = ["link", "pull", "mailbox"];
/// How a delivery to another peer ended (`net::Delivery`).
pub const DELIVERY_RESULTS: [&str; 3] = ["stored", "refused", "unreachable"];

/// A peer's figures. Cheap to clone: every clone counts into the same
/// registry.
#[derive(Clone, Debug)]
pub struct PeerMetrics {
    inner: Arc<PeerInner>,
}

#[derive(Debug)]
struct PeerInner {
    registry: Arc<Registry>,
    messages_in: Family<Label, Counter>,
    link_batch_received: Histogram,
    messages_out: Counter,
    link_batch_sent: Histogram,
    deliveries: Family<Label, Counter>,
    deferred_queue: Gauge,
    deferred_checked: Counter,
    deferred_failed: Counter,
    commit_seconds: Histogram,
    outbox_recipients: Gauge,
    links: Family<Label, Gauge>,
    links_closed: Family<Label, Counter>,
    channels: Gauge,
}

/// The states a link is counted in while it lives.
const LINK_STATES: [&str; 2] = ["connecting", "open"];
/// How a link ended: it failed (no answer, an error, the stream cut), or
/// it was closed (idle, or no longer used).
const LINK_ENDS: [&str; 2] = ["failed", "closed"];

impl Default for PeerMetrics {
    fn default() -> Self {
        PeerMetrics::new()
    }
}

impl PeerMetrics {
    /// A registry of its own, every figure at zero.
    pub fn new() -> PeerMetrics {
        let inner = PeerInner {
            registry: Arc::default(),
            messages_in: family("source", &SOURCES),
            link_batch_received: batch_histogram(),
            messages_out: Counter::default(),
            link_batch_sent: batch_histogram(),
            deliveries: family("result", &DELIVERY_RESULTS),
            deferred_queue: Gauge::default(),
            deferred_checked: Counter::default(),
            deferred_failed: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            outbox_recipients: Gauge::default(),
            links: family("state", &LINK_STATES),
            links_closed: family("reason", &LINK_ENDS),
            channels: Gauge::default(),
        };
        let mut r = Registry::with_prefix("parley_peer");
        r.register(
            "messages_in",
            "Messages taken into the history, new here, by how they came (link, pull, mailbox)",
            inner.messages_in.clone(),
        );
        r.register(
            "link_batch_received",
            "Messages in each batch received on a link",
            inner.link_batch_received.clone(),
        );
        r.register(
            "messages_out",
            "Messages sent to other peers on links, one per recipient",
            inner.messages_out.clone(),
        );
        r.register(
            "link_batch_sent",
            "Messages in each batch sent on a link",
            inner.link_batch_sent.clone(),
        );
        r.register(
            "deliveries",
            "Deliveries to other peers by how they ended (stored, refused, unreachable)",
            inner.deliveries.clone(),
        );
        r.register(
            "deferred_queue",
            "Messages waiting for their deferred signature check",
            inner.deferred_queue.clone(),
        );
        r.register(
            "deferred_checked",
            "Messages whose deferred signature check passed",
            inner.deferred_checked.clone(),
        );
        r.register(
            "deferred_failed",
            "Messages whose deferred signature check failed",
            inner.deferred_failed.clone(),
        );
        r.register(
            "commit_seconds",
            "Time to commit received messages to the history",
            inner.commit_seconds.clone(),
        );
        r.register(
            "outbox_recipients",
            "Recipients owed at least one message (the outbox's depth in recipients), \
             as of the last retry round",
            inner.outbox_recipients.clone(),
        );
        r.register(
            "links",
            "Links to other peers by state (connecting, open)",
            inner.links.clone(),
        );
        r.register(
            "links_closed",
            "Links ended, by how (failed, closed when idle or no longer used)",
            inner.links_closed.clone(),
        );
        r.register(
            "channels",
            "Channels to other peers kept (connections, at most one each)",
            inner.channels.clone(),
        );
        let inner = PeerInner {
            registry: Arc::new(r),
            ..inner
        };
        PeerMetrics {
            inner: Arc::new(inner),
        }
    }

    /// What a [`MetricsServer`] serves.
    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    /// `n` messages new to the history came in by way of `source`: one of
    /// [`SOURCES`] ("link", "pull", "mailbox").
    pub fn message_in(&self, source: &'static str, n: usize) {
        self.inner
            .messages_in
            .get_or_create(&[("source", source)])
            .inc_by(count(n));
    }

    /// A batch of `n` messages came in on a link.
    pub fn link_batch(&self, n: usize) {
        self.inner.link_batch_received.observe(n as f64);
    }

    /// `n` messages went out to other peers (one per recipient).
    pub fn message_out(&self, n: usize) {
        self.inner.messages_out.inc_by(count(n));
    }

    /// A batch of `n` messages went out on a link: counted as messages out
    /// too.
    pub fn link_batch_sent(&self, n: usize) {
        self.inner.link_batch_sent.observe(n as f64);
        self.message_out(n);
    }

    /// A delivery ended as `result`: one of [`DELIVERY_RESULTS`].
    pub fn delivery(&self, result: &'static str) {
        self.inner
            .deliveries
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// `len` messages wait for their deferred signature check now.
    pub fn deferred_queue(&self, len: usize) {
        self.inner.deferred_queue.set(level(len));
    }

    /// `n` deferred signature checks passed.
    pub fn deferred_checked(&self, n: usize) {
        self.inner.deferred_checked.inc_by(count(n));
    }

    /// `n` deferred signature checks failed.
    pub fn deferred_failed(&self, n: usize) {
        self.inner.deferred_failed.inc_by(count(n));
    }

    /// A commit of received messages took `took`.
    pub fn commit(&self, took: Duration) {
        self.inner.commit_seconds.observe(took.as_secs_f64());
    }

    /// `recipients` are owed at least one message now. (The outbox's
    /// depth in recipients: the store keeps no row count to read cheaply.)
    pub fn outbox_depth(&self, recipients: usize) {
        self.inner.outbox_recipients.set(level(recipients));
    }

    /// `n` channels to other peers are kept now.
    pub fn channels(&self, n: usize) {
        self.inner.channels.set(level(n));
    }

    /// A new link, counted as connecting until [`LinkState::opened`], and
    /// as failed when dropped unless [`LinkState::closed`] said otherwise.
    pub fn link_connecting(&self) -> LinkState {
        self.link_gauge("connecting").inc();
        LinkState {
            metrics: self.clone(),
            state: "connecting",
            end: "failed",
        }
    }

    fn link_gauge(&self, state: &'static str) -> Gauge {
        self.inner.links.get_or_create(&[("state", state)]).clone()
    }
}

/// One link's place in the link gauges, from connecting to its end (on
/// drop): every way out of a link's task is counted once.
#[derive(Debug)]
pub struct LinkState {
    metrics: PeerMetrics,
    state: &'static str,
    end: &'static str,
}

impl LinkState {
    /// The link's stream is open.
    pub fn opened(&mut self) {
        self.metrics.link_gauge(self.state).dec();
        self.state = "open";
        self.metrics.link_gauge(self.state).inc();
    }

    /// The link ends as it should (idle, or no longer used), not failed.
    pub fn closed(mut self) {
        self.end = "closed";
    }
}

impl Drop for LinkState {
    fn drop(&mut self) {
        self.metrics.link_gauge(self.state).dec();
        self.metrics
            .inner
            .links_closed
            .get_or_create(&[("reason", self.end)])
            .inc();
    }
}

/// A router's figures. Cheap to clone: every clone counts into the same
/// registry.
#[derive(Clone, Debug)]
pub struct RouterMetrics {
    inner: Arc<RouterInner>,
}

#[derive(Debug)]
struct RouterInner {
    registry: Arc<Registry>,
    logins: Family<Label, Counter>,
    logouts: Counter,
    sessions: Gauge,
    joins: Counter,
    lookups: Counter,
    mail_deposited: Counter,
    mail_refused: Counter,
    mail_drained: Counter,
    mail_acked: Counter,
    mail_expired: Counter,
}

/// How the router found a login's address: dialed back (direct), not
/// (relayed), or not asked to (unchecked).
pub const REACH: [&str; 3] = ["direct", "relayed", "unchecked"];

impl RouterMetrics {
    /// A registry of its own, every figure at zero, with `relay`'s figures
    /// read from it at every scrape.
    pub fn new(relay: impl Collector) -> RouterMetrics {
        let inner = RouterInner {
            registry: Arc::default(),
            logins: family("reach", &REACH),
            logouts: Counter::default(),
            sessions: Gauge::default(),
            joins: Counter::default(),
            lookups: Counter::default(),
            mail_deposited: Counter::default(),
            mail_refused: Counter::default(),
            mail_drained: Counter::default(),
            mail_acked: Counter::default(),
            mail_expired: Counter::default(),
        };
        let mut r = Registry::with_prefix("parley_router");
        r.register(
            "logins",
            "Logins completed here, by how the peer's address was found \
             (direct, relayed, unchecked)",
            inner.logins.clone(),
        );
        r.register("logouts", "Logouts here", inner.logouts.clone());
        r.register(
            "sessions",
            "Sessions served here now: peers holding a Watch stream to this router",
            inner.sessions.clone(),
        );
        r.register("joins", "Room joins here", inner.joins.clone());
        r.register(
            "lookups",
            "Lookups of a nick or a room (Find) here",
            inner.lookups.clone(),
        );
        r.register(
            "mailbox_deposited",
            "Sealed envelopes stored in mailboxes",
            inner.mail_deposited.clone(),
        );
        r.register(
            "mailbox_refused",
            "Sealed envelopes refused: a mailbox's quota or a sender's rate",
            inner.mail_refused.clone(),
        );
        r.register(
            "mailbox_drained",
            "Sealed envelopes handed to their recipients",
            inner.mail_drained.clone(),
        );
        r.register(
            "mailbox_acked",
            "Envelope ids recipients acknowledged (then removed)",
            inner.mail_acked.clone(),
        );
        r.register(
            "mailbox_expired",
            "Sealed envelopes removed unread by the age limit",
            inner.mail_expired.clone(),
        );
        r.register_collector(Box::new(relay));
        let inner = RouterInner {
            registry: Arc::new(r),
            ..inner
        };
        RouterMetrics {
            inner: Arc::new(inner),
        }
    }

    /// What a [`MetricsServer`] serves.
    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    /// A login completed; `reach`: one of [`REACH`].
    pub fn login(&self, reach: &'static str) {
        self.inner.logins.get_or_create(&[("reach", reach)]).inc();
    }

    pub fn logout(&self) {
        self.inner.logouts.inc();
    }

    /// A session's Watch stream began here: counted in the sessions gauge
    /// until the returned guard is dropped.
    pub fn session(&self) -> SessionGauge {
        self.inner.sessions.inc();
        SessionGauge(self.inner.sessions.clone())
    }

    pub fn join(&self) {
        self.inner.joins.inc();
    }

    pub fn lookup(&self) {
        self.inner.lookups.inc();
    }

    /// A deposit stored `stored` envelopes and refused `refused`.
    pub fn mail_deposit(&self, stored: usize, refused: usize) {
        self.inner.mail_deposited.inc_by(count(stored));
        self.inner.mail_refused.inc_by(count(refused));
    }

    /// A drain handed over `n` envelopes.
    pub fn mail_drained(&self, n: usize) {
        self.inner.mail_drained.inc_by(count(n));
    }

    /// An ack named `n` envelopes.
    pub fn mail_acked(&self, n: usize) {
        self.inner.mail_acked.inc_by(count(n));
    }

    /// The age limit removed `n` envelopes.
    pub fn mail_expired(&self, n: u64) {
        self.inner.mail_expired.inc_by(n);
    }
}

/// One session in the router's sessions gauge, while held.
#[derive(Debug)]
pub struct SessionGauge(Gauge);

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A bound listener for `GET /metrics`, not yet serving: bind first (a
/// startup error if the address is taken), then [`MetricsServer::run`].
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (port 0 takes a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(MetricsServer { listener, addr })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `registry` until `stop`: `GET /metrics` answers the
    /// OpenMetrics text, any other path 404. Returns once every connection
    /// has closed (at most [`STOP_GRACE`] after `stop`).
    pub async fn run(self, registry: Arc<Registry>, stop: CancellationToken) {
        tracing::info!("serving metrics at http://{}/metrics", self.addr);
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let conns = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(connection(tcp, registry.clone(), stop.clone(), permit));
                }
                Err(err) => {
                    tracing::debug!(cause = %err, "metrics: cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
        drop(self.listener);
        conns.close();
        conns.wait().await;
    }
}

/// Binds `addr` and serves `registry` there in a task until `stop`; the
/// address bound and the task.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    stop: CancellationToken,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let server = MetricsServer::bind(addr).await?;
    let bound = server.local_addr();
    Ok((bound, tokio::spawn(server.run(registry, stop))))
}

/// One HTTP/1.1 connection, until the client closes it or `stop` (a
/// scrape under way gets [`STOP_GRACE`] to finish).
async fn connection(
    tcp: TcpStream,
    registry: Arc<Registry>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |req| {
        let answer = respond(&req, &registry);
        async move { Ok::<_, Infallible>(answer) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(STOP_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(err) = served {
        tracing::debug!(cause = %err, "metrics: connection ended");
    }
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<String> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let mut body = String::new();
    if let Err(err) = encode(&mut body, registry) {
        tracing::warn!(cause = %err, "metrics: cannot encode");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
    }
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
    );
    resp
}

fn plain(status: StatusCode, text: &str) -> Response<String> {
    let mut resp = Response::new(text.to_owned());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn text(registry: &Registry) -> String {
        let mut s = String::new();
        encode(&mut s, registry).unwrap();
        s
    }

    /// The value of the sample line `series` (name and labels as printed).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let c = ConstCounter::new(7u64);
            let m = encoder.encode_descriptor("fixed", "a fixed count", None, c.metric_type())?;
            c.encode(m)
        }
    }

    #[test]
    fn peer_figures_start_at_zero_with_every_label_and_move() {
        let m = PeerMetrics::new();
        let before = text(&m.registry());
        for source in SOURCES {
            let series = format!("parley_peer_messages_in_total{{source=\"{source}\"}}");
            assert_eq!(value(&before, &series), Some(0.0), "{before}");
        }
        assert_eq!(
            value(&before, "parley_peer_links{state=\"open\"}"),
            Some(0.0)
        );
        m.message_in("pull", 3);
        m.link_batch_sent(5);
        m.commit(Duration::from_millis(2));
        m.outbox_depth(2);
        let mut link = m.link_connecting();
        let during = text(&m.registry());
        assert_eq!(
            value(&during, "parley_peer_links{state=\"connecting\"}"),
            Some(1.0)
        );
        link.opened();
        let open = text(&m.registry());
        assert_eq!(
            value(&open, "parley_peer_links{state=\"connecting\"}"),
            Some(0.0)
        );
        assert_eq!(value(&open, "parley_peer_links{state=\"open\"}"), Some(1.0));
        link.closed();
        drop(m.link_connecting());
        let after = text(&m.registry());
        assert_eq!(
            value(&after, "parley_peer_messages_in_total{source=\"pull\"}"),
            Some(3.0)
        );
        assert_eq!(value(&after, "parley_peer_messages_out_total"), Some(5.0));
        assert_eq!(
            value(&after, "parley_peer_link_batch_sent_count"),
            Some(1.0)
        );
        assert_eq!(value(&after, "parley_peer_commit_seconds_count"), Some(1.0));
        assert_eq!(value(&after, "parley_peer_outbox_recipients"), Some(2.0));
        assert_eq!(
            value(&after, "parley_peer_links{state=\"open\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&after, "parley_peer_links_closed_total{reason=\"closed\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&after, "parley_peer_links_closed_total{reason=\"failed\"}"),
            Some(1.0)
        );
        assert!(after.ends_with("# EOF\n"), "{after}");
    }

    #[test]
    fn router_figures_include_what_a_collector_reads_at_scrape_time() {
        let m = RouterMetrics::new(Fixed);
        m.login("direct");
        let session = m.session();
        m.mail_deposit(3, 1);
        let t = text(&m.registry());
        assert_eq!(
            value(&t, "parley_router_logins_total{reach=\"direct\"}"),
            Some(1.0)
        );
        assert_eq!(value(&t, "parley_router_sessions"), Some(1.0));
        assert_eq!(
            value(&t, "parley_router_mailbox_deposited_total"),
            Some(3.0)
        );
        assert_eq!(value(&t, "parley_router_mailbox_refused_total"), Some(1.0));
        assert_eq!(value(&t, "parley_router_fixed_total"), Some(7.0));
        drop(session);
        assert_eq!(
            value(&text(&m.registry()), "parley_router_sessions"),
            Some(0.0)
        );
    }

    /// A raw request and the whole answer (the server closes after it).
    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn serves_metrics_404s_the_rest_and_stops() {
        let m = PeerMetrics::new();
        m.message_out(4);
        let stop = CancellationToken::new();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m.registry(), stop.clone())
            .await
            .unwrap();
        let ok = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains(&format!("content-type: {CONTENT_TYPE_OPENMETRICS}")),
            "{ok}"
        );
        assert!(ok.contains("parley_peer_messages_out_total 4"), "{ok}");
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        let missing = ask(
            addr,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let posted = ask(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(posted.starts_with("HTTP/1.1 405"), "{posted}");
        let garbage = ask(addr, "\x00\x01 not http\r\n\r\n").await;
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );
        // A connection left open (keep-alive) does not hold the stop up.
        let idle = TcpStream::connect(addr).await.unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the server stops")
            .unwrap();
        drop(idle);
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = MetricsServer::bind(taken.local_addr().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
