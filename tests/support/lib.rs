//! Support for end-to-end suites: locate the `causeway` binary, run it as a child process that
//! is always stopped, and talk to it over real sockets.

pub mod envoy;
pub mod kube_mesh;
pub mod load;
pub mod mesh_client;
mod mesh_run;
pub mod mtls;
pub mod netns;
pub mod partition_mesh;
pub mod upstream;

pub use mesh_run::{mesh_lock, set_data_plane, MeshRun};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The `causeway` binary the suites run: `$CAUSEWAY_BIN`; else the debug build with the
/// `test-hooks` feature, `target/debug/causeway-test-hooks` (made by `make test` and
/// `make test-bin`; the NACK test needs its `--enable-test-hooks`), unless
/// `target/debug/causeway` was linked after it (a rebuild since: it would be stale); else
/// `target/debug/causeway`.
pub fn causeway_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAUSEWAY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    let bin = target.join("debug").join("causeway");
    let hooks = target.join("debug").join("causeway-test-hooks");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let Some(hooks_built) = modified(&hooks) {
        if modified(&bin).is_none_or(|plain_built| plain_built <= hooks_built) {
            return hooks;
        }
    }
    assert!(
        bin.exists(),
        "{} is missing: build it first (`make test-bin`, or `cargo build -p causeway` for suites without test hooks) or set CAUSEWAY_BIN",
        bin.display()
    );
    bin
}

/// Runs `causeway ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(causeway_bin())
        .args(args)
        .output()
        .expect("run causeway")
}

/// A free TCP port on 127.0.0.1, from a counter below Linux's ephemeral range (32768-60999):
/// a port the kernel hands out for `bind(:0)` is released when the probe closes and can be taken
/// by another test's socket before the caller binds it, and in the ephemeral range any client
/// socket can hold it first. 10000-11999 is used by nothing else in the suites.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(10_000);
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            port < 12_000,
            "the suite ran out of test ports (10000-11999)"
        );
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).expect("copy");
        }
    }
}

/// A child process killed (and reaped) on drop, whose log is kept in a file.
pub struct Process {
    child: Child,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

impl Process {
    /// Starts `causeway ARGS`, logging to `log`.
    pub fn start(args: &[&str], log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(causeway_bin())
            .args(args)
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn causeway");
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) with kill(1): a stopped process keeps its sockets
    /// open and answers nothing, like a host that hangs or a black-holed network.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// One HTTP/1.1 request with an empty body (`Connection: close`); returns (status, body).
/// Bounded by 5 s timeouts.
fn http_request(method: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

/// GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request("GET", addr, path)
}

/// GETs JSON, panicking with the body on a non-200 answer.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Polls `f` every 20 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Envoy binary: `$CAUSEWAY_ENVOY`, else the workspace venv (`scripts/ensure-envoy`).
/// Panics with instructions when missing: Envoy tests must fail loudly, never skip.
pub fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAUSEWAY_ENVOY") {
        return PathBuf::from(p);
    }
    let lib = workspace().join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let candidate = e.path().join("site-packages/envoy/_bin/envoy");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("Envoy is not installed: run scripts/ensure-envoy (or set CAUSEWAY_ENVOY); these tests need a real Envoy");
}

/// A control plane on free ports over a copy of a mesh directory.
pub struct ControlPlane {
    /// Scratch directory (mesh copy, logs, bootstraps).
    pub dir: tempfile::TempDir,
    /// The mesh directory copy.
    pub mesh_dir: PathBuf,
    /// Debug API.
    pub debug: SocketAddr,
    /// xDS.
    pub xds: SocketAddr,
    /// The CA service.
    pub ca: SocketAddr,
    /// The process.
    pub process: Process,
}

