//! What the broker needs from the host: kernel version, io_uring, the
//! locked-memory and open-files limits, CPUs and affinity.
//!
//! `corebus doctor` prints every check; `corebus serve` runs the same
//! [`check_host`] before starting the shards, logs the warnings and refuses
//! to start on a failure with the same text, so the two can never disagree.

use std::fmt::Write as _;

use clap::ArgMatches;
use corebus_shards::host::{affinity_cpus, memlock_needed};

use crate::cli::{DoctorCommand, Shards};
use crate::config;

/// The oldest kernel whose io_uring glommio supports.
pub const MIN_KERNEL: (u32, u32) = (5, 8);
/// Open-files soft limit below which `doctor` warns. Each connection holds
/// one descriptor; the broker needs a few more (listeners, io_uring rings,
/// eventfds, logs, about 15 with 2 shards), counted as [`BROKER_SPARE_FILES`].
pub const RECOMMENDED_NOFILE: u64 = 65_536;
/// Descriptors the broker holds besides its connections, with room to spare.
pub const BROKER_SPARE_FILES: u64 = 100;

const MEMLOCK_FIX: &str = "`ulimit -l unlimited` in the shell that starts corebus (as root), \
    `LimitMEMLOCK=infinity` in its systemd unit, or a line `<user> - memlock unlimited` in \
    /etc/security/limits.conf";
const NOFILE_FIX: &str = "`ulimit -n 1048576` in the shell that starts corebus (raising the \
    hard limit needs root), `LimitNOFILE=1048576` in its systemd unit, or a line \
    `<user> - nofile 1048576` in /etc/security/limits.conf";

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// corebus runs, but not as well as it could.
    Warn,
    /// corebus cannot start.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name: `kernel`, `io_uring`, `memlock`, `nofile`, `cpus`.
    pub name: &'static str,
    /// How it went.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// The exact command or setting that fixes a problem.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: String) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail,
            fix: None,
        }
    }

    fn problem(name: &'static str, status: Status, detail: String, fix: &str) -> Check {
        Check {
            name,
            status,
            detail,
            fix: Some(fix.to_string()),
        }
    }

    /// `detail; fix: ...` on one line, for `serve`'s error and log.
    pub fn one_line(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}: {}; fix: {fix}", self.name, self.detail),
            None => format!("{}: {}", self.name, self.detail),
        }
    }
}

/// `corebus doctor`: prints every check for the configuration `serve`
/// would run with, and fails if any check failed.
pub fn main(command: DoctorCommand, matches: &ArgMatches) -> anyhow::Result<()> {
    let resolved = config::resolve(command.file.config.as_deref(), matches)?;
    let checks = check_host(resolved.args.shards);
    let printed = match command.json {
        true => crate::stdio::line(json_report(&checks)),
        false => crate::stdio::print(&report(&checks)),
    };
    let failed = checks
        .iter()
        .filter(|check| check.status == Status::Fail)
        .count();
    // A failed check wins over a closed stdout: `corebus doctor | head -3`
    // must still exit non-zero on a host the broker cannot run on.
    if failed > 0 {
        anyhow::bail!("{failed} host check(s) failed; apply the fixes above");
    }
    printed
}

/// Runs every check for a broker with this shard setting.
pub fn check_host(shards: Shards) -> Vec<Check> {
    let cpus = affinity_cpus();
    let shard_count = shards.count().unwrap_or(cpus.len().max(1));
    vec![
        check_kernel(),
        check_io_uring(),
        check_memlock(shard_count),
        check_nofile(),
        check_somaxconn(read_proc_number("/proc/sys/net/core/somaxconn")),
        check_memory(read_mem_available_kib()),
        check_cpus(&cpus, shard_count),
    ]
}

/// The backlog each shard's listener asks for.
const LISTEN_BACKLOG: u64 = corebus_shards::LISTEN_BACKLOG as u64;
/// Broker memory per idle subscriber connection, measured by the bench
/// harness (`bench/compare_connections.sh`: 4.9 KiB with 19,700
/// connections), rounded up with room for the kernel's own socket state and
/// a subscription or two more.
const MEMORY_PER_CONNECTION_KIB: u64 = 16;
/// Below this much available memory `doctor` warns.
const MIN_AVAILABLE_KIB: u64 = 256 * 1024;

