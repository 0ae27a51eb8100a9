//! The connection writer that sends file-backed response bodies with `sendfile(2)` (issue 11,
//! P1): what nginx's `sendfile on` does, under hyper.
//!
//! hyper writes a response as a list of buffers: its header buffer, then the body's
//! [`Bytes`](bytes::Bytes) as they are, uncopied. [`ZeroCopyStream`] wraps the connection's
//! socket and looks at each buffer it is given. One that lies inside a buffer read from a local
//! file ([`crate::storage::file_bytes`]: segments the node's cache read from the local store)
//! is sent as that range of the file, so the kernel hands its page-cache pages to the socket
//! instead of copying the bytes from the process's memory. Everything else (headers, small
//! bodies, bodies read from S3, uploads' answers) is written as before.
//!
//! Correct either way: the file range holds the same bytes as the buffer (the invariant of
//! `file_bytes`), and when `sendfile` fails or sends nothing the same bytes are written from
//! memory. hyper sees an ordinary socket that wrote `n` bytes of what it was given.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::storage::file_bytes::{self, FileRange};

/// Buffers smaller than this (bytes) are written from memory without a lookup: headers and
/// small bodies. The rest of a partly sent segment is looked up like its start.
const LOOKUP_MIN_BYTES: usize = 16 * 1024;

/// Bytes sent from files since the process started (`/health` reports them).
static SENT_FROM_FILES: AtomicU64 = AtomicU64::new(0);

/// Bytes the node has sent with `sendfile(2)` since it started.
pub fn sent_from_files() -> u64 {
    SENT_FROM_FILES.load(Ordering::Relaxed)
}

/// A TCP connection whose writes of file-backed buffers go out with `sendfile(2)`.
#[derive(Debug)]
pub struct ZeroCopyStream {
    inner: TcpStream,
    /// Bytes read from the connection and given back ([`ZeroCopyStream::unread`]): the next
    /// reads return them first.
    unread: bytes::Bytes,
    /// `TCP_CORK` is on: set before the header of a file-backed body, cleared once the body's
    /// last byte is handed to the socket.
    corked: bool,
}

impl ZeroCopyStream {
    /// Wrap an accepted connection, with Nagle's algorithm off (`TCP_NODELAY`, as nginx sets
    /// on keep-alive connections): the last partial packet of a body sent from a file goes out
    /// at once instead of waiting for the peer's (possibly delayed) acknowledgement, which
    /// stalled requests by 40 ms. A header and its file-backed body are still sent together, in
    /// full packets (`TCP_CORK` around them, `MSG_MORE` on the header).
    pub fn new(inner: TcpStream) -> Self {
        let _ = inner.set_nodelay(true);
        Self {
            inner,
            unread: bytes::Bytes::new(),
            corked: false,
        }
    }

    /// Give back `bytes` read from the connection and not used: the next reads return them
    /// before anything the connection receives after them. The connection's front
    /// ([`super::front`]) hands hyper the requests it does not take this way, unconsumed.
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        self.unread = bytes;
    }

    /// Turn `TCP_CORK` on or off, as nginx's `tcp_nopush` does around a file-backed response.
    /// While it is on, the kernel builds full packets from what is queued: with 1,024 busy
    /// connections, whose clients open their receive windows a little at a time, a 200 kB
    /// segment left in 9 packets uncorked and in 7 corked (nginx's count), and the rate rose
    /// 8 % (median of three runs). Off sends what it held at once, so a body's last partial
    /// packet never waits (cork's own limit is 200 ms).
    fn set_cork(&mut self, on: bool) {
        if self.corked != on {
            self.corked = on;
            let _ = set_tcp_cork(&self.inner, on);
        }
    }

    /// After a write of `len` bytes answered `res`: uncork unless bytes of it remain to be
    /// written (the caller writes them next) or it is still pending. An error uncorks too.
    fn uncork_after(&mut self, res: &Poll<io::Result<usize>>, len: usize) {
        match res {
            Poll::Ready(Ok(n)) if *n < len => {}
            Poll::Pending => {}
            _ => self.set_cork(false),
        }
    }

    /// Send `src` (the same bytes as `mem`) from its file; `mem` from memory when the file
    /// cannot be sent.
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        src: FileRange,
        mem: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self
                .inner
                .try_io(Interest::WRITABLE, || send_file(&self.inner, &src));
            let res = match sent {
                Ok(n) if n > 0 => {
                    SENT_FROM_FILES.fetch_add(n as u64, Ordering::Relaxed);
                    Poll::Ready(Ok(n))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // Nothing sent (the file is shorter than listed, or sendfile cannot serve this
                // file): the bytes are in memory too. A broken connection fails here as well.
                _ => Pin::new(&mut self.inner).poll_write(cx, mem),
            };
            self.uncork_after(&res, mem.len());
            return res;
        }
    }
}

