//! Copies bytes both ways between two streams (TCP, TLS, anything `AsyncRead + AsyncWrite`),
//! with per-direction buffers that start small and grow with the flow: most mesh connections
//! carry a few KiB, and a 1 KiB buffer each way keeps idle connections cheap, while bulk
//! transfers get 16 KiB (one TLS record) after 128 KiB and 256 KiB after 10 MiB.
//!
//! An end of stream on one side is passed on as a half-close of the other's write side while
//! the other direction goes on. A reset, broken pipe or TLS stream cut without close_notify
//! ends a connection without being an error (a TCP connection may end at any time); other I/O
//! errors are errors.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Every direction starts with this buffer.
pub const INITIAL_BUFFER: usize = 1024;
/// After [`LARGE_AFTER`] bytes, while reads fill the buffer: one full TLS record.
pub const LARGE_BUFFER: usize = 16 * 1024;
/// After [`JUMBO_AFTER`] bytes, while reads fill the buffer.
pub const JUMBO_BUFFER: usize = 256 * 1024;
pub const LARGE_AFTER: u64 = 128 * 1024;
pub const JUMBO_AFTER: u64 = 10 * 1024 * 1024;

/// The size of a direction's buffer after a read of it: it grows only when the read filled it
/// (more was waiting) and enough has flowed, so a slow long-lived stream keeps a small one.
pub fn next_buffer_size(current: usize, flowed: u64, filled: bool) -> usize {
    let target = match flowed {
        _ if !filled => INITIAL_BUFFER,
        f if f >= JUMBO_AFTER => JUMBO_BUFFER,
        f if f >= LARGE_AFTER => LARGE_BUFFER,
        _ => INITIAL_BUFFER,
    };
    current.max(target)
}

/// One of the two directions of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    AToB,
    BToA,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::AToB => "a to b",
            Direction::BToA => "b to a",
        })
    }
}

/// What a direction was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Shutdown,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "reading",
            Op::Write => "writing",
            Op::Shutdown => "closing the write side",
        })
    }
}

/// An I/O error other than the other end going away.
#[derive(Debug, thiserror::Error)]
#[error("copying {direction}: {op} failed: {source}")]
pub struct CopyError {
    pub direction: Direction,
    pub op: Op,
    #[source]
    pub source: io::Error,
}

/// How a copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions reached end of stream.
    Closed,
    /// A side reset the connection, broke a pipe or cut a TLS stream without close_notify.
    Reset,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Bytes copied each way, and how the copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub end: End,
}

/// Live figures of one copy, for metrics while it runs (one `Counters` per connection).
#[derive(Debug, Default)]
pub struct Counters {
    a_to_b: AtomicU64,
    b_to_a: AtomicU64,
    a_to_b_buffer: AtomicUsize,
    b_to_a_buffer: AtomicUsize,
}

impl Counters {
    /// Bytes written to b so far.
    pub fn a_to_b(&self) -> u64 {
        self.a_to_b.load(Relaxed)
    }

    /// Bytes written to a so far.
    pub fn b_to_a(&self) -> u64 {
        self.b_to_a.load(Relaxed)
    }

    /// The current buffer size of each direction (a to b, b to a); 0 before it starts.
    pub fn buffers(&self) -> (usize, usize) {
        (
            self.a_to_b_buffer.load(Relaxed),
            self.b_to_a_buffer.load(Relaxed),
        )
    }

    fn side(&self, direction: Direction) -> Side<'_> {
        let (bytes, buffer) = match direction {
            Direction::AToB => (&self.a_to_b, &self.a_to_b_buffer),
            Direction::BToA => (&self.b_to_a, &self.b_to_a_buffer),
        };
        Side {
            direction,
            bytes,
            buffer,
        }
    }
}

/// Copies between `a` and `b` until both directions end, a side resets, or (with
/// `idle_timeout`) nothing moves for that long.
pub async fn copy_bidirectional<A, B>(
    a: A,
    b: B,
    idle_timeout: Option<Duration>,
) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    copy_with(a, b, idle_timeout, &Counters::default()).await
}

/// [`copy_bidirectional`], updating `counters` as bytes move.
pub async fn copy_with<A, B>(
    a: A,
    b: B,
    idle_timeout: Option<Duration>,
    counters: &Counters,
) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    copy_halves(
        tokio::io::split(a),
        tokio::io::split(b),
        idle_timeout,
        counters,
    )
    .await
}

