//! The `corebus` binary end to end: `serve`, `pub`, `sub`, and their errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Serve, BIN};

/// Waits for a child with a deadline, then returns (status, stdout, stderr).
fn finish(mut child: Child, within: Duration) -> (std::process::ExitStatus, String, String) {
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

fn corebus(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corebus runs")
}

/// Reads stderr until the "subscribed" line, so publishing can start.
fn wait_subscribed(child: &mut Child) {
    let stderr = child.stderr.take().expect("piped");
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    reader.read_line(&mut line).expect("reads");
    assert!(line.starts_with("subscribed to "), "unexpected: {line:?}");
}

/// Pulls a field's raw text out of one flat JSON line.
fn json_field<'a>(line: &'a str, field: &str) -> &'a str {
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
fn twenty_topics_over_two_shards_arrive_complete_and_in_order() {
    let mut serve = Serve::start(&["--shards", "2"]);
    let topics: Vec<String> = (0..20).map(|t| format!("walk-{t}")).collect();
    let mut subs: Vec<Child> = topics
        .iter()
        .map(|topic| {
            corebus(&[
                "sub",
                "demo",
                topic,
                "--count",
                "25",
                "--json",
                "--server",
                &serve.addr,
            ])
        })
        .collect();
    for sub in &mut subs {
        wait_subscribed(sub);
    }
    let pubs: Vec<Child> = topics
        .iter()
        .map(|topic| {
            let mut child = corebus(&["pub", "demo", topic, "--stdin", "--server", &serve.addr]);
            let mut stdin = child.stdin.take().expect("piped");
            for i in 1..=25 {
                writeln!(stdin, "{topic} line {i}").expect("writes");
            }
            child
        })
        .collect();
    for child in pubs {
        let (status, out, err) = finish(child, Duration::from_secs(30));
        assert!(status.success(), "pub failed: {err}");
        assert_eq!(out.trim(), "published 25 messages, last seq 25");
    }
    for (topic, sub) in topics.iter().zip(subs) {
        let (status, out, err) = finish(sub, Duration::from_secs(30));
        assert!(status.success(), "sub failed: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 25);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(json_field(line, "ns"), "demo");
            assert_eq!(json_field(line, "topic"), topic);
            assert_eq!(json_field(line, "seq"), (i + 1).to_string(), "consecutive");
            assert_eq!(
                json_field(line, "payload"),
                format!("{topic} line {}", i + 1)
            );
        }
    }
    let (status, _) = serve.terminate(Duration::from_secs(10));
    assert!(status.success(), "serve exits 0 on SIGTERM");
}

#[test]
fn pub_prints_the_sequence_number_and_sub_prints_raw_lines() {
    let serve = Serve::start(&["--shards", "2"]);
    let mut sub = corebus(&[
        "sub",
        "demo",
        "raw",
        "--count",
        "2",
        "--server",
        &serve.addr,
    ]);
    wait_subscribed(&mut sub);
    for (message, seq) in [("hello", "1"), ("world", "2")] {
        let (status, out, err) = finish(
            corebus(&["pub", "demo", "raw", message, "--server", &serve.addr]),
            Duration::from_secs(10),
        );
        assert!(status.success(), "{err}");
        assert_eq!(out.trim(), seq);
    }
    let (status, out, _) = finish(sub, Duration::from_secs(10));
    assert!(status.success());
    assert_eq!(out, "hello\nworld\n");
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
fn sub_from_replays_history_and_reports_what_the_ring_lost() {
    let serve = Serve::start(&["--shards", "2"]);
    for i in 1..=10 {
        let (status, out, err) = finish(
            corebus(&[
                "pub",
                "demo",
                "history",
                &format!("m{i}"),
                "--server",
                &serve.addr,
            ]),
            Duration::from_secs(10),
        );
        assert!(status.success(), "{err}");
        assert_eq!(out.trim(), i.to_string());
    }
    let (status, out, err) = finish(
        corebus(&[
            "sub",
            "demo",
            "history",
            "--from",
            "1",
            "--count",
            "10",
            "--json",
            "--server",
            &serve.addr,
        ]),
        Duration::from_secs(10),
    );
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(json_field(line, "seq"), (i + 1).to_string());
        assert_eq!(json_field(line, "payload"), format!("m{}", i + 1));
    }
    drop(serve);

    // A ring of 3: resuming from 1 reports 1..=7 lost, then replays 8..=10.
    let small = Serve::start(&["--shards", "1", "--ring-messages", "3"]);
    let mut publisher = corebus(&["pub", "demo", "short", "--stdin", "--server", &small.addr]);
    {
        let mut stdin = publisher.stdin.take().expect("piped");
        for i in 1..=10 {
            writeln!(stdin, "m{i}").expect("writes");
        }
    }
    let (status, _, err) = finish(publisher, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    let (status, out, err) = finish(
        corebus(&[
            "sub",
            "demo",
            "short",
            "--from",
            "1",
            "--count",
            "3",
            "--json",
            "--server",
            &small.addr,
        ]),
        Duration::from_secs(10),
    );
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(json_field(lines[0], "discontinuity"), "true");
    assert_eq!(json_field(lines[0], "last_seq"), "0");
    assert_eq!(json_field(lines[0], "next_seq"), "8");
    for (line, seq) in lines[1..].iter().zip(8..) {
        assert_eq!(json_field(line, "seq"), seq.to_string());
    }
}
