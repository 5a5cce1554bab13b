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

/// Highest resident memory since the process started.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM")
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
    }
}