/// [`copy_with`] on streams already split in halves (such as `TcpStream::into_split`'s,
/// which need no lock, unlike `tokio::io::split`'s).
pub async fn copy_halves<AR, AW, BR, BW>(
    (mut a_read, mut a_write): (AR, AW),
    (mut b_read, mut b_write): (BR, BW),
    idle_timeout: Option<Duration>,
    counters: &Counters,
) -> Result<Transferred, CopyError>
where
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let a_to_b = pipe(
        &mut a_read,
        &mut b_write,
        counters.side(Direction::AToB),
        &activity,
    );
    let b_to_a = pipe(
        &mut b_read,
        &mut a_write,
        counters.side(Direction::BToA),
        &activity,
    );
    let both = run_both(a_to_b, b_to_a);
    let end = match idle_timeout {
        None => both.await?,
        Some(idle) => tokio::select! {
            end = both => end?,
            () = activity.quiet_for(idle) => End::Idle,
        },
    };
    Ok(Transferred {
        a_to_b: counters.a_to_b(),
        b_to_a: counters.b_to_a(),
        end,
    })
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// End of stream, passed on as a half-close.
    Eof,
    /// End of a TLS stream without close_notify, passed on as a half-close.
    Cut,
    /// The writer's end went away: its data that is still coming will tell the other direction.
    WriteGone,
    /// The reader's end reset: nothing can reach it any more, so the other direction stops too.
    ReadReset,
}

/// Runs both directions; an error or a reset of a reader ends the other one at once.
async fn run_both(
    a_to_b: impl Future<Output = Result<Ended, CopyError>>,
    b_to_a: impl Future<Output = Result<Ended, CopyError>>,
) -> Result<End, CopyError> {
    tokio::pin!(a_to_b, b_to_a);
    let (first, a_to_b_first) = tokio::select! {
        r = &mut a_to_b => (r?, true),
        r = &mut b_to_a => (r?, false),
    };
    if first == Ended::ReadReset {
        return Ok(End::Reset);
    }
    let second = if a_to_b_first {
        b_to_a.await?
    } else {
        a_to_b.await?
    };
    Ok(match (first, second) {
        (Ended::Eof, Ended::Eof) => End::Closed,
        _ => End::Reset,
    })
}

/// One direction's counters.
struct Side<'a> {
    direction: Direction,
    bytes: &'a AtomicU64,
    buffer: &'a AtomicUsize,
}

impl Side<'_> {
    fn error(&self, op: Op, source: io::Error) -> CopyError {
        CopyError {
            direction: self.direction,
            op,
            source,
        }
    }
}

/// Copies `reader` to `writer` until end of stream (then half-closes `writer`) or an error.
async fn pipe<R, W>(
    reader: &mut R,
    writer: &mut W,
    side: Side<'_>,
    activity: &Activity,
) -> Result<Ended, CopyError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0; INITIAL_BUFFER];
    side.buffer.store(buf.len(), Relaxed);
    let mut flowed: u64 = 0;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => return shutdown(writer, &side, Ended::Eof).await,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return shutdown(writer, &side, Ended::Cut).await;
            }
            Err(e) if gone(&e) => {
                // No half-close: the copy ends now, and dropping the streams closes them.
                tracing::trace!(direction = %side.direction, error = %e, "reader went away");
                return Ok(Ended::ReadReset);
            }
            Err(e) => return Err(side.error(Op::Read, e)),
        };
        activity.touch();
        let chunk = buf.get(..n).ok_or_else(|| {
            side.error(
                Op::Read,
                io::Error::other("read past the end of the buffer"),
            )
        })?;
        if let Err(e) = write_flush(writer, chunk).await {
            if gone(&e) || e.kind() == io::ErrorKind::WriteZero {
                tracing::trace!(direction = %side.direction, error = %e, "writer went away");
                return Ok(Ended::WriteGone);
            }
            return Err(side.error(Op::Write, e));
        }
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        flowed = flowed.saturating_add(n);
        side.bytes.fetch_add(n, Relaxed);
        let next = next_buffer_size(buf.len(), flowed, chunk.len() == buf.len());
        if next != buf.len() {
            buf.resize(next, 0);
            side.buffer.store(next, Relaxed);
        }
    }
}

/// Writes all of `chunk` and flushes it (a TLS writer may hold it back otherwise).
async fn write_flush<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    chunk: &[u8],
) -> io::Result<()> {
    writer.write_all(chunk).await?;
    writer.flush().await
}

/// Half-closes `writer` after its reader ended as `ended`; a writer whose end is gone already
/// is not an error.
async fn shutdown<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    side: &Side<'_>,
    ended: Ended,
) -> Result<Ended, CopyError> {
    match writer.shutdown().await {
        Ok(()) => Ok(ended),
        Err(e) if gone(&e) || e.kind() == io::ErrorKind::UnexpectedEof => Ok(Ended::WriteGone),
        Err(e) => Err(side.error(Op::Shutdown, e)),
    }
}

/// The other end went away: not an error of the copy.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// When a byte last moved, for the idle timeout (milliseconds since the copy started).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn quiet_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Relaxed));
            let Some(deadline) = self.start.checked_add(last.saturating_add(idle)) else {
                return std::future::pending().await; // Too far to ever come.
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}
