//! A whole example mesh started process by process from `causeway demo --print-plan`, so a
//! test can stop, restart or switch the data plane of any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

/// Serializes tests that run a whole mesh: the example's workload addresses are fixed, so two
/// meshes cannot run at once.
pub fn mesh_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A whole mesh from `causeway demo --print-plan`, each process started by the test so it can
/// stop and restart any of them.
pub struct MeshRun {
    /// Scratch directory.
    pub dir: tempfile::TempDir,
    /// The mesh directory copy.
    pub mesh_dir: PathBuf,
    /// The plan.
    pub plan: serde_json::Value,
    /// Running processes by plan name.
    pub processes: std::collections::BTreeMap<String, Process>,
    /// Control plane debug API.
    pub debug: SocketAddr,
}

impl MeshRun {
    /// Copies `examples/<example>`, lets `edit` change it, and starts every process of its plan
    /// (the control plane with `cp_extra` arguments) with Envoy proxies, waiting until every
    /// proxy is in sync.
    pub fn start(
        example: &str,
        port_base: u16,
        edit: impl FnOnce(&Path),
        cp_extra: &[&str],
    ) -> Self {
        Self::start_on("envoy", example, port_base, edit, cp_extra)
    }

    /// [`Self::start`] with every proxy on `data_plane` (`envoy` or `causeway`).
    pub fn start_on(
        data_plane: &str,
        example: &str,
        port_base: u16,
        edit: impl FnOnce(&Path),
        cp_extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh_dir = dir.path().join("mesh");
        copy_dir(&workspace().join("examples").join(example), &mesh_dir);
        edit(&mesh_dir);
        let me = Self::launch_with(
            dir,
            mesh_dir,
            port_base,
            cp_extra,
            &[],
            &["--data-plane", data_plane],
        );
        me.warm_up();
        me
    }

    /// [`Self::start_on`] without the warm-up, for a mesh whose policies leave alpha's own echo
    /// out (the warm-up waits for it): the test waits for what its policy promises instead.
    pub fn start_cold(
        data_plane: &str,
        example: &str,
        port_base: u16,
        edit: impl FnOnce(&Path),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh_dir = dir.path().join("mesh");
        copy_dir(&workspace().join("examples").join(example), &mesh_dir);
        edit(&mesh_dir);
        Self::launch_with(
            dir,
            mesh_dir,
            port_base,
            &[],
            &[],
            &["--data-plane", data_plane],
        )
    }

    /// The plan of `mesh_dir` (as `causeway demo --print-plan` prints it).
    pub fn plan(mesh_dir: &Path, run_dir: &Path, port_base: u16) -> serde_json::Value {
        Self::plan_with(mesh_dir, run_dir, port_base, &[])
    }

