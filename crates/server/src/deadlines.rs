//! Per-connection deadlines that the HTTP layer does not keep by itself.
//!
//! actix-http times out a slow request head only on the *first* request of a
//! connection, and never times out a response the client does not read. A
//! client could therefore hold a keep-alive connection open forever by sending
//! its second request at one byte a second, or pin response buffers in memory
//! by never reading them. [`Deadlines`] wraps the (TLS) stream under the HTTP
//! dispatcher and enforces, on every request of every connection:
//!
//! - **head deadline**: from the first byte of a request to the blank line
//!   that ends its head, at most `request_timeout`. Past it, the client gets
//!   `408 Request Timeout` and the connection is closed. (The body has its
//!   own limit of the same length, kept by the handler, which can say which
//!   part was late.);
//! - **write deadline**: a write that makes no progress for `write_timeout`
//!   (the client stopped reading) closes the connection, freeing its buffers.
//!
//! Idle keep-alive time between requests is not counted: that is the HTTP
//! layer's keep-alive timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

/// Sent by the wrapper itself when a request misses its deadline; the HTTP
/// layer has not started a response (that is what the deadline measures).
const TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Which deadline closed a connection (reported once per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missed {
    Request,
    Write,
}

impl Missed {
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            Missed::Request => "timeout",
            Missed::Write => "write_timeout",
        }
    }
}

/// Called once when a connection misses a deadline (metrics, logs).
pub(crate) type OnMissed = Arc<dyn Fn(Missed) + Send + Sync>;

/// The two limits, shared by every connection of a listener.
#[derive(Clone)]
pub(crate) struct Limits {
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    pub on_missed: OnMissed,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("request_timeout", &self.request_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

/// The blank line that ends a request head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

#[derive(Debug)]
enum State {
    /// Between requests, or while a response is being written.
    Idle,
    /// A request head is arriving; `matched` bytes of [`HEAD_END`] have just
    /// been seen.
    Receiving {
        deadline: Pin<Box<Sleep>>,
        matched: usize,
    },
    /// The head is complete; the handler bounds the body. Lasts until the
    /// response starts.
    HeadDone,
    /// The request deadline passed: the 408 is being written (`sent` bytes
    /// so far). The HTTP layer sees only errors from now on.
    TimingOut { sent: usize },
    /// Closed by a deadline.
    Closed,
}

/// A stream with request and write deadlines (see the module docs).
#[derive(Debug)]
pub(crate) struct Deadlines<IO> {
    io: IO,
    limits: Limits,
    state: State,
    /// Armed while a write (or flush) is pending; reset by any progress.
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Deadlines<IO> {
    pub(crate) fn new(io: IO, limits: Limits) -> Self {
        Deadlines {
            io,
            limits,
            state: State::Idle,
            write_deadline: None,
        }
    }

    fn missed(&mut self, missed: Missed) -> io::Error {
        if !matches!(self.state, State::Closed) {
            (self.limits.on_missed)(missed);
        }
        self.state = State::Closed;
        let what = match missed {
            Missed::Request => "the request was not received in time",
            Missed::Write => "the client did not read the response in time",
        };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }

    fn closed() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "the connection missed a deadline")
    }

    /// `Ready` once a pending write has made no progress for the write
    /// timeout; arms the timer on first use.
    fn poll_write_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.limits.write_timeout;
        self.write_deadline
            .get_or_insert_with(|| Box::pin(sleep_until(Instant::now() + timeout)))
            .as_mut()
            .poll(cx)
    }

    /// `Ready(Err)` once the write deadline has passed.
    fn poll_write_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.poll_write_timer(cx));
        Poll::Ready(self.missed(Missed::Write))
    }
}

impl<IO> Deadlines<IO> {
    /// Follows a request head through the bytes just read: the first byte
    /// starts the deadline, the blank line ends it.
    fn received(&mut self, bytes: &[u8]) {
        let mut matched = match &self.state {
            State::Idle => {
                let deadline = Instant::now() + self.limits.request_timeout;
                self.state = State::Receiving {
                    deadline: Box::pin(sleep_until(deadline)),
                    matched: 0,
                };
                0
            }
            State::Receiving { matched, .. } => *matched,
            State::HeadDone | State::TimingOut { .. } | State::Closed => return,
        };
        for byte in bytes {
            matched = if *byte == HEAD_END[matched] {
                matched + 1
            } else if *byte == b'\r' {
                1
            } else {
                0
            };
            if matched == HEAD_END.len() {
                self.state = State::HeadDone;
                return;
            }
        }
        if let State::Receiving { matched: seen, .. } = &mut self.state {
            *seen = matched;
        }
    }
}

