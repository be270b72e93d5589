//! Byte streams to peers: what a connection is and how one is opened. The connector is
//! injected (TCP in production, `turmoil::net` in the simulation, TLS around either by
//! `crate::tls`). Imports nothing from the crate.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connection to a peer: any byte stream.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerStream for T {}

/// What `Connect` returns: an open connection, or why it could not be opened.
pub type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn PeerStream>>> + Send>>;

/// Opens a connection to a peer address. Production uses TCP; the simulation its own.
pub type Connect = Arc<dyn Fn(&str) -> Connecting + Send + Sync>;

/// TCP connections (no Nagle delay) with a connect timeout, from `source` if given (the
/// port is the system's choice).
pub fn tcp_connect(connect_timeout: Duration, source: Option<IpAddr>) -> Connect {
    Arc::new(move |addr: &str| {
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = tokio::time::timeout(connect_timeout, open(&addr, source))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {connect_timeout:?}"),
                    )
                })??;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn PeerStream>)
        })
    })
}

/// A TCP connection to `addr` (each address it resolves to in turn), from `source` if given.
async fn open(addr: &str, source: Option<IpAddr>) -> io::Result<tokio::net::TcpStream> {
    let Some(source) = source else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let mut last = None;
    for to in tokio::net::lookup_host(addr).await? {
        if to.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = match to {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(to).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address of the same family as {source}"),
        )
    }))
}

/// The pause after accepting a connection failed (out of file descriptors, say) before the
/// next try, so a listener that keeps failing does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection `incoming` yields, or `None` once `stopped` resolves or `incoming`
/// ends. A failed accept is logged (naming the `port`) and tried again after
/// `ACCEPT_BACKOFF`. Every listener of a server (API, metrics) accepts through this.
pub async fn accept<IO, IE: std::fmt::Display>(
    incoming: &mut Pin<&mut impl tokio_stream::Stream<Item = Result<IO, IE>>>,
    stopped: &mut Pin<&mut impl Future<Output = ()>>,
    port: &str,
) -> Option<IO> {
    use tokio_stream::StreamExt;
    loop {
        tokio::select! {
            _ = stopped.as_mut() => return None,
            next = incoming.next() => match next {
                Some(Ok(io)) => return Some(io),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, port, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                None => return None,
            },
        }
    }
}
