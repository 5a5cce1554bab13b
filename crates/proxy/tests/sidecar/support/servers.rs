//! Plaintext HTTP backends that record what reaches them, and a TCP echo server.

use super::*;

/// What a backend does with a request (by the backend's 0-based hit count).
#[derive(Clone)]
pub enum Reply {
    /// This status, the backend's name as the body.
    Status(u16),
    /// This status after a delay.
    After(Duration, u16),
    /// Never answer (the connection stays open).
    Hang,
    /// Close the connection without an answer.
    Close,
    /// This status and the first bytes of a body that never ends.
    Stall(u16),
}

/// A body that sends one chunk, then nothing, for ever.
struct Stalled(Option<Bytes>);

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// A request as the backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A plaintext HTTP backend (HTTP/1.1 and h2c) that records every request and answers with
/// its name as the body and in `x-backend`, plus two hop-by-hop response headers
/// (`keep-alive`, `proxy-connection`) a proxy must not pass on.
pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    /// Always 200.
    pub async fn ok(name: &'static str) -> Backend {
        Backend::start(name, |_| Reply::Status(200)).await
    }

    pub async fn start(
        name: &'static str,
        reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let reply = Arc::new(reply);
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let reply = Arc::clone(&reply);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        let reply = Arc::clone(&reply);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = {
                                let mut log = log.lock().expect("log");
                                log.push(Seen {
                                    method: parts.method.clone(),
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers.clone(),
                                    body,
                                });
                                log.len() - 1
                            };
                            let (status, stall) = match reply(n) {
                                Reply::Status(s) => (s, false),
                                Reply::After(d, s) => {
                                    tokio::time::sleep(d).await;
                                    (s, false)
                                }
                                Reply::Stall(s) => (s, true),
                                Reply::Hang => std::future::pending::<(u16, bool)>().await,
                                Reply::Close => {
                                    return Err(std::io::Error::other("closing without answer"))
                                }
                            };
                            let first = Bytes::from_static(name.as_bytes());
                            let body: BoxBody<Bytes, std::io::Error> = if stall {
                                Stalled(Some(first)).boxed()
                            } else {
                                Full::new(first).map_err(|never| match never {}).boxed()
                            };
                            let response = Response::builder()
                                .status(status)
                                .header("x-backend", name)
                                .header("keep-alive", "timeout=30")
                                .header("proxy-connection", "keep-alive")
                                .body(body)
                                .expect("response");
                            Ok::<_, std::io::Error>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Backend { addr, seen }
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().expect("log").len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the backend saw a request")
    }
}

/// A TCP echo server that records the bytes it received.
pub struct Echo {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let r = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                r.lock().expect("received").extend_from_slice(&buf[..n]);
                                if tcp.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Echo { addr, received }
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().expect("received").clone()
    }
}
