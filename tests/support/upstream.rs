//! Test upstreams: an HTTP/1.1 app that records what reaches it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An app behind a proxy: answers every HTTP/1.1 request head with 200 (keep-alive
/// unless asked to close) and records the request line and the `x-forwarded-client-cert`
/// header Envoy set, and how many connections it accepted.
pub struct HttpApp {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HttpApp {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind app");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, c, s) = (requests.clone(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let (r, s) = (r.clone(), s.clone());
                        std::thread::spawn(move || serve(stream, &r, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            requests,
            connections,
            stop,
        }
    }

    /// Request lines seen so far, with their `x-forwarded-client-cert`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().expect("lock").clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one app connection until the peer closes, asks to close, stops or 60 s pass.
fn serve(mut stream: TcpStream, requests: &Mutex<Vec<(String, String)>>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let line = head.lines().next().unwrap_or_default().to_owned();
            let header = |name: &str| {
                head.lines()
                    .skip(1)
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default()
            };
            let (xfcc, close) = (
                header("x-forwarded-client-cert"),
                header("connection").eq_ignore_ascii_case("close"),
            );
            requests.lock().expect("lock").push((line.clone(), xfcc));
            let body = format!("app saw {line}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            if stream.write_all(answer.as_bytes()).is_err() || close {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