impl ZeroCopyStream {
    /// Write `bufs` with more to follow at once (`MSG_MORE`); a plain `writev` where that
    /// cannot be done.
    fn poll_write_more(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self
                .inner
                .try_io(Interest::WRITABLE, || send_more(&self.inner, bufs))
            {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn send_more(socket: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    sendmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        bufs,
        &[],
        MsgFlags::from_bits_retain(nix::libc::MSG_MORE),
        None,
    )
    .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn send_more(_socket: &TcpStream, _bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(target_os = "linux")]
fn set_tcp_cork(socket: &TcpStream, on: bool) -> io::Result<()> {
    socket2::SockRef::from(socket).set_tcp_cork(on)
}

#[cfg(not(target_os = "linux"))]
fn set_tcp_cork(_socket: &TcpStream, _on: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(target_os = "linux")]
fn send_file(socket: &TcpStream, src: &FileRange) -> io::Result<usize> {
    let mut offset = src.offset as nix::libc::off_t;
    nix::sys::sendfile::sendfile(socket, src.file.as_ref(), Some(&mut offset), src.len)
        .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn send_file(_socket: &TcpStream, _src: &FileRange) -> io::Result<usize> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// The file range of `buf`, if it is large enough to look up and file-backed.
fn file_range(buf: &[u8]) -> Option<FileRange> {
    if buf.len() < LOOKUP_MIN_BYTES {
        return None;
    }
    file_bytes::source_of(buf)
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.unread.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread.split_to(n));
        if self.unread.is_empty() {
            // Free the buffer they were read into now, not when the connection ends.
            self.unread = bytes::Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match file_range(buf) {
            Some(src) => self.poll_send_file(cx, src, buf),
            None => {
                let res = Pin::new(&mut self.inner).poll_write(cx, buf);
                if self.corked {
                    self.uncork_after(&res, buf.len());
                }
                res
            }
        }
    }

    /// Buffers up to the first file-backed one are written together (one `writev`); a
    /// file-backed first buffer is sent from its file. Either way the count is of the bytes of
    /// `bufs` written, in order, as `AsyncWrite` requires.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Empty buffers before a file-backed one count for nothing.
        let skip = bufs.iter().take_while(|b| b.is_empty()).count();
        let bufs = &bufs[skip..];
        for (i, b) in bufs.iter().enumerate() {
            if let Some(src) = file_range(b) {
                if i == 0 {
                    return self.poll_send_file(cx, src, b);
                }
                // The header before a file-backed body: the socket is corked until the body
                // has gone (`set_cork`), and the header goes with MSG_MORE, so they share
                // packets.
                self.set_cork(true);
                return self.poll_write_more(cx, &bufs[..i]);
            }
        }
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if self.corked {
            // The tail of a corked body, too small to look up: the body ends with it.
            let len = bufs.iter().map(|b| b.len()).sum();
            self.uncork_after(&res, len);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection on loopback: the wrapped server side, and a task reading everything the
    /// client side receives until the server closes.
    async fn pair() -> (ZeroCopyStream, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let mut client = client.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        (ZeroCopyStream::new(accepted.unwrap().0), reader)
    }

    /// Close the server side; what the client received.
    async fn close(
        mut server: ZeroCopyStream,
        reader: tokio::task::JoinHandle<Vec<u8>>,
    ) -> Vec<u8> {
        server.shutdown().await.unwrap();
        drop(server);
        reader.await.unwrap()
    }

    /// A file holding `data`, and `data` read from it as listed bytes.
    fn listed(data: &[u8]) -> (tempfile::NamedTempFile, bytes::Bytes) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let h = std::fs::File::open(f.path()).unwrap();
        (f, file_bytes::from_file(data.to_vec(), h))
    }

    // Each test has its own runtime thread; the lock only orders tests that list buffers.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_file_backed_body_arrives_whole_and_in_order_after_its_header() {
        let _serial = file_bytes::test_serial();
        // 3 MB: far more than the socket buffer, so sendfile sends it in parts, with waits.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let (_keep, body) = listed(&data);
        let (mut server, reader) = pair().await;
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let before = sent_from_files();
        // As hyper writes: header and body together, advancing by what each call wrote.
        let (mut h, mut b) = (&head[..], &body[..]);
        let corked = |s: &ZeroCopyStream| socket2::SockRef::from(&s.inner).tcp_cork().unwrap();
        let mut corked_while_sending = true;
        while !h.is_empty() || !b.is_empty() {
            let bufs = [IoSlice::new(h), IoSlice::new(b)];
            let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &bufs))
                .await
                .unwrap();
            let from_h = n.min(h.len());
            h = &h[from_h..];
            b = &b[n - from_h..];
            if !b.is_empty() {
                corked_while_sending &= corked(&server);
            }
        }
        assert!(
            corked_while_sending,
            "corked from the header to the body's end"
        );
        assert!(!corked(&server), "uncorked once the body is handed over");
        let got = close(server, reader).await;
        assert_eq!(&got[..head.len()], &head[..]);
        assert!(got[head.len()..] == data[..], "the body, byte for byte");
        assert!(sent_from_files() - before >= data.len() as u64 - LOOKUP_MIN_BYTES as u64);
    }

    // Each test has its own runtime thread; the lock only orders tests that list buffers.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn the_bytes_go_out_from_the_file_not_from_memory() {
        let _serial = file_bytes::test_serial();
        // Break the invariant on purpose: change the file after it was read. What arrives is
        // the file's new content, so the socket was handed the file.
        let data = vec![b'm'; 200_000];
        let (file, body) = listed(&data);
        std::fs::OpenOptions::new()
            .write(true)
            .open(file.path())
            .unwrap()
            .write_all(&vec![b'f'; 200_000])
            .unwrap();
        let (mut server, reader) = pair().await;
        server.write_all(&body).await.unwrap();
        let got = close(server, reader).await;
        assert_eq!(got.len(), 200_000);
        assert!(got.iter().all(|&c| c == b'f'));
    }

    #[tokio::test]
    async fn unread_bytes_are_read_first_then_the_connection() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let mut client = client.unwrap();
        let mut server = ZeroCopyStream::new(accepted.unwrap().0);
        server.unread(bytes::Bytes::from_static(b"first "));
        client.write_all(b"then").await.unwrap();
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"first then");
    }

    #[tokio::test]
    async fn unlisted_bytes_are_written_from_memory() {
        let data = vec![b'x'; 100_000];
        let (mut server, reader) = pair().await;
        server.write_all(&data).await.unwrap();
        assert_eq!(close(server, reader).await, data);
    }
}