    /// The plan with more `causeway demo` flags (`--gateway-data-plane causeway`, say).
    pub fn plan_with(
        mesh_dir: &Path,
        run_dir: &Path,
        port_base: u16,
        demo_args: &[&str],
    ) -> serde_json::Value {
        // Below Linux's ephemeral range (32768-60999): there a client socket of any test can
        // hold a port first and the mesh would not start.
        assert!(
            u32::from(port_base) + 200 < 32768,
            "port base {port_base}: choose one below 32568"
        );
        let envoy = envoy_bin();
        let port = port_base.to_string();
        let mut args = vec![
            "demo",
            "--print-plan",
            "--mesh-dir",
            mesh_dir.to_str().expect("utf-8"),
            "--run-dir",
            run_dir.to_str().expect("utf-8"),
            "--port-base",
            &port,
            "--envoy",
            envoy.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(demo_args);
        let out = run(&args);
        assert!(
            out.status.success(),
            "plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("plan json")
    }

    /// Starts every process of `mesh_dir`'s plan plus `extra` ones (added to the plan as given:
    /// JSON objects with `name`, `kind`, `args` and, for proxies, `admin`), and waits until every
    /// proxy is in sync.
    pub fn launch(
        dir: tempfile::TempDir,
        mesh_dir: PathBuf,
        port_base: u16,
        cp_extra: &[&str],
        extra: &[serde_json::Value],
    ) -> Self {
        Self::launch_with(dir, mesh_dir, port_base, cp_extra, extra, &[])
    }

    /// [`Self::launch`] with more `causeway demo` flags for the plan.
    pub fn launch_with(
        dir: tempfile::TempDir,
        mesh_dir: PathBuf,
        port_base: u16,
        cp_extra: &[&str],
        extra: &[serde_json::Value],
        demo_args: &[&str],
    ) -> Self {
        Self::launch_edited(dir, mesh_dir, port_base, cp_extra, demo_args, |plan| {
            if let Some(list) = plan["processes"].as_array_mut() {
                list.extend(extra.iter().cloned());
            }
        })
    }

    /// [`Self::launch_with`], with `edit` changing the plan before anything starts (a mixed
    /// mesh sets one proxy's `--data-plane`, say).
    pub fn launch_edited(
        dir: tempfile::TempDir,
        mesh_dir: PathBuf,
        port_base: u16,
        cp_extra: &[&str],
        demo_args: &[&str],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Self {
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let mut plan = Self::plan_with(&mesh_dir, &run_dir, port_base, demo_args);
        edit(&mut plan);
        let debug: SocketAddr = plan["debug"]
            .as_str()
            .expect("debug")
            .parse()
            .expect("addr");
        let mut me = Self {
            dir,
            mesh_dir,
            plan,
            processes: std::collections::BTreeMap::new(),
            debug,
        };
        let specs = me.plan["processes"].as_array().cloned().unwrap_or_default();
        let cp = &specs[0];
        let mut args: Vec<String> = cp["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        args.extend(cp_extra.iter().map(|s| (*s).to_owned()));
        me.spawn("control-plane", &args);
        let up = wait_for(Duration::from_secs(20), || {
            http_get(debug, "/healthz").ok().filter(|(s, _)| *s == 200)
        });
        assert!(
            up.is_some(),
            "control plane did not start:\n{}",
            me.log("control-plane")
        );
        for spec in &specs[1..] {
            let args: Vec<String> = spec["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            me.spawn(spec["name"].as_str().expect("name"), &args);
        }
        let proxies = specs
            .iter()
            .filter(|s| s["kind"] == "gateway" || s["kind"] == "sidecar")
            .count();
        me.wait_in_sync(proxies);
        me
    }

    /// Waits until the example's client reaches its local echo: every sidecar has its listeners
    /// and no endpoint is still ejected from a start-up race, so tests begin in steady state.
    pub fn warm_up(&self) {
        let Some(echo) = self.outbound("alpha-client-sidecar", "demo/echo") else {
            return;
        };
        let local = wait_for(Duration::from_secs(30), || {
            call(echo)
                .ok()
                .filter(|v| v["cluster"] == "alpha")
                .map(|_| ())
        });
        assert!(
            local.is_some(),
            "the mesh did not reach steady state: client -> echo never answered by alpha"
        );
        self.wait_for_health_checks();
    }

    /// Waits until no sidecar holds an endpoint that its active health checks have not passed
    /// (yet or again): at start-up the gateways come up with the sidecars, so the first checks
    /// can fail. Envoy admits an endpoint behind a gateway after its first passed check
    /// (`/clusters`: `failed_active_hc`); the Causeway proxy admits endpoints at once but takes
    /// them out after failed checks until two pass (`/endpoints`: `failingHealthChecks`).
    fn wait_for_health_checks(&self) {
        let sidecars: Vec<&serde_json::Value> = self.plan["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["kind"] == "sidecar" && s["admin"].is_string())
            .collect();
        for s in sidecars {
            let Some(admin) = s["admin"].as_str().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let mut pending = Vec::new();
            let settled = wait_for(Duration::from_secs(20), || {
                pending = failing_health_checks(admin)?;
                pending.is_empty().then_some(())
            });
            assert!(
                settled.is_some(),
                "{}: endpoints never passed a health check: {pending:#?}",
                s["name"]
            );
        }
    }

    fn spawn(&mut self, name: &str, args: &[String]) {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.dir.path().join(format!("{name}.log"));
        self.processes
            .insert(name.to_owned(), Process::start(&refs, &log));
    }

    /// A process's log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops a process.
    pub fn stop(&mut self, name: &str) {
        self.processes
            .remove(name)
            .unwrap_or_else(|| panic!("no process {name}"));
    }

    /// Freezes a process (SIGSTOP): its sockets stay open, nothing answers.
    pub fn freeze(&self, name: &str) {
        self.processes
            .get(name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .signal("STOP");
    }

    /// Lets a frozen process go on (SIGCONT).
    pub fn thaw(&self, name: &str) {
        self.processes
            .get(name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .signal("CONT");
    }

    /// Starts a stopped process again from the plan.
    pub fn restart(&mut self, name: &str) {
        let spec = self.plan["processes"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no process {name} in the plan"));
        let args: Vec<String> = spec["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        self.spawn(name, &args);
    }

    /// Stops a process and starts it again from the plan with `extra` arguments appended (an
    /// app that turns slow or failing: `--delay-ms 50`, `--status 503`).
    pub fn restart_with(&mut self, name: &str, extra: &[&str]) {
        self.stop(name);
        let spec = self.plan["processes"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no process {name} in the plan"));
        let mut args: Vec<String> = spec["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.spawn(name, &args);
    }

    /// Waits until `count` proxies are connected and in sync.
    pub fn wait_in_sync(&self, count: usize) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_for(Duration::from_secs(60), || {
            let v = http_get(self.debug, "/debug/proxies")
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())?;
            last = v.clone();
            let p = v["proxies"].as_array()?;
            (p.len() >= count && p.iter().all(|x| x["inSync"] == true)).then_some(v)
        })
        .unwrap_or_else(|| {
            panic!(
                "proxies not in sync: {last:#}\n{}",
                self.log("control-plane")
            )
        })
    }

    /// Envoy admin address of a plan process.
    pub fn admin(&self, name: &str) -> SocketAddr {
        self.plan["processes"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .and_then(|s| s["admin"].as_str())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no admin address"))
    }

    /// The outbound address a sidecar has for `namespace/service`, from its Envoy listeners
    /// (polled for up to 10 s: listeners may still be warming).
    pub fn outbound(&self, sidecar: &str, service: &str) -> Option<SocketAddr> {
        let admin = self.admin(sidecar);
        wait_for(Duration::from_secs(10), || {
            let (_, listeners) = http_get(admin, "/listeners").ok()?;
            listeners.lines().find_map(|l| {
                let name = l.split("::").next()?;
                let rest = name.strip_prefix("outbound|")?;
                let (addr, svc) = rest.split_once('|')?;
                (svc == service).then(|| addr.parse().ok()).flatten()
            })
        })
    }
}

/// Sets the `--data-plane` of the plan's process `name` (a sidecar or gateway).
pub fn set_data_plane(plan: &mut serde_json::Value, name: &str, data_plane: &str) {
    let spec = plan["processes"]
        .as_array_mut()
        .and_then(|a| a.iter_mut().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no process {name} in the plan"));
    let args = spec["args"].as_array_mut().expect("args");
    let at = args
        .iter()
        .position(|a| a == "--data-plane")
        .unwrap_or_else(|| panic!("{name} has no --data-plane"));
    args[at + 1] = serde_json::Value::from(data_plane);
}

/// The endpoints of the proxy with admin `admin` that its active health checks hold out, from
/// Envoy's `/clusters` or the Causeway proxy's `/endpoints` (whichever it serves); `None` when
/// neither answers.
fn failing_health_checks(admin: SocketAddr) -> Option<Vec<String>> {
    if let Ok((200, body)) = http_get(admin, "/endpoints") {
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let failing = v["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                let name = c["name"].as_str().unwrap_or("?").to_owned();
                c["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["failingHealthChecks"] == true)
                    .map(move |e| format!("{name} {}", e["address"]))
            })
            .collect();
        return Some(failing);
    }
    let (_, clusters) = http_get(admin, "/clusters").ok()?;
    Some(
        clusters
            .lines()
            .filter(|l| l.contains("::health_flags::") && l.contains("active_hc"))
            .map(str::to_owned)
            .collect(),
    )
}
