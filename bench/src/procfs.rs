//! Memory figures of a process from `/proc/<pid>/status` (Linux).

/// One `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Resident memory now.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS")
}

/// Resident anonymous memory now (heap, stacks: what the allocator holds).
pub fn rss_anon_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "RssAnon")
}

/// Resident file-backed memory now (mostly the executable's and libraries' pages).
pub fn rss_file_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "RssFile")
}

/// Highest resident memory since the process started.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM")
}

/// Threads of the process now.
pub fn threads(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// CPU time (user + system) the process has used, in seconds. `/proc/<pid>/stat` counts clock
/// ticks of USER_HZ, which Linux fixes at 100 for user space on every architecture it supports
/// (`sysconf(_SC_CLK_TCK)`), so no libc call is needed.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing ')' are fixed.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set_no_larger_than_its_peak() {
        let pid = std::process::id();
        let (now, peak) = (
            rss_mib(pid).expect("VmRSS"),
            peak_rss_mib(pid).expect("VmHWM"),
        );
        assert!(now > 0.0 && now <= peak, "rss {now} peak {peak}");
        assert!(rss_mib(u32::MAX).is_none());
        assert!(threads(pid).is_some_and(|n| n >= 1));
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(pid).expect("stat");
        assert!(after - before >= 0.1, "{before} -> {after}");
    }
}
