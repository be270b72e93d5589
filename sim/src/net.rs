//! Glue between Berth's injectable IO and turmoil: listeners, a connector (for peers and API
//! clients alike; TLS runs over it), and a clock driven by simulated time (plus a per-replica
//! skew).

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::clock::Clock;
use berth::network::{Connect, PeerStream};
use berth::scheduler::UnixMillis;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How long opening a simulated connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub type Incoming = ReceiverStream<io::Result<turmoil::net::TcpStream>>;

/// Binds `0.0.0.0:port` on the current simulated host and yields its connections.
pub async fn listen(port: u16) -> io::Result<Incoming> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            if tx.send(accepted).await.is_err() {
                break;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Simulated TCP connections: the connector for `Server::start` (to peers) and for
/// `berth::tls::channel` (API clients).
pub fn connect() -> Connect {
    Arc::new(|addr: &str| {
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                turmoil::net::TcpStream::connect(addr.as_str()),
            )
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                )
            })??;
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