fn read_proc_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_mem_available_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The kernel caps every listener's backlog at `net.core.somaxconn`: a
/// burst of new connections beyond it (many clients reconnecting at once)
/// waits for the client's SYN retry, a second or more.
fn check_somaxconn(somaxconn: Option<u64>) -> Check {
    match somaxconn {
        Some(value) if value >= LISTEN_BACKLOG => Check::ok(
            "somaxconn",
            format!("net.core.somaxconn {value} (each shard's listener asks for {LISTEN_BACKLOG})"),
        ),
        Some(value) => Check::problem(
            "somaxconn",
            Status::Warn,
            format!(
                "net.core.somaxconn {value} caps each shard's listen backlog below the \
                 {LISTEN_BACKLOG} it asks for: a burst of reconnecting clients waits for SYN \
                 retries"
            ),
            &format!(
                "`sysctl -w net.core.somaxconn={LISTEN_BACKLOG}`, and the same line in \
                 /etc/sysctl.d/90-corebus.conf (see docs/operations.md, Tune the kernel)"
            ),
        ),
        None => Check::problem(
            "somaxconn",
            Status::Warn,
            "cannot read /proc/sys/net/core/somaxconn".into(),
            "check that /proc is mounted",
        ),
    }
}

/// How many idle connections the available memory holds, roughly.
fn check_memory(available_kib: Option<u64>) -> Check {
    let Some(kib) = available_kib else {
        return Check::problem(
            "memory",
            Status::Warn,
            "cannot read MemAvailable from /proc/meminfo".into(),
            "check that /proc is mounted",
        );
    };
    let detail = format!(
        "{} MiB available: about {} idle connections at {MEMORY_PER_CONNECTION_KIB} KiB each \
         (broker and kernel), before messages, rings and outboxes",
        kib / 1024,
        kib / MEMORY_PER_CONNECTION_KIB
    );
    if kib >= MIN_AVAILABLE_KIB {
        Check::ok("memory", detail)
    } else {
        Check::problem(
            "memory",
            Status::Warn,
            detail,
            "give the host more memory, or run less beside the broker",
        )
    }
}

/// `corebus doctor --json`: every check, and whether none failed.
pub fn json_report(checks: &[Check]) -> serde_json::Value {
    let checks: Vec<serde_json::Value> = checks
        .iter()
        .map(|check| {
            serde_json::json!({
                "name": check.name,
                "status": check.status.label().to_ascii_lowercase(),
                "detail": check.detail,
                "fix": check.fix,
            })
        })
        .collect();
    let ok = checks.iter().all(|check| check["status"] != "fail");
    serde_json::json!({ "ok": ok, "checks": checks })
}

/// The report `corebus doctor` prints: one line per check, its fix indented
/// under it, and a summary.
pub fn report(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let _ = writeln!(
            out,
            "{:<5} {:<9} {}",
            check.status.label(),
            check.name,
            check.detail
        );
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "{:<15} fix: {fix}", "");
        }
    }
    let count = |status| checks.iter().filter(|check| check.status == status).count();
    let _ = writeln!(
        out,
        "{} checks: {} ok, {} warn, {} FAIL",
        checks.len(),
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    out
}

/// What `serve` does before starting: runs the checks, logs warnings, fails
/// on failures, and raises the soft open-files limit to the hard one (the
/// memlock limit is raised by `corebus_shards::start`).
pub fn preflight(shards: Shards) -> anyhow::Result<()> {
    let checks = check_host(shards);
    let failures: Vec<String> = checks
        .iter()
        .filter(|check| check.status == Status::Fail)
        .map(Check::one_line)
        .collect();
    if !failures.is_empty() {
        anyhow::bail!(
            "this host cannot run corebus: {} (`corebus doctor` lists every check)",
            failures.join(" | ")
        );
    }
    for check in checks.iter().filter(|check| check.status == Status::Warn) {
        tracing::warn!(
            check = check.name,
            fix = check.fix.as_deref(),
            "{}",
            check.detail
        );
    }
    raise_soft_limit(libc::RLIMIT_NOFILE);
    Ok(())
}

