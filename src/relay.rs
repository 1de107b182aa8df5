//! Relay circuits, the part both ends share: a relay connection is TLS to
//! a router speaking [`crate::tls::RELAY_ALPN`]; its first frame is a
//! [`CircuitOpen`] (connect to a key, or accept an offered circuit), the
//! router answers with a [`CircuitReply`], and from an OK on the
//! connection carries the other side's bytes unchanged. The two peers run
//! their own mutually authenticated TLS over it, so the router sees only
//! ciphertext. The router's side is `router::relay`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::proto::{circuit_open, CircuitOpen, CircuitReply};
use crate::tls::{Io, Tls};

/// Largest frame before a circuit opens: a key, a nick, a reason.
pub const MAX_FRAME: usize = 1024;

/// Writes `msg` as one frame: a 2-byte big-endian length, then the message.
pub async fn write_frame<M: prost::Message>(io: &mut Io, msg: &M) -> std::io::Result<()> {
    let body = msg.encode_to_vec();
    let len = u16::try_from(body.len())
        .ok()
        .filter(|n| usize::from(*n) <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("relay frame too long"))?;
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    io.write_all(&out).await?;
    io.flush().await
}

/// Reads one frame written by [`write_frame`].
pub async fn read_frame<M: prost::Message + Default>(io: &mut Io) -> std::io::Result<M> {
    let mut len = [0u8; 2];
    io.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_FRAME {
        return Err(std::io::Error::other("relay frame too long"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    M::decode(body.as_slice()).map_err(std::io::Error::other)
}

/// How long opening a circuit may take: the router waits this long for
/// the other side to take it.
pub const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the TCP connect to a relay router may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A relay connection to the router at `router`: TCP, then TLS speaking
/// the relay protocol.
async fn link(tls: &Tls, router: &str) -> std::io::Result<Io> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(router))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    tls.relay_over(Box::new(tcp), router).await
}

/// Opens a relay connection to the router at `router` and asks for
/// `open`; the byte stream to the other side once the router says OK.
pub async fn open(tls: &Tls, router: &str, open: CircuitOpen) -> std::io::Result<Io> {
    let opening = async {
        let mut io = link(tls, router).await?;
        write_frame(&mut io, &open).await?;
        let reply: CircuitReply = read_frame(&mut io).await?;
        if reply.code != Code::Ok as i32 {
            return Err(std::io::Error::other(format!(
                "the router at {router} refused the circuit: {} ({:?})",
                reply.error,
                Code::from_i32(reply.code)
            )));
        }
        Ok(io)
    };
    tokio::time::timeout(OPEN_TIMEOUT + std::time::Duration::from_secs(1), opening)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "opening a circuit timed out")
        })?
}

/// A circuit to the peer holding a reservation for `target` at `router`,
/// asked for by `nick` (whose key this side's links present).
pub async fn connect(tls: &Tls, router: &str, target: &[u8], nick: &str) -> std::io::Result<Io> {
    open(
        tls,
        router,
        CircuitOpen {
            kind: Some(circuit_open::Kind::Connect(target.to_vec())),
            nick: nick.to_owned(),
        },
    )
    .await
}

/// Takes the circuit `id` the router at `router` offered.
pub async fn accept(tls: &Tls, router: &str, id: u64) -> std::io::Result<Io> {
    open(
        tls,
        router,
        CircuitOpen {
            kind: Some(circuit_open::Kind::Accept(id)),
            nick: String::new(),
        },
    )
    .await
}
