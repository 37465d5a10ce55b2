//! A write buffer in front of each data-plane connection's socket, as pingora's own listener
//! puts in front of its sockets (`L4BufferSettings`, which only pingora's listener can apply).
//!
//! Without it every write pingora makes goes to the kernel as it comes: a response's header
//! block and its body left in two system calls and, with `TCP_NODELAY`, two TCP segments, which
//! the client reads in two wake-ups. Buffered, a small response leaves in one.
//!
//! What waits in the buffer, and for how long, is pingora's choice, as behind its own listener:
//! it flushes after a 1xx, after a header with no body, at each chunk of a chunked or
//! close-delimited (upgraded) body, and at the end of every response; `shutdown` flushes
//! before it closes, and dropping the stream makes one last attempt (as pingora's `Stream`
//! does), so a response cut short by a failing backend, or a TLS alert, still goes out. The
//! one case where bytes wait: a body with a `Content-Length` that the backend sends slowly
//! reaches the client in pieces of at least `WRITE_BUFFER` bytes, or when it is complete, or
//! when the backend's read timeout gives up on it.
//!
//! Reads are not buffered: pingora reads request headers and bodies into buffers of its own, and
//! a read buffer would cost its size on every open connection (4096 of them by default).
//!
//! May import nothing of keygate's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, IO,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// pingora's default (`DEFAULT_L4_WRITE_BUFFER_SIZE`): one TCP segment's payload on Ethernet.
pub const WRITE_BUFFER: usize = 1460;

/// `io` with its writes gathered in a buffer of `WRITE_BUFFER` bytes.
#[derive(Debug)]
pub struct WriteBuffered<S: AsyncWrite + Unpin> {
    io: BufWriter<S>,
}

impl<S: AsyncWrite + Unpin> Drop for WriteBuffered<S> {
    /// One attempt to send what is left, without waiting (the socket is non-blocking): tokio's
    /// `BufWriter` drops its buffer silently, and pingora's error paths drop a session without
    /// flushing it, trusting its own `Stream` to do this.
    fn drop(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = Pin::new(&mut self.io).poll_flush(&mut cx);
    }
}

impl<S: IO> WriteBuffered<S> {
    pub fn new(io: S) -> Self {
        WriteBuffered {
            io: BufWriter::with_capacity(WRITE_BUFFER, io),
        }
    }
}

impl<S: IO> AsyncRead for WriteBuffered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: IO> AsyncWrite for WriteBuffered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // BufWriter flushes what it holds before it shuts the stream down.
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: IO> Shutdown for WriteBuffered<S> {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.io).await {
            tracing::debug!(error = %e, "failed to shut a connection down");
        }
    }
}

impl<S: IO> UniqueID for WriteBuffered<S> {
    fn id(&self) -> UniqueIDType {
        self.io.get_ref().id()
    }
}

impl<S: IO> Ssl for WriteBuffered<S> {}

impl<S: IO> GetTimingDigest for WriteBuffered<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.io.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.io.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.io.get_ref().get_write_pending_time()
    }
}

impl<S: IO> GetProxyDigest for WriteBuffered<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.io.get_ref().get_proxy_digest()
    }
}

impl<S: IO> GetSocketDigest for WriteBuffered<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io.get_ref().get_socket_digest()
    }
}

/// Peeking is not offered: keygate reads no byte before pingora does.
impl<S: IO> Peek for WriteBuffered<S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as TcpStream;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (WriteBuffered<TcpStream>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let server = TcpStream::from(accepted.unwrap().0);
        (WriteBuffered::new(server), client.unwrap())
    }

    /// Small writes wait for the flush; then the peer reads them as one.
    #[tokio::test]
    async fn small_writes_leave_together_at_the_flush() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await;
        assert!(early.is_err(), "nothing may leave before the flush");
        server.flush().await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\n\r\nhello");
    }

    /// What is held when the stream is dropped still goes out.
    #[tokio::test]
    async fn dropping_sends_what_was_held() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    /// A write larger than the buffer goes out whole, and shutdown sends what was held.
    #[tokio::test]
    async fn large_writes_pass_and_shutdown_flushes() {
        let (mut server, mut client) = pair().await;
        let big = vec![7u8; 3 * WRITE_BUFFER];
        server.write_all(b"head").await.unwrap();
        server.write_all(&big).await.unwrap();
        server.write_all(b"tail").await.unwrap();
        Shutdown::shutdown(&mut server).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4 + big.len() + 4);
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[got.len() - 4..], b"tail");
    }
}
