//! Operating the `corebus` binary: configuration layering and refusals,
//! `config check` / `config default`, `doctor`, and the log formats.

use crate::common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempFile;

const BIN: &str = env!("CARGO_BIN_EXE_corebus");

/// `corebus ARGS` with no COREBUS_* or RUST_LOG from the test's own
/// environment, plus `env`.
fn corebus(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("COREBUS_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

fn output(mut command: Command) -> Output {
    command.stdin(Stdio::null()).output().expect("corebus runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `serve --print-config` as key → (value, origin).
fn effective(args: &[&str], env: &[(&str, &str)]) -> Vec<(String, String, String)> {
    let mut full = vec!["serve", "--print-config"];
    full.extend_from_slice(args);
    let out = output(corebus(&full, env));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (key, rest) = line.split_once(" = ").expect("key = value");
            let (value, origin) = rest.split_once("  # ").expect("value  # origin");
            (key.to_string(), value.to_string(), origin.to_string())
        })
        .collect()
}

fn lookup<'a>(settings: &'a [(String, String, String)], key: &str) -> (&'a str, &'a str) {
    settings
        .iter()
        .find(|(name, _, _)| name == key)
        .map(|(_, value, origin)| (value.as_str(), origin.as_str()))
        .unwrap_or_else(|| panic!("{key} is printed"))
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let file = TempFile::new(
        "layers.toml",
        "shards = 3\nmax_frame = 4096\nring_messages = 10\nheartbeat_interval = \"2s\"\n",
    );
    let env = [("COREBUS_SHARDS", "2"), ("COREBUS_MAX_FRAME", "8192")];
    let settings = effective(&["--config", file.path(), "--shards", "1"], &env);
    assert_eq!(lookup(&settings, "shards"), ("1", "--shards"));
    assert_eq!(
        lookup(&settings, "max_frame"),
        ("8192", "COREBUS_MAX_FRAME")
    );
    assert_eq!(lookup(&settings, "ring_messages"), ("10", file.path()));
    assert_eq!(
        lookup(&settings, "heartbeat_interval"),
        ("\"2s\"", file.path())
    );
    assert_eq!(lookup(&settings, "ring_bytes"), ("1048576", "default"));

    // The file can come from COREBUS_CONFIG too.
    let settings = effective(&[], &[("COREBUS_CONFIG", file.path())]);
    assert_eq!(lookup(&settings, "shards"), ("3", file.path()));
}

#[test]
fn the_default_file_is_every_key_at_its_default_and_matches_deploy() {
    let out = output(corebus(&["config", "default"], &[]));
    assert!(out.status.success());
    let default_file = text(&out.stdout);
    let file = TempFile::new("default.toml", &default_file);
    let from_file = effective(&["--config", file.path()], &[]);
    let built_in = effective(&[], &[]);
    assert_eq!(from_file.len(), built_in.len());
    for ((key, value, origin), (built_in_key, built_in_value, built_in_origin)) in
        from_file.iter().zip(&built_in)
    {
        assert_eq!(key, built_in_key);
        assert_eq!(value, built_in_value, "{key}");
        assert_eq!(origin, file.path(), "{key} is set in the default file");
        assert_eq!(built_in_origin, "default");
    }
    let check = output(corebus(&["config", "check", file.path()], &[]));
    assert!(check.status.success());
    assert_eq!(text(&check.stdout), format!("{}: ok\n", file.path()));

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/corebus.toml");
    let shipped = std::fs::read_to_string(shipped).expect("deploy/corebus.toml exists");
    assert_eq!(
        shipped, default_file,
        "deploy/corebus.toml must be `corebus config default` output"
    );
}

/// docs/operations.md's table of every key: each key of the code once and
/// nothing else, each with the default of `corebus config default` and
/// `reload` exactly where a reload applies it.
#[test]
fn the_operations_guide_lists_every_key_with_its_default_and_whether_it_reloads() {
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    let doc = std::fs::read_to_string(doc).expect("docs/operations.md exists");
    let marker = "<!-- every-key table";
    let start = doc.find(marker).expect("the every-key table's marker");
    let rows: Vec<Vec<&str>> = doc[start..]
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|line| line.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let default_file = text(&output(corebus(&["config", "default"], &[])).stdout);
    let defaults: std::collections::BTreeMap<&str, &str> = default_file
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(" = "))
        .collect();
    let settings: Vec<String> = corebus::config::settings_command()
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
        .map(|arg| arg.get_id().to_string())
        .collect();
    let file_only: Vec<&str> = corebus::auth_config::FILE_KEYS
        .into_iter()
        .chain(["webhooks"])
        .collect();
    let mut documented = Vec::new();
    for row in &rows {
        let [key, default, effect, _what] = row[..] else {
            panic!("a row of four cells: {row:?}");
        };
        let key = key.trim_matches('`');
        documented.push(key.to_string());
        let reloads = corebus::reload::RELOADABLE.contains(&key)
            || corebus::auth_config::FILE_KEYS.contains(&key);
        assert_eq!(effect, if reloads { "reload" } else { "restart" }, "{key}");
        if file_only.contains(&key) {
            assert_eq!(default, "none", "{key} has no default");
        } else {
            let expected = defaults
                .get(key)
                .map_or("unset".to_string(), |value| format!("`{value}`"));
            assert_eq!(default, expected, "the default of {key}");
        }
    }
    let mut expected: Vec<String> = settings
        .iter()
        .cloned()
        .chain(file_only.iter().map(|key| key.to_string()))
        .collect();
    expected.sort();
    documented.sort();
    assert_eq!(
        documented, expected,
        "docs/operations.md lists every key once, and no other"
    );
}

