//! Network namespaces for end-to-end tests that need real networks between clusters: created
//! (and deleted on drop) with iproute2, joined by veth pairs, processes started inside them
//! with `ip netns exec`, and test threads moved into one with setns(2). Needs root and
//! iproute2 (CI runs as root and installs them); without them the tests fail, never skip.

use std::path::Path;
use std::process::Command;

use crate::{causeway_bin, Process};

/// Runs `args`, panicking with its stderr when it fails; returns stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (this test needs root and iproute2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces this test created, deleted (with their veths) on drop.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates `names` afresh (any leftover of an earlier run is deleted first), loopback up.
    pub fn create(names: &[&str]) -> Self {
        for ns in names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        Self {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    /// A veth pair between namespaces `a` and `b`: `a_if` with `a_addr` (CIDR) in `a`, `b_if`
    /// with `b_addr` in `b`, both up.
    pub fn veth(
        &self,
        (a, a_if, a_addr): (&str, &str, &str),
        (b, b_if, b_addr): (&str, &str, &str),
    ) {
        sh(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        sh(&["ip", "-n", a, "addr", "add", a_addr, "dev", a_if]);
        sh(&["ip", "-n", b, "addr", "add", b_addr, "dev", b_if]);
        sh(&["ip", "-n", a, "link", "set", a_if, "up"]);
        sh(&["ip", "-n", b, "link", "set", b_if, "up"]);
    }

    /// Adds `addr` (CIDR) to the loopback of `ns` (a pod's address).
    pub fn loopback_address(&self, ns: &str, addr: &str) {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", "lo"]);
    }

    /// Takes interface `dev` of `ns` down or up: a cable pulled, a partition.
    pub fn link(&self, ns: &str, dev: &str, up: bool) {
        sh(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            dev,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Starts `causeway ARGS` inside `ns`, logging to `log`.
pub fn start_in(ns: &str, args: &[&str], log: &Path) -> Process {
    let bin = causeway_bin();
    let mut all = vec!["netns", "exec", ns, bin.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    Process::start_program("ip", &all, log)
}

/// `curl -s -m 3 URL` inside `ns`: the body when it succeeds.
pub fn curl_in(ns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "3", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves the calling thread into namespace `ns` (setns(2)): the sockets it opens from now on
/// are that namespace's. Use a thread of its own; it cannot go back.
pub fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // setns has no wrapper in std; libc's is the thin syscall binding.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}