impl ControlPlane {
    /// Starts over a copy of `examples/<example>` and waits for its debug API.
    pub fn start(example: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh_dir = dir.path().join("mesh");
        copy_dir(&workspace().join("examples").join(example), &mesh_dir);
        let debug: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let xds: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let ca: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut args = vec![
            "control-plane".to_owned(),
            "--mesh-dir".into(),
            mesh_dir.display().to_string(),
            "--debug-addr".into(),
            debug.to_string(),
            "--xds-addr".into(),
            xds.to_string(),
            "--ca-addr".into(),
            ca.to_string(),
            "--ca-dir".into(),
            dir.path().join("ca").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = Process::start(&refs, &dir.path().join("control-plane.log"));
        let up = wait_for(Duration::from_secs(20), || {
            http_get(debug, "/healthz").ok().filter(|(s, _)| *s == 200)
        });
        assert!(
            up.is_some() && process.is_running(),
            "control plane did not come up:\n{}",
            process.log_text()
        );
        Self {
            dir,
            mesh_dir,
            debug,
            xds,
            ca,
            process,
        }
    }

    /// Starts an agent for cluster `cluster`'s gateway identity (the example's
    /// `tokens/<cluster>/eastwest-gateway.token`) and `causeway proxy --role gateway` using it.
    pub fn gateway(&self, name: &str, cluster: &str, workload: &str, admin: &str) -> Vec<Process> {
        self.gateway_with(name, cluster, workload, admin, &[])
    }

    /// [`Self::gateway`] with more `causeway proxy` flags (`--data-plane causeway`, say).
    pub fn gateway_with(
        &self,
        name: &str,
        cluster: &str,
        workload: &str,
        admin: &str,
        proxy_args: &[&str],
    ) -> Vec<Process> {
        let sds = self.dir.path().join(format!("{name}.sock"));
        let sds = sds.display().to_string();
        let token = self
            .mesh_dir
            .join(format!("tokens/{cluster}/eastwest-gateway.token"));
        let root = self.dir.path().join("ca/root/root-cert.pem");
        let agent = Process::start(
            &[
                "agent",
                "--ca",
                &self.ca.to_string(),
                "--ca-root",
                &root.display().to_string(),
                "--token-file",
                &token.display().to_string(),
                "--trust-domain",
                "causeway.local",
                "--namespace",
                "causeway-system",
                "--service-account",
                "eastwest-gateway",
                "--sds-socket",
                &sds,
                "--cluster",
                cluster,
            ],
            &self.dir.path().join(format!("{name}-agent.log")),
        );
        let mut args = vec![
            "--role",
            "gateway",
            "--cluster",
            cluster,
            "--namespace",
            "causeway-system",
            "--workload",
            workload,
            "--sds-socket",
            &sds,
            "--admin",
            admin,
        ];
        args.extend_from_slice(proxy_args);
        let proxy = self.proxy(name, &args);
        vec![agent, proxy]
    }

    /// Starts `causeway proxy ARGS` against this control plane, logging to the scratch dir.
    pub fn proxy(&self, name: &str, args: &[&str]) -> Process {
        let mut all = vec![
            "proxy".to_owned(),
            "--xds".into(),
            self.xds.to_string(),
            "--run-dir".into(),
            self.dir.path().display().to_string(),
            "--envoy".into(),
            envoy_bin().display().to_string(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Process::start(&refs, &self.dir.path().join(format!("{name}.log")))
    }

    /// Waits until `count` proxies are connected and have acknowledged their latest config.
    pub fn wait_in_sync(&self, count: usize, limit: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let ok = wait_for(limit, || {
            let v = get_json(self.debug, "/debug/proxies");
            last = v.clone();
            let proxies = v["proxies"].as_array()?;
            (proxies.len() == count && proxies.iter().all(|p| p["inSync"] == true)).then_some(v)
        });
        ok.unwrap_or_else(|| {
            panic!(
                "proxies not in sync: {last:#}\ncontrol plane log:\n{}",
                self.process.log_text()
            )
        })
    }
}

/// A TLS ClientHello carrying `sni` (TLS 1.3 offered), enough for an SNI router to pick a
/// route. Written by hand so a test can send any SNI without a TLS stack.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut ext = Vec::new();
    // server_name
    let list_len = name.len() + 3;
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    // supported_versions: TLS 1.3
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    // supported_groups: x25519
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // no compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// A TCP listener that records the first bytes of every connection it accepts.
pub struct Recorder {
    /// Bytes received, per connection.
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    /// Listens on `addr`.
    pub fn start(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = vec![0u8; 4096];
                        let n = stream.read(&mut buf).unwrap_or(0);
                        buf.truncate(n);
                        r.lock().expect("lock").push(buf);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { received, stop }
    }

    /// Connections seen so far.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends `bytes` to `addr` and reports whether the peer closed the connection without
/// answering within `wait` (what an SNI router does with an unknown name).
pub fn send_and_observe_close(addr: SocketAddr, bytes: &[u8], wait: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return true;
    };
    let _ = stream.set_read_timeout(Some(wait));
    if stream.write_all(bytes).is_err() {
        return true;
    }
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Calls `http://addr/` and returns the echo app's JSON answer (or the status and body).
pub fn call(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let (status, body) = http_get(addr, "/").map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// Waits up to `limit` for a call to `addr` that `cluster` answers.
pub fn wait_answered_by(addr: SocketAddr, cluster: &str, limit: Duration) -> bool {
    wait_for(limit, || {
        call(addr)
            .ok()
            .filter(|v| v["cluster"] == cluster)
            .map(|_| ())
    })
    .is_some()
}

/// Writes the `TrafficPolicy` demo/echo for the example's echo service into the mesh
/// directory `mesh_dir` (`policies/echo.yaml`), `spec` being the lines after `service: echo`.
/// Written whole and renamed over the old file, as an editor or a deploy tool does.
pub fn write_echo_policy(mesh_dir: &Path, spec: &str) {
    std::fs::create_dir_all(mesh_dir.join("policies")).expect("mkdir");
    let text = format!(
        "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  service: echo\n{spec}"
    );
    let tmp = mesh_dir.join("policies/.echo.yaml.tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, mesh_dir.join("policies/echo.yaml")).expect("rename policy");
}

/// POST with an empty body; returns (status, body).
pub fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request("POST", addr, path)
}

impl Process {
    /// Starts any program (e.g. `ip netns exec ...`), logging to `log`.
    pub fn start_program(program: &str, args: &[&str], log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Self {
            child,
            log: log.to_path_buf(),
        }
    }
}

/// Installs aws-lc-rs as rustls' process-wide provider (the fake API servers and kube-rs need
/// one); idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
