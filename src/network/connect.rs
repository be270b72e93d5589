//! Byte streams to peers: what a connection is and how one is opened. The connector is
//! injected (TCP in production, `turmoil::net` in the simulation, TLS around either by
//! `crate::tls`). Imports nothing from the crate.

use std::future::Future;
use std::io;
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

/// TCP connections (no Nagle delay) with a connect timeout.
pub fn tcp_connect(connect_timeout: Duration) -> Connect {
    Arc::new(move |addr: &str| {
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream =
                tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&addr))
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
