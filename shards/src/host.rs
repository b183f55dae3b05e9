//! What the shards need of the host: the CPUs they may run on, and what
//! io_uring needs (locked memory, not disabled by sysctl).

/// What the host lacks for io_uring; [`preflight`]'s answer, carried by
/// [`StartError::Host`](crate::StartError::Host).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The locked-memory limit is below what io_uring needs.
    #[error(
        "the locked-memory limit (ulimit -l) is {current_kib} KiB; corebus needs at least \
         {needed_kib} KiB for io_uring. Raise it with `ulimit -l unlimited` in the shell that \
         starts corebus (root), `LimitMEMLOCK=infinity` in its systemd unit, or a line \
         `<user> - memlock unlimited` in /etc/security/limits.conf"
    )]
    MemlockTooLow {
        /// Current soft limit in KiB.
        current_kib: u64,
        /// What is needed in KiB.
        needed_kib: u64,
    },
    /// io_uring is switched off by sysctl.
    #[error(
        "io_uring is disabled on this kernel (kernel.io_uring_disabled = {value}); enable it \
         with `sysctl -w kernel.io_uring_disabled=0` (and persist it in /etc/sysctl.d/)"
    )]
    IoUringDisabled {
        /// The sysctl's value.
        value: u32,
    },
}

/// glommio's registered I/O buffer per executor. corebus does no file I/O,
/// so the minimum keeps locked memory (RLIMIT_MEMLOCK) needs small.
pub(crate) const IO_MEMORY: usize = 64 * 1024;

/// The CPUs this process may run on, in ascending order.
pub fn affinity_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set, and sched_getaffinity writes
    // at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: as above; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    if rc != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the set initialised above.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect()
}

/// The locked memory (`RLIMIT_MEMLOCK`, bytes) that `shards` executors need
/// for their io_uring buffers.
pub fn memlock_needed(shards: usize) -> u64 {
    // glommio refuses to start under 512 KiB, whatever else is needed.
    (512 * 1024).max((shards * IO_MEMORY * 2) as u64)
}

/// Checks what io_uring needs from the host, raising the soft locked-memory
/// limit to the hard one when that is enough.
pub fn preflight(shards: usize) -> Result<(), HostError> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let value: u32 = text.trim().parse().unwrap_or(0);
        if value == 2 {
            return Err(HostError::IoUringDisabled { value });
        }
    }
    let needed = memlock_needed(shards);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(()); // Cannot tell; glommio will report it if it matters.
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max >= needed {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            return Ok(());
        }
    }
    Err(HostError::MemlockTooLow {
        current_kib: limit.rlim_cur / 1024,
        needed_kib: needed / 1024,
    })
}
