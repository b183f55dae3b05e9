//! Helpers shared by the black-box tests of the `corebus` binary: a `serve`
//! child process, its address, signalling it, and temporary files.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod receiver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_corebus");

/// Reads `serve`'s first stdout line ("corebus listening on ADDR with N
/// shards") and returns ADDR.
pub fn read_address(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .expect("reads serve's first line");
    line.split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
        .to_string()
}

/// Sends SIGTERM and waits for the exit; returns the status and how long it
/// took. Panics past `within`.
pub fn sigterm_and_wait(child: &mut Child, within: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    loop {
        if let Some(status) = child.try_wait().expect("waits") {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "serve did not exit within {within:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `corebus serve` child (stderr inherited), killed on drop.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// The address it listens on.
    pub addr: String,
    /// The browser listener's address, for [`Serve::start_web`].
    pub web_addr: String,
}

impl Serve {
    /// Starts `corebus serve` with `args` (on 127.0.0.1 port 0 unless they
    /// give `--listen`, logging warnings only unless they give
    /// `--log-level`) and waits until it listens.
    pub fn start(args: &[&str]) -> Serve {
        Serve::spawn(args, false)
    }

    /// [`Serve::start`] with a browser listener on 127.0.0.1 port 0, whose
    /// address (serve's second line, "corebus browsers on ADDR") is
    /// `web_addr`.
    pub fn start_web(args: &[&str]) -> Serve {
        Serve::spawn(args, true)
    }

    fn spawn(args: &[&str], web: bool) -> Serve {
        let mut command = Command::new(BIN);
        command.arg("serve");
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--log-level") {
            command.args(["--log-level", "warn"]);
        }
        if web {
            command.args(["--ws-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("corebus serve starts");
        // "corebus listening on ADDR with N shards", then, with a browser
        // listener, "corebus browsers on ADDR".
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut address = || {
            let line = lines.next().and_then(Result::ok).unwrap_or_default();
            line.split_whitespace()
                .nth(3)
                .unwrap_or_else(|| panic!("unexpected line from serve: {line:?}"))
                .to_string()
        };
        let addr = address();
        let web_addr = if web { address() } else { String::new() };
        Serve {
            child,
            addr,
            web_addr,
        }
    }

    /// SIGTERM, then the exit status (panics past `within`).
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        sigterm_and_wait(&mut self.child, within)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for TCP and UDP on 127.0.0.1 (for a listener the test names
/// before the broker binds it: metrics, gossip, a restart on the same
/// port).
pub fn free_port() -> u16 {
    free_port_on(1)
}

/// A port free for UDP and TCP on 127.0.0.1 to 127.0.0.`nodes`. Chosen
/// below the kernel's ephemeral range: a port the kernel handed out there
/// could be taken by any outgoing connection of a test running beside this
/// one before the broker binds it (a test failed that way).
pub fn free_port_on(nodes: u8) -> u16 {
    use std::net::{SocketAddr, TcpListener, UdpSocket};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let mut state = u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
    for _ in 0..1000 {
        state = state
            .wrapping_add(DRAWN.fetch_add(1, Ordering::Relaxed))
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = low + ((state >> 33) % u64::from(high - low)) as u16;
        let free = (1..=nodes).all(|n| {
            let addr = SocketAddr::from(([127, 0, 0, n], port));
            TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1-{nodes} below {ephemeral_low}");
}

/// A file under the target directory, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `contents` to a file named after the test binary and `name`,
    /// private to its owner (mode 0600), as a file holding secrets must be.
    pub fn new(name: &str, contents: &str) -> TempFile {
        TempFile::with_mode(name, contents, 0o600)
    }

    /// [`TempFile::new`] with permission bits `mode`.
    pub fn with_mode(name: &str, contents: &str, mode: u32) -> TempFile {
        use std::os::unix::fs::PermissionsExt;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!(
            "{}-{}-{name}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("writes");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        TempFile(path)
    }

    /// The path, for command lines.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `GET path` from an HTTP endpoint (the metrics one), the whole response.
pub fn scrape(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("writes");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    response
}

/// The value of the sample `name` (with its labels, if any) in metrics text.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in metrics"))
}
