//! What the harness asks of the operating system: loopback checks, the
//! broker's resident memory and CPU time, file-descriptor limits and timer
//! precision.

use std::net::SocketAddr;

use crate::BenchError;

/// The `host:port` part of a broker URL (`nats://h:p`, `redis://h:p/0`,
/// or plain `h:p`).
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split('/').next().unwrap_or(rest);
    // Credentials (`user:pass@host:port`) are not the address.
    rest.rsplit_once('@').map_or(rest, |(_, host)| host)
}

/// Resolves `url` and refuses anything that is not a loopback address: the
/// harness generates load, and load goes only to this machine.
pub async fn loopback_addrs(url: &str) -> Result<Vec<SocketAddr>, BenchError> {
    let host_port = host_port(url);
    let refuse = |reason: String| BenchError::NotLoopback {
        url: url.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|err| refuse(format!("cannot resolve {host_port}: {err}")))?
        .collect();
    if addrs.is_empty() {
        return Err(refuse(format!("{host_port} resolves to no address")));
    }
    if let Some(addr) = addrs.iter().find(|addr| !addr.ip().is_loopback()) {
        return Err(refuse(format!("{addr} is not a loopback address")));
    }
    Ok(addrs)
}

/// The resident memory (VmRSS) of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let unreadable = |reason: String| BenchError::Memory {
        pid,
        reason: format!("{path}: {reason}"),
    };
    let status = std::fs::read_to_string(&path).map_err(|err| unreadable(err.to_string()))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or_else(|| unreadable("no VmRSS line".into()))?;
    line.trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|err| unreadable(format!("bad VmRSS line {line:?}: {err}")))
}

/// CPU time (user and system, all threads) that process `pid` has used so
/// far, or this process's with `None`; `None` when `/proc` cannot tell.
pub fn cpu_time(pid: Option<u32>) -> Option<std::time::Duration> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |pid| format!("/proc/{pid}/stat"),
    );
    let stat = std::fs::read_to_string(path).ok()?;
    cpu_ticks(&stat).map(|ticks| {
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        std::time::Duration::from_secs_f64(ticks as f64 / per_second)
    })
}

/// CPU time used so far by the broker (`--broker-pid`) and by this process,
/// read at the start and the end of a run.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark([Option<std::time::Duration>; 2]);

impl CpuMark {
    /// Reads both clocks now.
    pub fn now(broker_pid: Option<u32>) -> CpuMark {
        CpuMark([
            broker_pid.and_then(|pid| cpu_time(Some(pid))),
            cpu_time(None),
        ])
    }

    /// Microseconds of CPU per delivered message from this mark to `later`:
    /// (the broker's, the harness's); `None` where a clock could not be read
    /// or nothing was delivered.
    pub fn per_message(&self, later: &CpuMark, delivered: u64) -> (Option<f64>, Option<f64>) {
        let [broker, harness] = [0, 1].map(|which| {
            let spent = later.0[which]?.checked_sub(self.0[which]?)?;
            (delivered > 0).then(|| spent.as_secs_f64() * 1e6 / delivered as f64)
        });
        (broker, harness)
    }
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself: fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Descriptors the harness needs besides one per connection.
pub const SPARE_FILES: u64 = 256;

/// Raises this process's open-file limit to at least `needed` descriptors,
/// up to the hard limit, and fails with the command to run when that is not
/// enough.
pub fn ensure_open_files(needed: u64) -> Result<(), BenchError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(BenchError::OpenFiles {
            needed,
            current: 0,
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    if ok && raised.rlim_cur >= needed {
        return Ok(());
    }
    Err(BenchError::OpenFiles {
        needed,
        current: limit.rlim_cur,
        reason: format!("the hard limit is {}", limit.rlim_max),
    })
}

/// Asks for 1 µs timer slack on the calling thread, so that sleeps in the
/// open-loop pacer end within microseconds instead of Linux's default 50 µs.
/// Best effort: pacing stays correct without it, only less even.
pub fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument (nanoseconds) and
    // affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        // A name with spaces and a parenthesis, as /proc writes it.
        let stat = "4242 (corebus (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1500 250 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(1750));
        assert_eq!(cpu_ticks("4242 (short"), None);
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
        // This process has used some CPU by now, and /proc says how much.
        assert!(cpu_time(None).is_some());
    }

    #[test]
    fn host_port_strips_scheme_path_and_credentials() {
        assert_eq!(host_port("127.0.0.1:7400"), "127.0.0.1:7400");
        assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(
            host_port("redis://user:pw@localhost:6379/0"),
            "localhost:6379"
        );
    }

    #[tokio::test]
    async fn only_loopback_is_accepted() {
        assert!(loopback_addrs("nats://127.0.0.1:4222").await.is_ok());
        assert!(loopback_addrs("[::1]:7400").await.is_ok());
        let err = loopback_addrs("redis://10.0.0.1:6379").await;
        assert!(matches!(err, Err(BenchError::NotLoopback { .. })));
    }

    #[test]
    fn own_memory_is_readable() {
        assert!(resident_kib(std::process::id()).expect("own status") > 0);
    }
}
