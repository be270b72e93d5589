//! The peer links between a test cluster's replicas: a test can cut a replica off from all
//! the others or slow down what is sent to it, and count the requests each replica sends, by
//! kind. Every replica's `Connect` is wrapped, and every peer connection is opened by some
//! replica, so this sees (and can stop) all peer traffic; the API ports are untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use berth::network::{Connect, PeerStream, Rpc};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The peer frame header: length (u32 LE) and the RPC tag (`berth::network`).
const HEADER_BYTES: usize = 5;

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
    /// Requests sent, by the sender's peer address and the RPC's tag.
    sent: BTreeMap<(String, u8), u64>,
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

    /// How many `rpc` requests the replica at peer address `from` has sent.
    pub fn sent(&self, from: &str, rpc: Rpc) -> u64 {
        self.state().sent.get(&(from.to_owned(), rpc as u8)).copied().unwrap_or(0)
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
                let link =
                    Link { links, from, to, stream, delay: None, header: Vec::new(), skip: 0 };
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
    /// The header of the frame being written, while incomplete.
    header: Vec<u8>,
    /// Payload bytes of the frame being written still to come.
    skip: usize,
}

impl Link {
    /// Counts the requests whose headers are in `bytes`, the next bytes written.
    fn count(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_BYTES - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == HEADER_BYTES {
                let len = u32::from_le_bytes(self.header[..4].try_into().expect("four bytes"));
                let key = (self.from.clone(), self.header[4]);
                *self.links.state().sent.entry(key).or_default() += 1;
                self.skip = usize::try_from(len).expect("u32 fits").saturating_sub(1);
                self.header.clear();
            }
        }
    }

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
        this.count(&buf[..written]);
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
