//! Encrypted, authenticated links: every parley connection (peer to router,
//! peer to peer) is TLS 1.3 with both sides presenting a self-signed
//! certificate whose key is their ed25519 identity key. There are no
//! certificate authorities: a side is who its key says, and whoever
//! connects checks that key against the one it expects (a registry entry, a
//! pinned router key).
//!
//! The pattern is tonic-tls's: a `tokio_rustls` acceptor feeding tonic's
//! `serve_with_incoming`, with a connection type whose `Connected` info
//! hands each request the caller's key ([`caller`]); and a connector for
//! `Endpoint::connect_with_connector_lazy` that checks the server's key
//! after the handshake.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{Identity, PublicKey};

/// How long a TLS handshake may take before the connection is dropped: a
/// client that connects and says nothing must not hold a slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; past it new connections
/// wait in the kernel's backlog.
const HANDSHAKES: usize = 256;
/// The name both sides put in the handshake. Nobody checks it: identity is
/// the key, not a host name.
const SERVER_NAME: &str = "parley";
/// The protocol of a relay connection to a router (the `relay` module),
/// told apart from gRPC's `h2` in the handshake.
pub const RELAY_ALPN: &[u8] = b"parley-relay/1";
/// What a connection dialed back for a reversal starts with (see
/// [`Reversals`]), before the nonce: never the first byte of a TLS
/// handshake (0x16).
pub const REVERSE_PREAMBLE: &[u8; 16] = b"parley-reverse/1";
/// Bytes of a reversal's nonce.
pub const REVERSE_NONCE: usize = 16;
/// Reversals a peer waits for at once.
const MAX_REVERSALS: usize = 256;

/// Any byte stream a link can run over: a TCP connection, a connection
/// dialed back, a relay circuit.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}
/// A boxed [`Transport`].
pub type Io = Box<dyn Transport>;
/// How a channel makes the byte stream under each new connection.
pub type Dial = Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, std::io::Result<Io>> + Send + Sync + 'static,
>;

/// Errors of setting up or making a link.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the link certificate: {0}")]
    Certificate(String),
    #[error("TLS setup failed: {0}")]
    Setup(#[from] rustls::Error),
    #[error("{address} presented key {got}, expected {want}")]
    WrongKey {
        address: String,
        got: String,
        want: String,
    },
}

/// The caller of a request, as its link proved it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: PublicKey,
    pub remote: Option<SocketAddr>,
    /// This side's address of the connection (what the caller dialed).
    pub local: Option<SocketAddr>,
}

/// The key that called, if the request came over a parley link.
pub fn caller<T>(req: &tonic::Request<T>) -> Option<PublicKey> {
    req.extensions().get::<Caller>().map(|c| c.key)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ed25519 key of a certificate, if it is a well-formed certificate
/// for one.
pub fn certificate_key(cert: &CertificateDer<'_>) -> Result<PublicKey, rustls::Error> {
    use rustls::CertificateError;
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if !rest.is_empty() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ));
    }
    let spki = parsed.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ));
    }
    PublicKey::from_bytes(&spki.subject_public_key.data)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

/// Links are TLS 1.3 only; the configurations never offer 1.2, so this
/// answer is a last guard.
const TLS12_REFUSED: rustls::Error =
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered);
/// The one handshake signature a parley key makes.
const SCHEMES: [SignatureScheme; 1] = [SignatureScheme::ED25519];

/// Accepts exactly one certificate whose key is ed25519, and checks the
/// handshake was signed by that key. Which key is acceptable is decided
/// after the handshake, by whoever knows whom they meant to reach.
#[derive(Debug)]
struct KeyOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl KeyOnly {
    fn check(
        &self,
        end: &CertificateDer<'_>,
        rest: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !rest.is_empty() {
            return Err(rustls::Error::General(
                "a parley link presents exactly one certificate".into(),
            ));
        }
        certificate_key(end).map(|_| ())
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for KeyOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_REFUSED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for KeyOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_REFUSED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

/// Both halves of a side's TLS setup, made once from its identity.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// The same client, speaking [`RELAY_ALPN`] to a router.
    relay_connector: TlsConnector,
    key: PublicKey,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.key.fingerprint())
    }
}

