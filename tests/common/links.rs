//! The peer links between a test cluster's replicas: a test can cut a replica off from all
//! the others or slow down what is sent to it. Every replica's `Connect` is wrapped (beneath
//! TLS: links carry ciphertext), and every peer connection is opened by some
//! replica, so this sees (and can stop) all peer traffic; the API ports are untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use berth::network::{Connect, PeerStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared by every replica of a cluster; clones share it.
#[derive(Clone, Default)]
pub struct Links {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Peer addresses of replicas cut off from all others.
    cut: BTreeSet<String>,
    /// Peer addresses whose incoming traffic is delayed, and by how much per write.
    slow: BTreeMap<String, Duration>,
}

impl Links {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the replica at peer address `addr` off: its open peer connections fail and no new
    /// ones open, in either direction.
    pub fn cut_off(&self, addr: &str) {
        self.state().cut.insert(addr.to_owned());
    }

    /// Delays every write to the replica at peer address `addr` by `delay`, so it lags.
    pub fn slow_down(&self, addr: &str, delay: Duration) {
        self.state().slow.insert(addr.to_owned(), delay);
    }

    fn blocked(&self, from: &str, to: &str) -> bool {
        let state = self.state();
        state.cut.contains(from) || state.cut.contains(to)
    }

    /// `connect` for the replica at peer address `from`, through these links.
    pub fn wrap(&self, from: &str, connect: Connect) -> Connect {
        let links = self.clone();
        let from = from.to_owned();
        Arc::new(move |to: &str| {
            let (links, from, to) = (links.clone(), from.clone(), to.to_owned());
            let connecting = connect(&to);
            Box::pin(async move {
                if links.blocked(&from, &to) {
                    return Err(cut());
                }
                let stream = connecting.await?;
                let link = Link { links, from, to, stream, delay: None };
                Ok(Box::new(link) as Box<dyn PeerStream>)
            })
        })
    }
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "link cut by the test")
}

/// One connection from `from` to `to`.
struct Link {
    links: Links,
    from: String,
    to: String,
    stream: Box<dyn PeerStream>,
    /// The delay of the write under way, when the link is slowed.
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Link {
    fn check(&self) -> io::Result<()> {
        if self.links.blocked(&self.from, &self.to) {
            return Err(cut());
        }
        Ok(())
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        // A reply that arrives after the cut is lost with the link.
        Poll::Ready(this.check())
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        let slow = this.links.state().slow.get(&this.to).copied();
        if let Some(delay) = slow {
            let sleep = this.delay.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
        }
        let written = ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        this.delay = None;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
