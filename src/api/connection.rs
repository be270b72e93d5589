//! One API connection: the byte stream tonic serves (TCP, or whatever the caller's incoming
//! stream yields), and the state its requests share. tonic puts `ApiConnection` into every
//! request's extensions; `auth` reads the connection's budget of unknown-token lookups there.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use super::auth::LookupBudget;
use crate::network::PeerStream;

/// What the requests of one connection share.
#[derive(Clone, Debug)]
pub struct ApiConnection {
    /// Unknown tokens this connection may still have looked up (see `auth`).
    pub lookups: Arc<LookupBudget>,
}

/// An accepted API connection.
pub struct ApiStream {
    io: Box<dyn PeerStream>,
    connection: ApiConnection,
}

impl ApiStream {
    pub fn new(io: Box<dyn PeerStream>) -> ApiStream {
        let connection = ApiConnection { lookups: Arc::new(LookupBudget::per_connection()) };
        ApiStream { io, connection }
    }
}

impl Connected for ApiStream {
    type ConnectInfo = ApiConnection;

    fn connect_info(&self) -> ApiConnection {
        self.connection.clone()
    }
}

impl AsyncRead for ApiStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