impl Tls {
    /// Server and client configurations presenting `identity`'s key.
    pub fn new(identity: &Identity) -> Result<Tls, TlsError> {
        let der = identity.pkcs8_der();
        let pkcs8 = PrivatePkcs8KeyDer::from(der.clone());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .and_then(|p| p.self_signed(&key_pair))
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let chain = vec![cert.der().clone()];
        let provider = provider();
        let verifier = Arc::new(KeyOnly {
            algorithms: provider.signature_verification_algorithms,
        });

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), PrivateKeyDer::Pkcs8(pkcs8.clone_key()))?;
        server.alpn_protocols = vec![b"h2".to_vec(), RELAY_ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(pkcs8))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        let mut relay = client.clone();
        relay.alpn_protocols = vec![RELAY_ALPN.to_vec()];

        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            relay_connector: TlsConnector::from(Arc::new(relay)),
            key: identity.public(),
        })
    }

    /// This side's own key.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// The TLS connections arriving on `listener`, for tonic's
    /// `serve_with_incoming`. Handshakes run concurrently, each under
    /// [`HANDSHAKE_TIMEOUT`]; a failed one is logged and dropped, never
    /// ends the stream. Accepting stops when the stream is dropped.
    pub fn incoming(&self, listener: TcpListener) -> ReceiverStream<std::io::Result<TlsConn>> {
        self.incoming_with(listener, Accept::default())
    }

    /// [`Tls::incoming`], with connections made elsewhere merged in, and
    /// reversals and relay connections sent where `accept` says.
    pub fn incoming_with(
        &self,
        listener: TcpListener,
        accept: Accept,
    ) -> ReceiverStream<std::io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(HANDSHAKES);
        let Accept {
            extra,
            reversals,
            relay,
        } = accept;
        if let Some(mut extra) = extra {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(conn) = extra.recv().await {
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
            });
        }
        let tls = self.clone();
        let limit = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of descriptors and the like: pause, not stop.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let (tls, tx) = (tls.clone(), tx.clone());
                let (reversals, relay) = (reversals.clone(), relay.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, peek(&tcp)).await;
                    match first {
                        Ok(Some(byte)) if byte == REVERSE_PREAMBLE[0] => {
                            if let Some(reversals) = reversals {
                                reversals.arrived(tcp, remote).await;
                            }
                            return;
                        }
                        Ok(Some(_)) => {}
                        _ => return,
                    }
                    let local = tcp.local_addr().ok();
                    let conn = match tls.accept_from(Box::new(tcp), Some(remote), local).await {
                        Ok(conn) => conn,
                        Err(err) => {
                            tracing::debug!(%remote, %err, "TLS handshake refused");
                            return;
                        }
                    };
                    if conn.alpn() == Some(RELAY_ALPN) {
                        if let Some(relay) = relay {
                            let _ = relay.send(conn).await;
                        }
                        return;
                    }
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// The server side of a handshake over `io` (a connection this side
    /// dialed back, a relay circuit), under [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, io: Io) -> std::io::Result<TlsConn> {
        self.accept_from(io, None, None).await
    }

    async fn accept_from(
        &self,
        io: Io,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> std::io::Result<TlsConn> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(io))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        let key = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| certificate_key(c).ok())
            // The verifier demanded exactly such a certificate.
            .ok_or_else(|| std::io::Error::other("no key presented"))?;
        Ok(TlsConn {
            inner: stream,
            caller: Caller { key, remote, local },
        })
    }

    /// A TLS client connection over `io`, to a server that must present
    /// the key `expect` holds (`label` names it in errors).
    pub async fn connect_over(&self, io: Io, label: &str, expect: &Expect) -> std::io::Result<Io> {
        let tls = handshake(&self.connector, io, label, expect)
            .await
            .map_err(std::io::Error::other)?;
        Ok(Box::new(tls))
    }

    /// The client side of a relay connection (TLS speaking [`RELAY_ALPN`])
    /// over `io`, to the router at `address`. Its key is not checked: what
    /// runs over a circuit is authenticated end to end.
    pub async fn relay_over(&self, io: Io, address: &str) -> std::io::Result<Io> {
        let tls = handshake(&self.relay_connector, io, address, &Expect::first_seen())
            .await
            .map_err(std::io::Error::other)?;
        Ok(Box::new(tls))
    }

    /// A lazily connected channel to `address` whose server must present
    /// the key `expect` holds; an empty `expect` takes whatever key comes
    /// first and keeps it (trust on first use), so every later connection
    /// of the channel must present that same key.
    pub fn channel(&self, endpoint: Endpoint, address: &str, expect: Expect) -> Channel {
        let target = address.to_owned();
        let dial: Dial = Arc::new(move || {
            let target = target.clone();
            Box::pin(async move {
                let tcp = TcpStream::connect(target).await?;
                tcp.set_nodelay(true)?;
                Ok(Box::new(tcp) as Io)
            })
        });
        self.channel_via(endpoint, address, expect, dial)
    }

    /// [`Tls::channel`] over byte streams `dial` makes (a reversal, a relay
    /// circuit) instead of a TCP connection to an address; `label` names
    /// the other side in errors.
    pub fn channel_via(
        &self,
        endpoint: Endpoint,
        label: &str,
        expect: Expect,
        dial: Dial,
    ) -> Channel {
        let connector = self.connector.clone();
        let label = label.to_owned();
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri| {
            let (connector, label, expect, dial) = (
                connector.clone(),
                label.clone(),
                expect.clone(),
                dial.clone(),
            );
            async move {
                let io = dial().await?;
                let tls = handshake(&connector, io, &label, &expect).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(tls))
            }
        }))
    }
}

