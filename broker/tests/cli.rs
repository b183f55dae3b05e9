//! The `corebus` binary end to end: `serve`, `pub`, `sub`, and their errors.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use common::{Serve, TempFile, BIN};

/// Waits for a child with a deadline, then returns (status, stdout, stderr).
pub(crate) fn finish(
    mut child: Child,
    within: Duration,
) -> (std::process::ExitStatus, String, String) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).expect("stdout");
    }
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).expect("stderr");
    }
    (status, out, err)
}

pub(crate) fn corebus(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corebus runs")
}

/// Reads stderr until the "subscribed" line, so publishing can start;
/// returns the rest of stderr.
pub(crate) fn wait_subscribed(child: &mut Child) -> BufReader<ChildStderr> {
    let stderr = child.stderr.take().expect("piped");
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    reader.read_line(&mut line).expect("reads");
    assert!(line.starts_with("subscribed to "), "unexpected: {line:?}");
    reader
}

/// `corebus ARGS` with a stdout whose reader is already closed, so that its
/// first write there fails with EPIPE, as after `| head` has exited.
fn corebus_stdout_closed(args: &[&str]) -> Child {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("corebus runs")
}

/// Publishes one message with `corebus pub`.
pub(crate) fn publish(addr: &str, topic: &str, message: &str) {
    let (status, _, err) = finish(
        corebus(&["pub", "demo", topic, message, "--server", addr]),
        Duration::from_secs(10),
    );
    assert!(status.success(), "pub failed: {err}");
}

/// Pulls a field's raw text out of one flat JSON line.
pub(crate) fn json_field<'a>(line: &'a str, field: &str) -> &'a str {
    let key = format!("\"{field}\":");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("{field} in {line}"))
        + key.len();
    let rest = &line[start..];
    let end = if let Some(stripped) = rest.strip_prefix('"') {
        stripped.find('"').map(|i| i + 2).expect("closing quote")
    } else {
        rest.find([',', '}']).expect("end of value")
    };
    rest[..end].trim_matches('"')
}

#[test]
fn failures_print_one_line_and_exit_non_zero() {
    // Nothing listens on port 1 of loopback.
    let (status, out, err) = finish(
        corebus(&["pub", "demo", "t", "x", "--server", "127.0.0.1:1"]),
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("corebus: error: "), "{err}");
    assert!(err.contains("127.0.0.1:1"), "names the address: {err}");

    let (status, _, err) = finish(corebus(&["pub", "demo"]), Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");

    let (status, _, err) = finish(
        corebus(&["serve", "--shards", "0"]),
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("--shards"), "{err}");

    let serve = Serve::start(&["--shards", "1"]);
    let long_topic = "t".repeat(2000);
    let (status, _, err) = finish(
        corebus(&["pub", "demo", &long_topic, "x", "--server", &serve.addr]),
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("topic"), "{err}");
}

#[test]
fn sub_exits_quietly_once_its_reader_has_closed_stdout() {
    let serve = Serve::start(&["--shards", "1"]);
    let mut sub = corebus(&["sub", "demo", "piped", "--server", &serve.addr]);
    let mut stderr = wait_subscribed(&mut sub);
    publish(&serve.addr, "piped", "first");
    {
        // `| head -1`: read one line, then close the pipe.
        let mut stdout = BufReader::new(sub.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reads");
        assert_eq!(line, "first\n");
    }
    // The next message is the first write into the closed pipe.
    publish(&serve.addr, "piped", "second");
    let (status, _, _) = finish(sub, Duration::from_secs(10));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    assert!(!rest.contains("panicked"), "{rest}");
    assert_eq!(status.code(), Some(0), "stderr: {rest}");
    assert!(rest.is_empty(), "quiet: {rest:?}");
}

#[test]
fn printing_commands_exit_quietly_when_stdout_is_closed() {
    let serve = Serve::start(&["--shards", "1"]);
    let empty = TempFile::new("empty.toml", "");
    let commands: [&[&str]; 6] = [
        &["config", "default"],
        &["config", "check", empty.path()],
        &["serve", "--print-config", "--listen", "127.0.0.1:0"],
        &["key", "generate"],
        &["key", "hash", "not-a-real-key"],
        &["pub", "demo", "closed", "x", "--server", &serve.addr],
    ];
    for args in commands {
        let (status, _, err) = finish(corebus_stdout_closed(args), Duration::from_secs(10));
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} is quiet: {err:?}");
    }
    // doctor fails on a host the broker cannot run on, printed or not.
    let (status, _, err) = finish(corebus_stdout_closed(&["doctor"]), Duration::from_secs(10));
    assert!(!err.contains("panicked"), "doctor: {err}");
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "doctor: {status:?} {err}"
    );
}

