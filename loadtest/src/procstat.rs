//! Process figures from `/proc` (Linux): CPU time and resident memory of the generator itself
//! and of the server processes under test, plus the open-files limit.

use std::io;

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// The load generator itself (`/proc/self`).
    Me,
    /// Another process, e.g. a server given with `--server-pid`.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Me => "/proc/self".to_string(),
            Pid::Other(p) => format!("/proc/{p}"),
        }
    }
}

/// Clock ticks per second of the `utime`/`stime` fields of `/proc/<pid>/stat`.
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: Pid) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("{}/stat", pid.dir()))?;
    let ticks = parse_stat_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat"))?;
    Ok(ticks as f64 / clock_ticks_per_sec())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may contain spaces, so fields are counted after the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace();
    // After ")": state is field 3, so utime (14) is the 12th and stime (15) the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size (`VmRSS`) of a process, in KiB.
pub fn rss_kib(pid: Pid) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("{}/status", pid.dir()))?;
    parse_vmrss_kib(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc status"))
}

fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The open-files limit after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct NofileLimit {
    /// Soft limit in force (raised to the hard limit when possible).
    pub soft: u64,
    /// Hard limit: the most file descriptors this process can ever have.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (each connection is one descriptor).
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one is
        // always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // rlim_t is u64 on 64-bit Linux but not on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok(NofileLimit { soft: lim.rlim_cur as u64, hard: lim.rlim_max as u64 })
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemCpu {
    /// user + nice + system + irq + softirq (not idle, iowait or steal).
    pub busy: f64,
    /// Time the hypervisor gave to other guests while we wanted to run.
    pub steal: f64,
}

pub fn system_cpu() -> io::Result<SystemCpu> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_system_cpu(&stat)
        .map(|(busy, steal)| SystemCpu {
            busy: busy as f64 / clock_ticks_per_sec(),
            steal: steal as f64 / clock_ticks_per_sec(),
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/stat"))
}

/// (busy, steal) ticks of the `cpu` line: user nice system idle iowait irq softirq steal ...
fn parse_system_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_ascii_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some((at(0) + at(1) + at(2) + at(5) + at(6), at(7)))
}

/// CPU use of the generator and of the servers over a measured window.
pub struct CpuWindow {
    started: std::time::Instant,
    me: f64,
    servers: Vec<(u32, Option<f64>)>,
    system: Option<SystemCpu>,
}

/// What [`CpuWindow::finish`] measured.
#[derive(Debug, Clone)]
pub struct CpuFigures {
    /// Wall-clock length of the window, in seconds.
    pub wall_s: f64,
    /// CPU seconds the generator used.
    pub generator_cpu_s: f64,
    /// CPU seconds the servers used together (`None` without server pids, or when one of
    /// them could not be read: a partial sum would look like a figure).
    pub server_cpu_s: Option<f64>,
    /// CPU seconds of each server process, in the order given.
    pub server_cpu_s_by_pid: Vec<(u32, f64)>,
    /// Servers that could not be read, with why.
    pub unreadable: Vec<String>,
    /// CPU seconds the whole machine was busy with anything but the generator and the
    /// servers (other processes, and kernel work not charged to any process, such as some
    /// network softirq processing). `None` if /proc/stat or a server could not be read.
    pub other_cpu_s: Option<f64>,
    /// CPU seconds stolen by the hypervisor.
    pub steal_s: Option<f64>,
}

impl CpuWindow {
    pub fn begin(server_pids: &[u32]) -> Self {
        CpuWindow {
            started: std::time::Instant::now(),
            me: cpu_seconds(Pid::Me).unwrap_or(0.0),
            system: system_cpu().ok(),
            servers: server_pids.iter().map(|&p| (p, cpu_seconds(Pid::Other(p)).ok())).collect(),
        }
    }

    pub fn finish(&self) -> CpuFigures {
        let wall_s = self.started.elapsed().as_secs_f64();
        let generator_cpu_s = cpu_seconds(Pid::Me).unwrap_or(0.0) - self.me;
        let mut unreadable = Vec::new();
        let mut sum = 0.0;
        let mut by_pid = Vec::new();
        for &(pid, before) in &self.servers {
            match (before, cpu_seconds(Pid::Other(pid))) {
                (Some(b), Ok(a)) => {
                    sum += a - b;
                    by_pid.push((pid, a - b));
                }
                (_, Err(e)) => unreadable.push(format!("server pid {pid}: {e}")),
                (None, Ok(_)) => unreadable.push(format!("server pid {pid}: unreadable at start")),
            }
        }
        let server_cpu_s = (!self.servers.is_empty() && unreadable.is_empty()).then_some(sum);
        let system = match (self.system, system_cpu()) {
            (Some(b), Ok(a)) => Some((a.busy - b.busy, a.steal - b.steal)),
            _ => None,
        };
        let other_cpu_s = match (system, unreadable.is_empty()) {
            (Some((busy, _)), true) => Some((busy - generator_cpu_s - sum).max(0.0)),
            _ => None,
        };
        CpuFigures {
            wall_s,
            generator_cpu_s,
            server_cpu_s,
            server_cpu_s_by_pid: by_pid,
            unreadable,
            other_cpu_s,
            steal_s: system.map(|(_, steal)| steal),
        }
    }
}

/// Summed RSS of the given processes in KiB (`None` if any cannot be read, or no pids).
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kib(Pid::Other(p)).ok()).sum::<Option<u64>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 9 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1234 + 567));
    }

    #[test]
    fn system_cpu_sums_busy_columns() {
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_system_cpu(stat), Some((10 + 1 + 5 + 2 + 3, 4)));
        assert!(system_cpu().is_ok());
    }

    #[test]
    fn own_figures_are_readable() {
        assert!(cpu_seconds(Pid::Me).is_ok());
        assert!(rss_kib(Pid::Me).map(|k| k > 0).unwrap_or(false));
        assert_eq!(parse_vmrss_kib("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048));
    }
}
