//! Watch streams: HTTP 200, chunked, one JSON event per line; initial events, history replay,
//! live changes with selector transitions, bookmarks, timeouts, and the fault switches.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tokio::time::{Instant, Interval};

use super::encode::{self, Body, View};
use crate::faults::Fault;
use crate::resources::GroupResource;
use crate::selector::Selectors;
use crate::server::{lock, Inner};
use crate::store::{Change, ChangeType, Subscription, WatchMsg, WatchStart};

/// Chunks are flushed once they reach this size.
const CHUNK: usize = 64 * 1024;

/// A parsed watch request.
pub(crate) struct WatchSpec {
    pub gr: GroupResource,
    pub ns: Option<String>,
    pub sel: Selectors,
    pub start: WatchStart,
    /// Send the `k8s.io/initial-events-end` bookmark after the initial events.
    pub initial_end: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub view: View,
}

impl WatchSpec {
    fn visible(&self, key_ns: &str) -> bool {
        self.ns.as_deref().is_none_or(|ns| ns == key_ns)
    }

    /// The event a change is for this watch: transitions into or out of the selector become
    /// ADDED or DELETED (the latter with the new state), as the real watch cache does.
    fn event_for<'a>(&self, c: &'a Change) -> Option<(&'static str, &'a Value)> {
        if !self.visible(&c.key.0) {
            return None;
        }
        let now = self.sel.matches(&c.new);
        match c.kind {
            ChangeType::Added => now.then_some(("ADDED", &c.new)),
            ChangeType::Deleted => now.then_some(("DELETED", &c.new)),
            ChangeType::Modified => {
                let before = c.old.as_ref().is_some_and(|o| self.sel.matches(o));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", &c.new)),
                    (false, true) => Some(("ADDED", &c.new)),
                    (true, false) => Some(("DELETED", &c.new)),
                    (false, false) => None,
                }
            }
        }
    }
}

struct WatchState {
    inner: Arc<Inner>,
    spec: WatchSpec,
    rx: UnboundedReceiver<WatchMsg>,
    tx: UnboundedSender<WatchMsg>,
    pending: VecDeque<Bytes>,
    /// Changes up to this version were already covered (replay or initial state).
    skip_until: u64,
    deadline: Option<Instant>,
    tick: Option<Interval>,
    drops: watch::Receiver<u64>,
    faults: watch::Receiver<Fault>,
    ended: bool,
}

enum Wake {
    End,
    Msg(WatchMsg),
    Tick,
    FaultChanged,
}

/// Answers a watch request: registers it and returns the streaming response.
pub(crate) fn respond(inner: &Arc<Inner>, spec: WatchSpec) -> Response<Body> {
    let sub = lock(&inner.store).subscribe(&spec.gr, spec.ns.as_deref(), spec.start);
    let sub = match sub {
        Ok(sub) => sub,
        Err(e) if e.code == 410 => {
            let mut line = Vec::new();
            encode::error_line(&mut line, &e);
            let frames =
                futures::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from(line)))]);
            return stream_response(&spec.view, StreamBody::new(frames).boxed_unsync());
        }
        Err(e) => return encode::error_response(&e),
    };
    let view = spec.view.clone();
    let state = initial_state(inner, spec, sub);
    let frames = futures::stream::unfold(state, next_chunk).map(Ok::<_, Infallible>);
    stream_response(&view, StreamBody::new(frames).boxed_unsync())
}