#[test]
fn bad_files_are_refused_with_one_line_naming_the_file_and_the_key() {
    let cases = [
        (
            "unknown.toml",
            "listen = \"127.0.0.1:0\"\nbogus = 1\n",
            "unknown key `bogus`",
        ),
        (
            "type.toml",
            "shards = 1.5\n",
            "key `shards`: expected a string, an integer or a boolean",
        ),
        (
            "key.toml",
            "[[keys]]\nname = \"k\"\nsuperuser = true\n",
            "key `keys[0]`: key \"k\" has no `sha256`",
        ),
        (
            "secret.toml",
            "token_secret = \"short\"\n",
            "key `token_secret`: the secret is 5 bytes long",
        ),
        (
            "number.toml",
            "max_frame = \"big\"\n",
            "key `max_frame`: invalid value \"big\"",
        ),
        (
            "range.toml",
            "max_frame = 10\n",
            "key `max_frame`: invalid value \"10\"",
        ),
        (
            "address.toml",
            "listen = 7400\n",
            "key `listen`: invalid value \"7400\"",
        ),
        (
            "duration.toml",
            "heartbeat_interval = \"5 parsecs\"\n",
            "key `heartbeat_interval`",
        ),
        (
            "enum.toml",
            "slow_consumer = \"maybe\"\n",
            "expected one of: drop, disconnect",
        ),
        (
            "heartbeat.toml",
            "heartbeat_interval = \"30s\"\nheartbeat_timeout = \"30s\"\n",
            "heartbeat_timeout = 30s",
        ),
        ("syntax.toml", "shards = \n", "line 1"),
    ];
    for (name, contents, expected) in cases {
        let file = TempFile::new(name, contents);
        for args in [
            vec!["config", "check", file.path()],
            vec!["serve", "--listen", "127.0.0.1:0", "--config", file.path()],
        ] {
            let out = output(corebus(&args, &[]));
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} {contents}: {err}");
            assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.starts_with("corebus: error: "), "{err}");
            assert!(err.contains(file.path()), "names the file: {err}");
            assert!(err.contains(expected), "{contents}: {err}");
        }
    }
    let missing = format!("{}/no-such-corebus.toml", env!("CARGO_TARGET_TMPDIR"));
    let out = output(corebus(&["config", "check", &missing], &[]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&missing) && err.contains("cannot read"),
        "{err}"
    );
    let out = output(corebus(
        &["config", "check", env!("CARGO_TARGET_TMPDIR")],
        &[],
    ));
    assert_eq!(out.status.code(), Some(1), "a directory is not a file");
}

