//! HTTP/1.1 and HTTP/2 clients, bounded waits.

use super::*;

/// A response as the client got it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

pub async fn bounded<F: Future>(f: F) -> std::io::Result<F::Output> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))
}

/// The workers bind asynchronously: retry refused connections for a bounded time.
pub async fn connect_when_listening(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A GET request for `host` and `path`.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

async fn collect(response: Response<Incoming>) -> Result<Answer, hyper::Error> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One HTTP/1.1 keep-alive connection (the app's side of an outbound listener).
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn over<IO>(io: IO) -> std::io::Result<H1>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = bounded(hyper::client::conn::http1::handshake(TokioIo::new(io)))
            .await?
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(H1 { sender })
    }

    pub async fn connect(addr: SocketAddr) -> std::io::Result<H1> {
        H1::over(connect_when_listening(addr).await?).await
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> std::io::Result<Answer> {
        bounded(async {
            self.sender.ready().await?;
            collect(self.sender.send_request(req).await?).await
        })
        .await?
        .map_err(std::io::Error::other)
    }

    /// The response's head, its body left to read.
    pub async fn head(&mut self, req: Request<Full<Bytes>>) -> std::io::Result<Response<Incoming>> {
        bounded(async {
            self.sender.ready().await?;
            self.sender.send_request(req).await
        })
        .await?
        .map_err(std::io::Error::other)
    }
}

/// One HTTP/2 connection.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn over<IO>(io: IO) -> std::io::Result<H2>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = bounded(hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(io),
        ))
        .await?
        .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(H2 { sender })
    }

    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> std::io::Result<Answer> {
        // HTTP/2 wants the authority in the URI.
        if let Some(host) = req.headers_mut().remove("host") {
            let host = host.to_str().map_err(std::io::Error::other)?.to_owned();
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            *req.uri_mut() = format!("http://{host}{pq}")
                .parse()
                .map_err(std::io::Error::other)?;
        }
        bounded(async {
            self.sender.ready().await?;
            collect(self.sender.send_request(req).await?).await
        })
        .await?
        .map_err(std::io::Error::other)
    }
}

/// `req` on a new HTTP/1.1 connection to `addr`.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    let mut c = H1::connect(addr).await.expect("connect");
    c.send(req).await.expect("an answer")
}

/// Repeats `f` until it is true, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