#[test]
fn a_closed_stderr_does_not_turn_an_error_into_a_panic() {
    let closed_stderr = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(writer)
            .spawn()
            .expect("corebus runs");
        finish(child, Duration::from_secs(10)).0
    };
    // A panic would exit 101.
    let unreachable = closed_stderr(&["pub", "demo", "t", "x", "--server", "127.0.0.1:1"]);
    assert_eq!(unreachable.code(), Some(1));
    assert_eq!(closed_stderr(&["pub", "demo"]).code(), Some(2));
}

#[test]
fn webhook_list_json_prints_a_far_expiry_exactly_and_stops_quietly_on_a_closed_pipe() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-webhooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A grace of 3e9 hours puts the previous secret's expiry, in Unix
    // milliseconds, past 2^53: a JSON number would lose it.
    let grace_ms: u64 = 3_000_000_000 * 3_600_000;
    let serve = Serve::start(&[
        "--shards",
        "1",
        "--data-dir",
        dir.to_str().expect("UTF-8 path"),
        "--webhook-rotation-grace",
        "3000000000h",
        "--webhook-allow-networks",
        "127.0.0.1/32",
    ]);
    let webhook = |args: &[&str]| {
        let mut command = vec!["webhook"];
        command.extend_from_slice(args);
        command.extend_from_slice(&["--server", &serve.addr]);
        let (status, out, err) = finish(corebus(&command), Duration::from_secs(10));
        assert!(status.success(), "{args:?}: {err}");
        out
    };
    let added = webhook(&[
        "add",
        "--url",
        "http://127.0.0.1:9/hook",
        "--ns",
        "demo",
        "--topic",
        "t",
    ]);
    let id = added.split_whitespace().next().expect("an id").to_string();
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    webhook(&["rotate", &id]);
    let listed = webhook(&["list", "--json"]);
    let object: serde_json::Value = serde_json::from_str(listed.trim()).expect("one JSON line");
    let expires: u64 = object["previous_secret_expires_ms"]
        .as_str()
        .unwrap_or_else(|| panic!("a string: {listed}"))
        .parse()
        .expect("decimal digits");
    assert!(expires > 1 << 53, "{expires}");
    let since_rotation = expires
        .checked_sub(grace_ms + before_ms)
        .unwrap_or_else(|| panic!("{expires} is not after the rotation plus the grace"));
    assert!(since_rotation < 60_000, "now plus the grace: {expires}");

    for json in [false, true] {
        let mut args = vec!["webhook", "list", "--server", &serve.addr];
        if json {
            args.push("--json");
        }
        let (status, _, err) = finish(corebus_stdout_closed(&args), Duration::from_secs(10));
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
    }
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_keeps_running_when_its_stdout_is_closed() {
    let mut serve = corebus_stdout_closed(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--log-level",
        "warn",
    ]);
    let mut stderr = BufReader::new(serve.stderr.take().expect("piped"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).expect("reads");
        seen.push_str(&line);
        assert!(read > 0, "serve ended its stderr: {seen}");
        if line.contains("cannot print the listening address") {
            break;
        }
    }
    assert!(
        serve.try_wait().expect("waits").is_none(),
        "serve exited: {seen}"
    );
    let (status, _) = common::sigterm_and_wait(&mut serve, Duration::from_secs(10));
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    assert!(!rest.contains("panicked"), "{rest}");
}