#[test]
fn a_bad_environment_value_names_its_variable() {
    let out = output(corebus(&["serve"], &[("COREBUS_SHARDS", "many")]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("COREBUS_SHARDS") && err.contains("many"),
        "{err}"
    );
}

/// `corebus doctor`'s checks, in the order it prints them.
const DOCTOR_CHECKS: [&str; 7] = [
    "kernel",
    "io_uring",
    "memlock",
    "nofile",
    "somaxconn",
    "memory",
    "cpus",
];

#[test]
fn doctor_passes_here_and_prints_every_check() {
    let out = output(corebus(&["doctor"], &[]));
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    for name in DOCTOR_CHECKS {
        let line = report
            .lines()
            .find(|line| line.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("a {name} line in {report}"));
        assert!(
            line.starts_with("ok ") || line.starts_with("warn "),
            "{line}"
        );
    }
    assert!(
        report.contains(&format!("{} checks: ", DOCTOR_CHECKS.len())),
        "{report}"
    );
    // Every warning comes with its fix.
    let warnings = report
        .lines()
        .filter(|line| line.starts_with("warn "))
        .count();
    let fixes = report
        .lines()
        .filter(|line| line.trim_start().starts_with("fix: "))
        .count();
    assert_eq!(warnings, fixes, "{report}");
    let json = output(corebus(&["doctor", "-j"], &[]));
    assert!(json.status.success());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(value["ok"], true);
    let names: Vec<&str> = value["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|check| check["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, DOCTOR_CHECKS);
}

#[test]
fn doctor_and_serve_refuse_a_low_memlock_limit_with_the_same_fix() {
    let low = |mut command: Command| {
        // SAFETY: setrlimit is async-signal-safe; lowering is always allowed.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 64 * 1024,
                    rlim_max: 64 * 1024,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        output(command)
    };
    let doctor = low(corebus(&["doctor", "--shards", "2"], &[]));
    let report = text(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{report}");
    assert!(report.contains("FAIL  memlock"), "{report}");
    assert!(report.contains("LimitMEMLOCK=infinity"), "{report}");
    // The same for a monitoring system: one JSON object, the same exit.
    let json = low(corebus(&["doctor", "--json", "--shards", "2"], &[]));
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(value["ok"], false);
    let memlock = value["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|check| check["name"] == "memlock")
        .expect("a memlock check");
    assert_eq!(memlock["status"], "fail");
    assert!(memlock["fix"]
        .as_str()
        .expect("a fix")
        .contains("LimitMEMLOCK=infinity"));

    let serve = low(corebus(
        &["serve", "--listen", "127.0.0.1:0", "--shards", "2"],
        &[],
    ));
    let err = text(&serve.stderr);
    assert_eq!(serve.status.code(), Some(1), "{err}");
    assert!(serve.stdout.is_empty(), "never listened");
    let fail = err
        .lines()
        .find(|line| line.starts_with("corebus: error: "))
        .expect("an error line");
    assert!(
        fail.contains("memlock") && fail.contains("LimitMEMLOCK=infinity"),
        "{fail}"
    );
    assert!(fail.contains("ulimit -l unlimited"), "{fail}");
}

/// Starts `serve` with `args` on port 0, stderr piped; returns the child and
/// its address.
fn serve(args: &[&str]) -> (Child, String) {
    let mut full = vec!["serve", "--listen", "127.0.0.1:0", "--shards", "2"];
    full.extend_from_slice(args);
    let mut child = corebus(&full, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let addr = common::read_address(&mut child);
    (child, addr)
}

/// SIGTERM, wait, and return everything the broker logged.
fn stop(mut child: Child) -> String {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("waits").is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut log)
        .expect("reads the log");
    log
}

fn publish(addr: &str, count: usize) {
    let mut child = corebus(&["pub", "ops", "logs", "--stdin", "--server", addr], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("pub runs");
    let mut stdin = child.stdin.take().expect("piped");
    for i in 0..count {
        writeln!(stdin, "message {i}").expect("writes");
    }
    drop(stdin);
    assert!(child.wait().expect("waits").success());
}

#[test]
fn json_logs_are_one_object_per_line_and_messages_are_not_logged_at_info() {
    let (child, addr) = serve(&["--log-format", "json", "--log-level", "info"]);
    publish(&addr, 200);
    let log = stop(child);
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty(), "the broker logs its start");
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert!(
            object.get("level").is_some() && object.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(log.contains("corebus listening"), "{log}");
    // 200 messages, and only start-up, warnings and shutdown in the log.
    assert!(lines.len() < 20, "per-message logging at info? {log}");
}

#[test]
fn text_logs_have_no_colour_codes_when_not_on_a_terminal() {
    let (child, addr) = serve(&["--log-level", "debug"]);
    publish(&addr, 5);
    let log = stop(child);
    assert!(log.contains("corebus listening"), "{log}");
    assert!(
        log.contains("connection accepted"),
        "connections at debug: {log}"
    );
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in {log}");
}

#[test]
fn under_a_service_manager_serve_says_ready_keeps_its_watchdog_fed_reloads_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("binds the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let socket_path = path.to_str().expect("UTF-8 path");
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("notify-data");
    let mut child = corebus(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("UTF-8 path"),
        ],
        // A watchdog every second: a keep-alive at least every 250 ms
        // while the shards turn (a tick a second each with these settings
        // is enough for one every second or so).
        &[("NOTIFY_SOCKET", socket_path), ("WATCHDOG_USEC", "1000000")],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("serve starts");
    let addr = common::read_address(&mut child);
    let next = |socket: &UnixDatagram| {
        let mut buf = [0u8; 256];
        let read = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..read]).into_owned()
    };
    // READY only once it listens: the address line came first.
    assert_eq!(next(&socket), "READY=1\n", "after {addr}");
    let started = Instant::now();
    let mut keep_alives = 0;
    while keep_alives < 2 {
        assert_eq!(next(&socket), "WATCHDOG=1\n");
        keep_alives += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(4), "fed in time");
    // A reload (ExecReload= sends SIGHUP): RELOADING=1 with the monotonic
    // time systemd wants, then READY=1 once it is done.
    let other_than_watchdog = |socket: &UnixDatagram| loop {
        let notification = next(socket);
        if notification != "WATCHDOG=1\n" {
            return notification;
        }
    };
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = other_than_watchdog(&socket);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec = lines
        .next()
        .and_then(|line| line.strip_prefix("MONOTONIC_USEC="))
        .and_then(|value| value.parse::<u64>().ok());
    assert!(usec.is_some_and(|usec| usec > 0), "{reloading}");
    assert_eq!(other_than_watchdog(&socket), "READY=1\n");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    loop {
        match next(&socket).as_str() {
            "WATCHDOG=1\n" => continue,
            other => {
                assert_eq!(other, "STOPPING=1\n");
                break;
            }
        }
    }
    assert!(child.wait().expect("exits").success());
    let _ = std::fs::remove_file(&path);
}

/// Sizes and durations with units, in the file, the environment and on the
/// command line alike; a size is bytes to the broker (a payload over a
/// `max_frame` of 9 KiB is refused).
#[test]
fn sizes_and_durations_take_units_everywhere() {
    let file = TempFile::new(
        "units.toml",
        "topic_memory = \"2GiB\"\ntoken_max_lifetime = \"1h 30m\"\nmax_frame = \"9KiB\"\n",
    );
    let settings = effective(
        &["--config", file.path(), "--outbox-limit", "4MiB"],
        &[("COREBUS_RING_BYTES", "64KiB")],
    );
    assert_eq!(lookup(&settings, "topic_memory"), ("\"2GiB\"", file.path()));
    assert_eq!(lookup(&settings, "token_max_lifetime").0, "\"1h 30m\"");
    assert_eq!(
        lookup(&settings, "outbox_limit"),
        ("\"4MiB\"", "--outbox-limit")
    );
    assert_eq!(
        lookup(&settings, "ring_bytes"),
        ("\"64KiB\"", "COREBUS_RING_BYTES")
    );

    let (child, addr) = serve(&["--config", file.path(), "--max-hello-frame", "9KiB"]);
    let publish = |payload: &str| {
        corebus(&["pub", "ops", "units", payload, "--server", &addr], &[])
            .output()
            .expect("pub runs")
    };
    assert!(
        publish(&"x".repeat(8192)).status.success(),
        "8 KiB fit in 9 KiB"
    );
    let refused = publish(&"x".repeat(10240));
    assert!(!refused.status.success(), "10 KiB do not fit in 9 KiB");
    let err = text(&refused.stderr);
    // The broker's WELCOME said 9216: the client reckons what fits after
    // the frame's header and the body's format byte.
    assert!(err.contains("too large: at most 9198 bytes"), "{err}");
    stop(child);
}

/// `data_dir = auto` (the default): systemd's state directory when it set
/// one, else the user's XDG state directory; a development run writes
/// nothing under /var/lib.
#[test]
fn the_default_data_dir_is_systemds_state_directory_or_the_users() {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("data-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (state, xdg) = (base.join("state"), base.join("xdg"));
    for (env, expected) in [
        (("STATE_DIRECTORY", &state), state.join("webhooks.json")),
        (("XDG_STATE_HOME", &xdg), xdg.join("corebus/webhooks.json")),
    ] {
        let value = env.1.to_str().expect("UTF-8");
        let mut child = corebus(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--webhook-allow-networks",
                "127.0.0.0/8",
            ],
            &[],
        )
        .env_remove("STATE_DIRECTORY")
        .env_remove("XDG_STATE_HOME")
        .env(env.0, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
        let addr = common::read_address(&mut child);
        let added = output(corebus(
            &[
                "webhook",
                "add",
                "--url",
                "http://127.0.0.1:9/in",
                "--ns",
                "ops",
                "--topic",
                "t",
                "-s",
                &addr,
            ],
            &[],
        ));
        assert!(added.status.success(), "{}", text(&added.stderr));
        assert!(expected.is_file(), "{} with {}", expected.display(), env.0);
        stop(child);
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// The CPUs a thread of `pid` named `name` may run on, as the kernel lists
/// them (`Cpus_allowed_list`, such as `0` or `0-1`).
fn cpus_of_thread(pid: u32, name: &str) -> Option<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        return status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .map(|list| list.trim().to_owned());
    }
    None
}

#[test]
fn shards_are_pinned_to_one_cpu_each_unless_pin_shards_is_false() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let own = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("one CPU ({own}): pinned and unpinned shards look the same; not checked");
        return;
    }
    let pinned = common::Serve::start(&["--shards", "1"]);
    let pinned_cpus = cpus_of_thread(pinned.child.id(), "corebus-shard-0").expect("shard thread");
    assert_ne!(pinned_cpus, own, "a pinned shard runs on one CPU of {own}");
    assert!(!pinned_cpus.contains([',', '-']), "one CPU: {pinned_cpus}");
    drop(pinned);
    let unpinned = common::Serve::start(&["--shards", "1", "--pin-shards=false"]);
    let unpinned_cpus =
        cpus_of_thread(unpinned.child.id(), "corebus-shard-0").expect("shard thread");
    assert_eq!(
        unpinned_cpus, own,
        "an unpinned shard may run on every CPU the process may"
    );
}
