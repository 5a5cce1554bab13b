//! An upstream connection the pool can cut: once its [`Cut`] is pulled, every read and write
//! fails, so HTTP/1.1 and HTTP/2 alike end the connection and fail the requests on it (as
//! resets, which the router retries). Closing hyper's connection task is not enough: an HTTP/2
//! connection lives on in its own task until its streams finish, and over a dead path they
//! never do.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connect::UpstreamIo;

/// The switch of one connection.
#[derive(Default)]
pub struct Cut {
    pulled: Cell<bool>,
    /// The task last waiting on the socket, woken when the switch is pulled (it would
    /// otherwise wait on a peer that never answers).
    waiting: RefCell<Option<Waker>>,
}

impl Cut {
    /// Fails the connection's reads and writes from now on.
    pub fn pull(&self) {
        self.pulled.set(true);
        if let Some(w) = self.waiting.borrow_mut().take() {
            w.wake();
        }
    }
}

impl Cut {
    fn wait(&self, cx: &Context<'_>) {
        *self.waiting.borrow_mut() = Some(cx.waker().clone());
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed: its endpoint failed its health checks",
    )
}

/// An upstream connection with its switch.
pub struct Cuttable {
    io: UpstreamIo,
    cut: Rc<Cut>,
}

impl Cuttable {
    pub fn new(io: UpstreamIo, cut: Rc<Cut>) -> Self {
        Cuttable { io, cut }
    }

    /// Whether ALPN chose HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.io.is_h2()
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut.pulled.get() {
            return Poll::Ready(Err(cut_error()));
        }
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_pending() {
            self.cut.wait(cx);
        }
        polled
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut.pulled.get() {
            return Poll::Ready(Err(cut_error()));
        }
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if polled.is_pending() {
            self.cut.wait(cx);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.pulled.get() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut.pulled.get() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