fn check_kernel() -> Check {
    let release = kernel_release();
    let version = release.as_deref().and_then(parse_kernel_version);
    match (release, version) {
        (Some(release), Some(version)) if version >= MIN_KERNEL => Check::ok(
            "kernel",
            format!(
                "Linux {release} (io_uring needs {}.{} or newer)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        (Some(release), Some(_)) => Check::problem(
            "kernel",
            Status::Fail,
            format!(
                "Linux {release} is older than {}.{}, which glommio's io_uring use needs",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "upgrade to a 5.8 or newer kernel (for example the distribution's HWE or backports kernel)",
        ),
        (release, _) => Check::problem(
            "kernel",
            Status::Warn,
            format!(
                "cannot tell the kernel version ({})",
                release.unwrap_or_else(|| "uname failed".into())
            ),
            "make sure the kernel is 5.8 or newer (`uname -r`)",
        ),
    }
}

fn kernel_release() -> Option<String> {
    // SAFETY: uname fills the zeroed struct we pass; release is then a
    // NUL-terminated string inside it.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&byte| byte != 0)
        .map(|&byte| byte as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `6.8.0-45-generic` → (6, 8).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_io_uring() -> Check {
    let disabled = read_proc_number("/proc/sys/kernel/io_uring_disabled").unwrap_or(0);
    let sysctl_fix = "`sysctl -w kernel.io_uring_disabled=0`, and persist it with a line \
                      `kernel.io_uring_disabled = 0` in /etc/sysctl.d/90-corebus.conf";
    match probe_io_uring() {
        Ok(()) => Check::ok(
            "io_uring",
            format!("io_uring_setup works (kernel.io_uring_disabled = {disabled})"),
        ),
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => Check::problem(
            "io_uring",
            Status::Fail,
            "io_uring_setup is not available: the kernel lacks io_uring, or a seccomp filter \
             (a container's default profile) blocks it"
                .into(),
            "run on a kernel built with CONFIG_IO_URING=y; in a container, allow io_uring_setup, \
             io_uring_enter and io_uring_register in its seccomp profile \
             (`docker run --security-opt seccomp=PROFILE.json`)",
        ),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) && disabled == 2 => Check::problem(
            "io_uring",
            Status::Fail,
            "io_uring is disabled on this kernel (kernel.io_uring_disabled = 2)".into(),
            sysctl_fix,
        ),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) && disabled == 1 => Check::problem(
            "io_uring",
            Status::Fail,
            "io_uring is restricted to CAP_SYS_ADMIN and the group in kernel.io_uring_group \
             (kernel.io_uring_disabled = 1)"
                .into(),
            &format!(
                "{sysctl_fix}; or add corebus's user to the group whose id is in \
                 /proc/sys/kernel/io_uring_group (SupplementaryGroups= in its systemd unit)"
            ),
        ),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => Check::problem(
            "io_uring",
            Status::Fail,
            "io_uring_setup is refused (EPERM) by a seccomp filter or a security module".into(),
            "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile \
             or LSM policy that confines corebus",
        ),
        Err(err) => Check::problem(
            "io_uring",
            Status::Warn,
            format!("a test io_uring_setup failed: {err}"),
            "see the error; ENOMEM usually means the locked-memory limit (memlock) is too low",
        ),
    }
}

/// Sets up and closes a one-entry ring: the only way to see seccomp filters
/// and kernels built without io_uring.
fn probe_io_uring() -> std::io::Result<()> {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup reads and writes only the 120-byte params
    // struct we pass, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor io_uring_setup just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn check_memlock(shards: usize) -> Check {
    let needed = memlock_needed(shards);
    let Some(limit) = get_limit(libc::RLIMIT_MEMLOCK) else {
        return Check::problem(
            "memlock",
            Status::Warn,
            "cannot read the locked-memory limit".into(),
            MEMLOCK_FIX,
        );
    };
    let need = format!("{shards} shards need {}", bytes(needed));
    if limit.rlim_cur >= needed {
        Check::ok("memlock", format!("{} ({need})", bytes(limit.rlim_cur)))
    } else if limit.rlim_max >= needed {
        Check::ok(
            "memlock",
            format!(
                "soft limit {} is below what {need}; serve raises it to the hard limit {} at start",
                bytes(limit.rlim_cur),
                bytes(limit.rlim_max)
            ),
        )
    } else {
        Check::problem(
            "memlock",
            Status::Fail,
            format!(
                "the locked-memory limit is {} (hard {}); {need} for io_uring",
                bytes(limit.rlim_cur),
                bytes(limit.rlim_max)
            ),
            MEMLOCK_FIX,
        )
    }
}

fn check_nofile() -> Check {
    let Some(limit) = get_limit(libc::RLIMIT_NOFILE) else {
        return Check::problem(
            "nofile",
            Status::Warn,
            "cannot read the open-files limit".into(),
            NOFILE_FIX,
        );
    };
    if limit.rlim_cur >= RECOMMENDED_NOFILE {
        Check::ok(
            "nofile",
            format!("open-files limit {}", count(limit.rlim_cur)),
        )
    } else if limit.rlim_max >= RECOMMENDED_NOFILE {
        Check::ok(
            "nofile",
            format!(
                "soft limit {} is below {RECOMMENDED_NOFILE}; serve raises it to the hard limit \
                 {} at start",
                count(limit.rlim_cur),
                count(limit.rlim_max)
            ),
        )
    } else {
        Check::problem(
            "nofile",
            Status::Warn,
            format!(
                "open-files limit {} (hard {}) is below {RECOMMENDED_NOFILE}: each connection \
                 holds one descriptor, so about {} connections at most",
                count(limit.rlim_cur),
                count(limit.rlim_max),
                count(limit.rlim_max.saturating_sub(BROKER_SPARE_FILES))
            ),
            NOFILE_FIX,
        )
    }
}

fn check_cpus(cpus: &[usize], shards: usize) -> Check {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let mask = format!(
        "affinity mask {} ({} of {online} online CPUs)",
        cpu_list(cpus),
        cpus.len()
    );
    if shards > cpus.len() {
        Check::problem(
            "cpus",
            Status::Warn,
            format!("{shards} shards on {mask}: shards are not pinned and share CPUs"),
            &format!(
                "set shards to at most {} (--shards, COREBUS_SHARDS or `shards =`), or give the \
                 process more CPUs (`taskset -c LIST corebus serve`, CPUAffinity= in its unit)",
                cpus.len()
            ),
        )
    } else {
        Check::ok(
            "cpus",
            format!("{shards} shards, one pinned per CPU of the {mask}"),
        )
    }
}

fn get_limit(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    (unsafe { libc::getrlimit(resource, &mut limit) } == 0).then_some(limit)
}

/// Raises a soft limit to its hard limit; failure only means it stays.
fn raise_soft_limit(resource: libc::__rlimit_resource_t) {
    if let Some(limit) = get_limit(resource) {
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit reads the struct we pass.
            unsafe { libc::setrlimit(resource, &raised) };
        }
    }
}

fn bytes(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", value / 1024)
    }
}