/// The key a client expects at the other end of a channel, by
/// fingerprint (what a person can type), the key that last answered, and
/// the last key refused.
#[derive(Clone, Debug, Default)]
pub struct Expect(Arc<Mutex<Slot>>);

#[derive(Debug, Default)]
struct Slot {
    want: Option<String>,
    seen: Option<PublicKey>,
    refused: Option<Refusal>,
}

/// A server that presented another key than the one expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub address: String,
    pub got: String,
    pub want: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} presented key {}, but {} was expected",
            self.address, self.got, self.want
        )
    }
}

impl Expect {
    /// Exactly this key.
    pub fn key(key: &PublicKey) -> Expect {
        Expect::fingerprint(key.fingerprint())
    }

    /// The key with this fingerprint (see [`PublicKey::fingerprint`]).
    pub fn fingerprint(fingerprint: String) -> Expect {
        Expect(Arc::new(Mutex::new(Slot {
            want: Some(fingerprint),
            ..Slot::default()
        })))
    }

    /// Whatever key answers first (then that one).
    pub fn first_seen() -> Expect {
        Expect::default()
    }

    /// The key that answered last, if a connection was made.
    pub fn seen(&self) -> Option<PublicKey> {
        self.lock().seen
    }

    /// The last refusal, if the last connection attempt was refused.
    pub fn refused(&self) -> Option<Refusal> {
        self.lock().refused.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self, address: &str, got: PublicKey) -> Result<(), TlsError> {
        let mut slot = self.lock();
        let fingerprint = got.fingerprint();
        match slot.want.clone() {
            Some(want) if want != fingerprint => {
                slot.refused = Some(Refusal {
                    address: address.to_owned(),
                    got: fingerprint.clone(),
                    want: want.clone(),
                });
                Err(TlsError::WrongKey {
                    address: address.to_owned(),
                    got: fingerprint,
                    want,
                })
            }
            _ => {
                slot.want = Some(fingerprint);
                slot.seen = Some(got);
                slot.refused = None;
                Ok(())
            }
        }
    }
}