impl<IO: AsyncWrite + Unpin> Deadlines<IO> {
    /// Writes the 408 straight to the stream, then fails the read.
    fn poll_send_timeout(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let State::TimingOut { sent } = self.state else {
                return Poll::Ready(Self::closed());
            };
            if sent == TIMEOUT_RESPONSE.len() {
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &TIMEOUT_RESPONSE[sent..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(self.missed(Missed::Request));
                }
                Poll::Ready(Ok(n)) => {
                    self.write_deadline = None;
                    self.state = State::TimingOut { sent: sent + n };
                }
                // A client that sends slowly may read slowly too: the 408
                // gets the write deadline like any response.
                Poll::Pending => {
                    ready!(self.poll_write_timer(cx));
                    return Poll::Ready(self.missed(Missed::Request));
                }
            }
        }
        if Pin::new(&mut self.io).poll_flush(cx).is_pending() {
            ready!(self.poll_write_timer(cx));
        }
        Poll::Ready(self.missed(Missed::Request))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Deadlines<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.state {
            State::TimingOut { .. } => return this.poll_send_timeout(cx).map(Err),
            State::Closed => return Poll::Ready(Err(Self::closed())),
            State::Idle | State::Receiving { .. } | State::HeadDone => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let received = &buf.filled()[before..];
                if !received.is_empty() {
                    this.received(received);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                if let State::Receiving { deadline, .. } = &mut this.state {
                    ready!(deadline.as_mut().poll(cx));
                    this.state = State::TimingOut { sent: 0 };
                    return this.poll_send_timeout(cx).map(Err);
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Deadlines<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, State::TimingOut { .. } | State::Closed) {
            return Poll::Ready(Err(Self::closed()));
        }
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    // The response has started: the request met its deadline.
                    this.state = State::Idle;
                    this.write_deadline = None;
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_write_deadline(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.state, State::Closed) {
            return Poll::Ready(Err(Self::closed()));
        }
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(result) => {
                this.write_deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_write_deadline(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.poll_write_deadline(cx).map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    fn limits(request_ms: u64, write_ms: u64) -> (Limits, Arc<Mutex<Vec<Missed>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let limits = Limits {
            request_timeout: Duration::from_millis(request_ms),
            write_timeout: Duration::from_millis(write_ms),
            on_missed: Arc::new(move |missed| log.lock().unwrap().push(missed)),
        };
        (limits, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_stalls_gets_408_and_the_read_fails() {
        let (mut client, server) = duplex(1024);
        let (limits, seen) = limits(5_000, 10_000);
        let mut server = Deadlines::new(server, limits);
        client.write_all(b"PO").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.unwrap(), 2);
        // Nothing more arrives; the paused clock jumps to the deadline.
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let mut answer = vec![0u8; TIMEOUT_RESPONSE.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, TIMEOUT_RESPONSE);
        assert_eq!(*seen.lock().unwrap(), vec![Missed::Request]);
        // The HTTP layer can neither write nor read any more.
        assert!(server.write(b"late").await.is_err());
        assert!(server.read(&mut buf).await.is_err());
        assert_eq!(seen.lock().unwrap().len(), 1, "reported once");
    }

    #[tokio::test(start_paused = true)]
    async fn every_request_of_a_connection_gets_its_own_deadline() {
        let (mut client, server) = duplex(1024);
        let (limits, seen) = limits(5_000, 10_000);
        let mut server = Deadlines::new(server, limits);
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 16);
            tokio::time::sleep(Duration::from_millis(4_000)).await;
            client.write_all(b"\r\n").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 2);
            // The head is complete: the server may now take its time.
            tokio::time::sleep(Duration::from_millis(30_000)).await;
            server.write_all(b"resp").await.unwrap();
            let mut answer = [0u8; 4];
            client.read_exact(&mut answer).await.unwrap();
            // Idle time between requests does not count.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        assert!(seen.lock().unwrap().is_empty());
        // The fourth request stalls after its first byte, like a slow head.
        client.write_all(b"r").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        assert!(server.read(&mut buf).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(5_000));
        assert_eq!(*seen.lock().unwrap(), vec![Missed::Request]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_request_is_cut_at_the_deadline_not_per_byte() {
        let (mut client, server) = duplex(1024);
        let (limits, seen) = limits(5_000, 10_000);
        let mut server = Deadlines::new(server, limits);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let started = Instant::now();
            loop {
                if server.read(&mut buf).await.is_err() {
                    return started.elapsed();
                }
            }
        });
        for _ in 0..20 {
            if client.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1_000)).await;
        }
        let elapsed = reader.await.unwrap();
        assert_eq!(elapsed, Duration::from_millis(5_000));
        assert_eq!(*seen.lock().unwrap(), vec![Missed::Request]);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line_across_reads() {
        let (limits, _) = limits(5_000, 10_000);
        // (reads, head complete afterwards)
        let cases: [(&[&[u8]], bool); 6] = [
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], true),
            (&[b"GET / HTTP/1.1\r\n", b"\r", b"\n"], true),
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n"], false),
            (&[b"\r\n\r", b"\r\n\r\n"], true),
            (&[b"a\n\r\n"], false),
            (&[b"\r\r\n\r\n"], true),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        for (reads, complete) in cases {
            let mut deadlines = Deadlines::new((), limits.clone());
            for read in reads {
                deadlines.received(read);
            }
            assert_eq!(
                matches!(deadlines.state, State::HeadDone),
                complete,
                "{reads:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unread_response_closes_the_connection_after_the_write_deadline() {
        // A tiny pipe: the client never reads, so writes stop making progress.
        let (_client, server) = duplex(64);
        let (limits, seen) = limits(5_000, 10_000);
        let mut server = Deadlines::new(server, limits);
        let started = Instant::now();
        let error = server.write_all(&[b'a'; 4096]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(10_000));
        assert_eq!(*seen.lock().unwrap(), vec![Missed::Write]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_cut() {
        let (mut client, server) = duplex(64);
        let (limits, seen) = limits(5_000, 10_000);
        let mut server = Deadlines::new(server, limits);
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 64];
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(2_000)).await;
                total += client.read(&mut buf).await.unwrap();
            }
            total
        });
        server.write_all(&[b'a'; 1024]).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), 1024);
        assert!(seen.lock().unwrap().is_empty());
    }
}