fn count(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

/// `[0, 1, 2, 3, 6]` → `0-3,6`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &cpu in cpus {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == cpu => *end = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_from_distribution_release_strings() {
        assert_eq!(parse_kernel_version("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(parse_kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(parse_kernel_version("4.19.0-cloud"), Some((4, 19)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!((5, 10) >= MIN_KERNEL && (4, 19) < MIN_KERNEL && (5, 7) < MIN_KERNEL);
    }

    #[test]
    fn a_low_somaxconn_is_a_warning_with_the_sysctl() {
        let low = check_somaxconn(Some(128));
        assert_eq!(low.status, Status::Warn);
        assert!(low.detail.contains("128"), "{}", low.detail);
        assert!(low
            .fix
            .as_deref()
            .is_some_and(|fix| fix.contains("net.core.somaxconn=4096")));
        assert_eq!(check_somaxconn(Some(4096)).status, Status::Ok);
        assert_eq!(check_somaxconn(None).status, Status::Warn);
    }

    #[test]
    fn memory_is_counted_in_idle_connections() {
        let check = check_memory(Some(16 * 1024 * 1024));
        assert_eq!(check.status, Status::Ok);
        assert!(
            check
                .detail
                .contains("16384 MiB available: about 1048576 idle connections"),
            "{}",
            check.detail
        );
        assert_eq!(check_memory(Some(128 * 1024)).status, Status::Warn);
        assert_eq!(check_memory(None).status, Status::Warn);
    }

    #[test]
    fn cpu_lists_collapse_ranges() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn more_shards_than_cpus_is_a_warning_with_a_fix() {
        let check = check_cpus(&[0, 1], 4);
        assert_eq!(check.status, Status::Warn);
        assert!(check
            .fix
            .as_deref()
            .is_some_and(|fix| fix.contains("at most 2")));
        assert_eq!(check_cpus(&[0, 1], 2).status, Status::Ok);
    }

    #[test]
    fn the_report_has_one_line_per_check_and_the_fixes() {
        let checks = [
            Check::ok("kernel", "fine".into()),
            Check::problem("nofile", Status::Warn, "low".into(), "raise it"),
        ];
        let text = report(&checks);
        assert!(text.contains("ok    kernel    fine\n"), "{text}");
        assert!(text.contains("warn  nofile    low\n"), "{text}");
        assert!(text.contains("fix: raise it\n"), "{text}");
        assert!(text.ends_with("2 checks: 1 ok, 1 warn, 0 FAIL\n"), "{text}");
    }
}