/// The first byte `tcp` carries, without taking it; None at its end.
async fn peek(tcp: &TcpStream) -> Option<u8> {
    let mut one = [0u8; 1];
    match tcp.peek(&mut one).await {
        Ok(1) => Some(one[0]),
        _ => None,
    }
}

/// Connections dialed back to this peer for a reversal, by the nonce its
/// asker sent: each starts with [`REVERSE_PREAMBLE`] and the nonce, then
/// this side runs the TLS client over it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reversals(Arc<Mutex<std::collections::HashMap<[u8; REVERSE_NONCE], ReversalSlot>>>);

type ReversalSlot = tokio::sync::oneshot::Sender<TcpStream>;

impl Reversals {
    /// A fresh nonce and where the connection carrying it will come;
    /// None when too many reversals are awaited already.
    pub fn expect(
        &self,
    ) -> Option<(
        [u8; REVERSE_NONCE],
        tokio::sync::oneshot::Receiver<TcpStream>,
    )> {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, tx| !tx.is_closed());
        if slots.len() >= MAX_REVERSALS {
            return None;
        }
        let nonce = rand::random::<[u8; REVERSE_NONCE]>();
        let (tx, rx) = tokio::sync::oneshot::channel();
        slots.insert(nonce, tx);
        Some((nonce, rx))
    }

    /// Reads a reversal's preamble from `tcp` and hands it to whoever
    /// waits for its nonce; anything else is dropped.
    async fn arrived(&self, mut tcp: TcpStream, remote: SocketAddr) {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; REVERSE_PREAMBLE.len() + REVERSE_NONCE];
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.read_exact(&mut head)).await;
        if !matches!(read, Ok(Ok(_))) || &head[..REVERSE_PREAMBLE.len()] != REVERSE_PREAMBLE {
            tracing::debug!(%remote, "not a reversal; dropped");
            return;
        }
        let mut nonce = [0u8; REVERSE_NONCE];
        nonce.copy_from_slice(&head[REVERSE_PREAMBLE.len()..]);
        let slot = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&nonce);
        match slot {
            Some(tx) => {
                let _ = tx.send(tcp);
            }
            None => tracing::debug!(%remote, "a reversal nobody waits for; dropped"),
        }
    }
}

/// The client side of a handshake over `io`, admitted only if the server
/// presents the key `expect` holds.
async fn handshake(
    connector: &TlsConnector,
    io: Io,
    address: &str,
    expect: &Expect,
) -> Result<tokio_rustls::client::TlsStream<Io>, Box<dyn std::error::Error + Send + Sync>> {
    let name = ServerName::try_from(SERVER_NAME)?;
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, io))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let key = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(certificate_key)
        .transpose()?
        .ok_or("the server presented no certificate")?;
    if let Err(err) = expect.admit(address, key) {
        tracing::warn!(%err, "refusing a link");
        return Err(err.into());
    }
    Ok(tls)
}

/// Where [`Tls::incoming_with`] sends what is not a plain TLS connection,
/// and what it merges in.
#[derive(Default)]
pub struct Accept {
    /// Connections made elsewhere (dialed back, relayed), served as if
    /// they had been accepted.
    pub extra: Option<mpsc::Receiver<TlsConn>>,
    /// Where connections dialed back for a reversal go.
    pub reversals: Option<Reversals>,
    /// Where relay connections ([`RELAY_ALPN`]) go.
    pub relay: Option<mpsc::Sender<TlsConn>>,
}

/// One accepted TLS connection, carrying who called.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<Io>,
    caller: Caller,
}

impl TlsConn {
    /// Who called.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The protocol the handshake agreed on.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