/// `corebus completions SHELL` and `corebus man`: generated from the clap
/// definitions, so every subcommand and every `serve` flag is in them.
#[test]
fn completions_and_manual_pages_cover_every_subcommand_and_flag() {
    // Read while it runs: a completion script is more than a pipe holds.
    let output = |args: &[&str]| Command::new(BIN).args(args).output().expect("runs");
    let run = |args: &[&str]| {
        let out = output(args);
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let subcommands = [
        "serve",
        "pub",
        "sub",
        "config",
        "doctor",
        "key",
        "token",
        "webhook",
        "cluster",
        "completions",
        "man",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for subcommand in subcommands {
            assert!(script.contains(subcommand), "{shell}: {subcommand}");
        }
        assert!(script.contains("max-connections"), "{shell}: serve's flags");
    }
    let serve = run(&["man", "serve"]);
    assert!(serve.contains(".TH corebus-serve 1"), "{serve}");
    let settings = corebus::config::settings_command();
    for arg in settings
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
    {
        let flag = arg.get_long().expect("long").replace('-', "\\-");
        assert!(
            serve.contains(&format!("\\-\\-{flag}")),
            "--{flag} in corebus-serve(1)"
        );
    }
    assert!(
        serve.contains("COREBUS_MAX_CONNECTIONS"),
        "environment variables too"
    );
    let top = run(&["man"]);
    for subcommand in subcommands {
        assert!(top.contains(subcommand), "corebus(1) names {subcommand}");
    }
    let refused = output(&["man", "nope"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("no subcommand \"nope\""), "{err}");

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("man-{}", std::process::id()));
    let listed = run(&["man", "--out-dir", dir.to_str().expect("UTF-8")]);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("the pages were written")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let mut expected: Vec<String> = std::iter::once("corebus.1".to_string())
        .chain(subcommands.iter().map(|name| format!("corebus-{name}.1")))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(listed.lines().count(), expected.len(), "{listed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLI's errors say each cause once, on one line, with what is missing
/// and clap's suggestion.
#[test]
fn errors_are_one_line_each_cause_once_with_suggestions() {
    let error = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().expect("runs");
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        err
    };
    let err = error(&["su"]);
    assert!(err.contains("a similar subcommand exists: 'sub'"), "{err}");
    let err = error(&["pub", "--sever", "x", "ns", "t", "m"]);
    assert!(
        err.contains("a similar argument exists: '--server'"),
        "{err}"
    );
    let err = error(&["pub"]);
    assert!(
        err.contains("<NAMESPACE>, <TOPIC>"),
        "the missing ones are named: {err}"
    );
    let err = error(&["pub", "--server", "127.0.0.1", "ns", "t", "m"]);
    assert!(
        err.contains("--server 127.0.0.1: expected HOST:PORT"),
        "{err}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = taken.local_addr().expect("address").to_string();
    let err = error(&["serve", "--listen", &addr, "--log-level", "error"]);
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

/// `-s`/COREBUS_SERVER say where, and --key-file, COREBUS_KEY_FILE and
/// COREBUS_TOKEN who: the common options of every client command without
/// a secret on the command line.
#[test]
fn the_server_and_credentials_come_from_short_flags_files_and_the_environment() {
    let key = "cbk_cli_test_key";
    let config = TempFile::new(
        "cli-auth.toml",
        &format!(
            "token_secret = \"cli-test-token-secret-0123456789abcdef\"\n\
             [[keys]]\nname = \"cli\"\nsha256 = \"{}\"\nsuperuser = true\n",
            corebus::auth::key_hash_hex(key)
        ),
    );
    let broker = Serve::start(&["--config", config.path()]);
    let key_file = TempFile::new("cli.key", &format!("{key}\n"));
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command.args(args);
        for var in [
            "COREBUS_SERVER",
            "COREBUS_TOKEN",
            "COREBUS_KEY_FILE",
            "COREBUS_CREDENTIALS",
        ] {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let out = command.output().expect("runs");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let addr = broker.addr.as_str();
    let (ok, seq, err) = run(
        &[
            "pub",
            "-s",
            addr,
            "--key-file",
            key_file.path(),
            "ns",
            "t",
            "one",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(seq.trim(), "1");
    let (ok, seq, err) = run(
        &["pub", "ns", "t", "two"],
        &[
            ("COREBUS_SERVER", addr),
            ("COREBUS_KEY_FILE", key_file.path()),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(seq.trim(), "2");
    let (ok, _, err) = run(&["pub", "-s", addr, "ns", "t", "three"], &[]);
    assert!(!ok, "no credentials, refused");
    assert!(err.contains("unauthorized"), "{err}");
    // A token signed with the broker's secret, given in COREBUS_TOKEN.
    let mint = [
        "token",
        "mint",
        "--config",
        config.path(),
        "--ns",
        "ns",
        "--topic",
        "t",
        "--publish",
        "--ttl",
        "60s",
    ];
    let (ok, token, err) = run(&mint, &[]);
    assert!(ok, "{err}");
    let (ok, seq, err) = run(
        &["pub", "-s", addr, "ns", "t", "four"],
        &[("COREBUS_TOKEN", token.trim())],
    );
    assert!(ok, "{err}");
    assert_eq!(seq.trim(), "3");
    let (ok, _, err) = run(
        &[
            "pub",
            "-s",
            addr,
            "--key-file",
            "/nonexistent/key",
            "ns",
            "t",
            "x",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("cannot read the key file /nonexistent/key"),
        "{err}"
    );
}