fn stream_response(view: &View, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let ct = HeaderValue::from_str(view.content_type(false))
        .unwrap_or(HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(CONTENT_TYPE, ct);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    resp
}

fn push_chunk(pending: &mut VecDeque<Bytes>, buf: &mut Vec<u8>, force: bool) {
    if !buf.is_empty() && (force || buf.len() >= CHUNK) {
        pending.push_back(Bytes::from(std::mem::take(buf)));
    }
}

fn initial_state(inner: &Arc<Inner>, spec: WatchSpec, sub: Subscription) -> WatchState {
    let mut pending = VecDeque::new();
    let mut buf = Vec::new();
    for obj in sub.initial.iter().filter(|o| spec.sel.matches(o)) {
        encode::event_line(&mut buf, "ADDED", &spec.view, obj);
        push_chunk(&mut pending, &mut buf, false);
    }
    if spec.initial_end {
        encode::bookmark_line(&mut buf, &spec.view, sub.rv, true);
    }
    for c in &sub.replay {
        if let Some((ty, obj)) = spec.event_for(c) {
            encode::event_line(&mut buf, ty, &spec.view, obj);
            push_chunk(&mut pending, &mut buf, false);
        }
    }
    push_chunk(&mut pending, &mut buf, true);
    let skip_until = match spec.start {
        WatchStart::After(n) => n.max(sub.rv),
        _ => sub.rv,
    };
    let cap = inner.options.max_watch;
    let limit = match (spec.timeout, cap) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    };
    let period = inner
        .options
        .bookmark_interval
        .max(Duration::from_millis(10));
    let tick = spec
        .bookmarks
        .then(|| tokio::time::interval_at(Instant::now() + period, period));
    WatchState {
        inner: inner.clone(),
        rx: sub.rx,
        tx: sub.tx,
        pending,
        skip_until,
        deadline: limit.map(|l| Instant::now() + l),
        tick,
        drops: inner.faults.drops(),
        faults: inner.faults.subscribe(),
        ended: false,
        spec,
    }
}

impl WatchState {
    /// Appends the line for one message; returns false when the stream must end.
    fn encode(&mut self, msg: WatchMsg, out: &mut Vec<u8>) -> bool {
        match msg {
            WatchMsg::Gone => return false,
            WatchMsg::Change(c) => {
                if c.rv > self.skip_until {
                    if let Some((ty, obj)) = self.spec.event_for(&c) {
                        encode::event_line(out, ty, &self.spec.view, obj);
                    }
                }
            }
            WatchMsg::Bookmark(rv) => {
                if self.spec.bookmarks && rv >= self.skip_until {
                    encode::bookmark_line(out, &self.spec.view, rv, false);
                }
            }
        }
        true
    }

    async fn wake(&mut self) -> Wake {
        let deadline = self.deadline;
        let tick = self.tick.as_mut();
        tokio::select! {
            r = self.drops.changed() => { let _ = r; Wake::End }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => Wake::End,
            r = self.faults.changed() => if r.is_ok() { Wake::FaultChanged } else { Wake::End },
            m = self.rx.recv() => m.map_or(Wake::End, Wake::Msg),
            _ = async { match tick { Some(t) => { t.tick().await; } None => std::future::pending().await } } => Wake::Tick,
        }
    }

    /// While the hang fault lasts, send nothing; ends early only if watches are dropped.
    async fn wait_while_hung(&mut self) -> bool {
        tokio::select! {
            _ = self.drops.changed() => false,
            r = self.faults.wait_for(|f| *f != Fault::Hang) => r.is_ok(),
        }
    }
}

async fn next_chunk(mut st: WatchState) -> Option<(Frame<Bytes>, WatchState)> {
    if let Some(b) = st.pending.pop_front() {
        return Some((Frame::data(b), st));
    }
    if st.ended {
        return None;
    }
    loop {
        if *st.faults.borrow() == Fault::Hang && !st.wait_while_hung().await {
            return None;
        }
        let msg = match st.wake().await {
            Wake::End => return None,
            Wake::FaultChanged => continue,
            Wake::Tick => {
                lock(&st.inner.store).bookmark(&st.tx);
                continue;
            }
            Wake::Msg(m) => m,
        };
        let mut out = Vec::new();
        let mut go_on = st.encode(msg, &mut out);
        while go_on && out.len() < CHUNK {
            match st.rx.try_recv() {
                Ok(m) => go_on = st.encode(m, &mut out),
                Err(_) => break,
            }
        }
        st.ended = !go_on;
        if !out.is_empty() {
            return Some((Frame::data(Bytes::from(out)), st));
        }
        if st.ended {
            return None;
        }
    }
}
