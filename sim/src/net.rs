//! Glue between Berth's injectable IO and turmoil: listeners, connectors (for peers and for
//! tonic channels), and a clock driven by simulated time (plus a per-replica skew).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth::clock::Clock;
use berth::network::{Connect, PeerStream};
use berth::scheduler::UnixMillis;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

/// A simulated TCP connection that tonic's server accepts.
pub struct SimStream(turmoil::net::TcpStream);

impl Connected for SimStream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

pub type Incoming = ReceiverStream<io::Result<SimStream>>;

/// Binds `0.0.0.0:port` on the current simulated host and yields its connections.
pub async fn listen(port: u16) -> io::Result<Incoming> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await.map(|(stream, _)| SimStream(stream));
            if tx.send(accepted).await.is_err() {
                break;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// A lazy tonic channel to `host:port` over the simulated network (for API clients).
pub fn channel(addr: &str) -> Result<Channel, String> {
    let target = addr.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_millis(500));
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let target = target.clone();
        async move {
            let stream = turmoil::net::TcpStream::connect(target.as_str()).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    })))
}

/// The peer connector for `Server::start`: simulated TCP connections.
pub fn connect() -> Connect {
    Arc::new(|addr: &str| {
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = tokio::time::timeout(
                Duration::from_millis(500),
                turmoil::net::TcpStream::connect(addr.as_str()),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no connection within 500ms"))??;
            Ok(Box::new(stream) as Box<dyn PeerStream>)
        })
    })
}

/// Simulated wall clock: turmoil's time since its (fixed) epoch, plus this replica's skew.
#[derive(Clone, Debug, Default)]
pub struct SimClock {
    pub skew_ms: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn now(&self) -> UnixMillis {
        let since = turmoil::since_epoch().unwrap_or_default();
        let ms = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        let skewed = ms.saturating_add(self.skew_ms.load(Ordering::Relaxed));
        UnixMillis(u64::try_from(skewed).unwrap_or(0))
    }
}
