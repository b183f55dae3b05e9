//! `corebus pub` and `corebus sub` end to end: delivery, input and output
//! formats, several servers, and a subscriber that outlives its broker.

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cli::{corebus, finish, json_field, publish, wait_subscribed};
use crate::common;

use common::{Serve, TempFile, BIN};

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
            assert!(
                line.contains(&format!("\"seq\":\"{}\"", i + 1)),
                "a string: {line}"
            );
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

/// `pub --compress`: a large message travels zstd-compressed (a raw
/// subscriber sees the format byte and fewer bytes), a short one as it is,
/// and `sub` prints both as published.
#[test]
fn pub_compress_sends_large_messages_compressed_and_sub_prints_them_plain() {
    use corebus_net::{Frame, PayloadFormat, Subscribe, TopicKey};

    let serve = Serve::start(&["--shards", "2"]);
    let mut sub = corebus(&[
        "sub",
        "demo",
        "zstd",
        "--count",
        "2",
        "--server",
        &serve.addr,
    ]);
    wait_subscribed(&mut sub);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut raw = runtime.block_on(async {
        let addr = serve.addr.parse().expect("an address");
        let mut raw = corebus_tests::RawConn::connect(addr).await;
        raw.hello().await;
        raw.send(&Frame::Subscribe(Subscribe {
            request_id: 1,
            sub_id: 1,
            resume: None,
            topic: TopicKey::from_strs("demo", "zstd").expect("valid"),
        }))
        .await;
        assert!(matches!(raw.recv().await, Some(Frame::SubOk(_))));
        raw
    });
    let large = r#"{"symbol":"EURUSD","bid":1.0842,"ask":1.0843},"#.repeat(100);
    let compress = "--compress";
    for message in [large.as_str(), "short"] {
        let (status, _, err) = finish(
            corebus(&[
                "pub",
                "demo",
                "zstd",
                message,
                compress,
                "--server",
                &serve.addr,
            ]),
            Duration::from_secs(10),
        );
        assert!(status.success(), "{err}");
    }
    let (status, out, err) = finish(sub, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert_eq!(out, format!("{large}\nshort\n"));
    runtime.block_on(async {
        for (format, original) in [
            (PayloadFormat::Zstd, large.len()),
            (PayloadFormat::Plain, 5),
        ] {
            match raw.recv().await {
                Some(Frame::Message(message)) => {
                    assert_eq!(message.body.format(), format);
                    let carried = message.body.payload().len();
                    if format == PayloadFormat::Zstd {
                        assert!(carried * 10 < original, "{carried} bytes for {original}");
                    } else {
                        assert_eq!(carried, original);
                    }
                }
                other => panic!("expected MESSAGE, got {other:?}"),
            }
        }
    });
}

/// `sub NS 'orders/*'`: every matching topic, each message with its own
/// topic and sequence number.
#[test]
fn sub_takes_a_pattern_and_shows_each_messages_topic() {
    let serve = Serve::start(&["--shards", "2"]);
    let mut sub = corebus(&[
        "sub",
        "demo",
        "orders/*",
        "--count",
        "3",
        "-v",
        "--server",
        &serve.addr,
    ]);
    wait_subscribed(&mut sub);
    for (topic, message) in [
        ("orders/eu", "one"),
        ("orders/us", "two"),
        ("invoices/eu", "no"),
        ("orders/eu", "three"),
    ] {
        let (status, _, err) = finish(
            corebus(&["pub", "demo", topic, message, "--server", &serve.addr]),
            Duration::from_secs(10),
        );
        assert!(status.success(), "{err}");
    }
    let (status, out, err) = finish(sub, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert_eq!(
        out,
        "[demo/orders/eu #1] one\n[demo/orders/us #1] two\n[demo/orders/eu #2] three\n"
    );
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
    // The same in words, each message with where it is from.
    let (status, out, err) = finish(
        corebus(&[
            "sub",
            "demo",
            "short",
            "--from",
            "1",
            "-n",
            "3",
            "-v",
            "-s",
            &small.addr,
        ]),
        Duration::from_secs(10),
    );
    assert!(status.success(), "{err}");
    assert!(
        err.contains("corebus: missed messages 1–7 of epoch "),
        "{err}"
    );
    assert_eq!(
        out,
        "[demo/short #8] m8\n[demo/short #9] m9\n[demo/short #10] m10\n"
    );
}

#[test]
fn pub_stdin_publishes_lines_as_bytes_without_their_line_ends() {
    let serve = Serve::start(&[]);
    let mut sub = corebus(&[
        "sub",
        "demo",
        "bytes",
        "--count",
        "3",
        "--server",
        &serve.addr,
    ]);
    wait_subscribed(&mut sub);
    let mut publisher = corebus(&["pub", "demo", "bytes", "--stdin", "--server", &serve.addr]);
    let mut stdin = publisher.stdin.take().expect("piped");
    stdin
        .write_all(b"plain\r\n\xff\xfe not UTF-8\nlast")
        .expect("writes");
    drop(stdin);
    let (status, out, err) = finish(publisher, Duration::from_secs(30));
    assert!(status.success(), "pub failed: {err}");
    assert_eq!(out.trim(), "published 3 messages, last seq 3");
    let status = sub.wait().expect("sub exits");
    assert!(status.success());
    let mut received = Vec::new();
    sub.stdout
        .take()
        .expect("piped")
        .read_to_end(&mut received)
        .expect("reads");
    assert_eq!(received, b"plain\n\xff\xfe not UTF-8\nlast\n");
}

#[test]
fn several_servers_are_tried_in_order_until_one_answers() {
    let serve = Serve::start(&[]);
    // A port nobody listens on, then the broker.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let servers = format!("{closed}, {}", serve.addr);
    let output = Command::new(BIN)
        .args(["pub", "demo", "failover", "hello", "--server", &servers])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    // None answers: the error names them all.
    let output = Command::new(BIN)
        .args([
            "pub",
            "demo",
            "failover",
            "x",
            "--server",
            &format!("{closed},{closed}"),
        ])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&closed.to_string()), "{stderr}");
}

/// `pub --file`, `--stdin --raw` (any bytes, one message), `--count` with
/// `{{n}}`, and `--json` (one line per message, lines of --stdin included).
#[test]
fn pub_publishes_files_raw_input_repeats_and_prints_json() {
    let broker = Serve::start(&[]);
    let addr = broker.addr.as_str();
    let pub_ = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(BIN)
            .args(["pub", "-s", addr, "ns", "t"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pub runs");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin)
            .expect("writes");
        let out = child.wait_with_output().expect("exits");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let binary = [0u8, 0xff, b'\n', 1, 2, b'\r', b'\n'];
    let file = TempFile::new("payload.bin", "");
    std::fs::write(file.path(), binary).expect("writes");
    assert_eq!(pub_(&["--file", file.path()], b""), "1\n");
    assert_eq!(pub_(&["--stdin", "--raw"], &binary), "2\n");
    assert_eq!(
        pub_(&["m {{n}}", "--count", "3"], b""),
        "published 3 messages, last seq 5\n"
    );
    let json = pub_(&["--stdin", "-j"], b"a\nb\n");
    assert_eq!(
        json,
        "{\"ns\":\"ns\",\"topic\":\"t\",\"seq\":\"6\"}\n{\"ns\":\"ns\",\"topic\":\"t\",\"seq\":\"7\"}\n"
    );
    let refused = Command::new(BIN)
        .args(["pub", "-s", addr, "ns", "t", "--stdin", "--count", "2"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(!refused.status.success());

    let sub = Command::new(BIN)
        .args([
            "sub", "-s", addr, "ns", "t", "--from", "1", "-n", "7", "--json",
        ])
        .output()
        .expect("sub runs");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&sub.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let expected_binary = corebus::output::base64(&binary);
    assert_eq!(
        lines[0]["payload_base64"],
        expected_binary.as_str(),
        "the file, byte for byte"
    );
    assert_eq!(
        lines[1]["payload_base64"],
        expected_binary.as_str(),
        "raw stdin, byte for byte"
    );
    let texts: Vec<&str> = lines[2..]
        .iter()
        .map(|line| line["payload"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["m 1", "m 2", "m 3", "a", "b"]);
}

/// Reads stderr lines until one contains `wanted`; returns every line read.
fn stderr_until(stderr: &mut impl BufRead, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).expect("reads stderr");
        assert!(
            read > 0,
            "stderr ended before {wanted:?}; it said {seen:#?}"
        );
        seen.push(line.trim_end().to_string());
        if line.contains(wanted) {
            return seen;
        }
    }
}

#[test]
fn sub_reports_a_lost_broker_resumes_once_it_is_back_and_gives_up_after_its_retries() {
    // The same port for the broker's second life.
    let listen = format!("127.0.0.1:{}", common::free_port());
    let mut serve = Serve::start(&["--listen", &listen]);
    let mut sub = corebus(&[
        "sub",
        "demo",
        "retry",
        "-v",
        "--retry",
        "6",
        "--server",
        &serve.addr,
    ]);
    let mut stderr = wait_subscribed(&mut sub);
    publish(&serve.addr, "retry", "before");

    let (status, _) = serve.terminate(Duration::from_secs(10));
    assert!(status.success());
    let lost = stderr_until(&mut stderr, "connection lost");
    assert!(
        lost.last()
            .is_some_and(|line| line.contains("the server is going away")
                && line.ends_with("reconnecting (up to 6 attempts)")),
        "{lost:?}"
    );
    // Six attempts wait at least 1.5 s in all: time for the broker to start
    // again on the same port.
    let serve = Serve::start(&["--listen", &listen]);
    let back = stderr_until(&mut stderr, "resumed 1 subscription");
    assert!(
        back.iter()
            .any(|line| line.starts_with(&format!("corebus: reconnected to {listen} after "))),
        "{back:?}"
    );
    // The new broker's topic history starts again: said once, plainly.
    let restarted = stderr_until(&mut stderr, "history restarted");
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    publish(&serve.addr, "retry", "after");

    // Gone for good: every attempt is reported, then one error, then exit 1.
    drop(serve);
    let gave_up = stderr_until(&mut stderr, "gave up reconnecting after 6 attempts");
    for attempt in 1..=6 {
        let said = format!("corebus: reconnection attempt {attempt} of 6 failed: ");
        assert!(
            gave_up.iter().any(|line| line.starts_with(&said)),
            "{said:?} in {gave_up:?}"
        );
    }
    let last = gave_up.last().expect("a line");
    assert!(last.starts_with("corebus: error: "), "{last}");
    let (status, out, rest) = finish(sub, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{rest}");
    assert_eq!(out, "[demo/retry #1] before\n[demo/retry #1] after\n");
}

#[test]
fn sub_with_no_retries_exits_at_the_first_loss() {
    let mut serve = Serve::start(&[]);
    let mut sub = corebus(&[
        "sub",
        "demo",
        "once",
        "--retry",
        "0",
        "--server",
        &serve.addr,
    ]);
    let mut stderr = wait_subscribed(&mut sub);
    serve.terminate(Duration::from_secs(10));
    let (status, _, _) = finish(sub, Duration::from_secs(10));
    let mut err = String::new();
    stderr.read_to_string(&mut err).expect("reads stderr");
    assert_eq!(status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("connection lost"), "{err}");
    assert!(!err.contains("reconnect"), "{err}");

    let (status, _, err) = finish(
        corebus(&["sub", "demo", "once", "--retry", "often"]),
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("not a number of attempts"), "{err}");
}

/// `pub --header` and `--content-type` set the messages' headers, and
/// `sub --json` shows them (a message without any has no `headers`).
#[test]
fn pub_headers_reach_sub_json() {
    let serve = Serve::start(&["--shards", "1"]);
    let mut sub = corebus(&[
        "sub",
        "demo",
        "tagged",
        "--count",
        "2",
        "--json",
        "--server",
        &serve.addr,
    ]);
    wait_subscribed(&mut sub);
    let with = corebus(&[
        "pub",
        "demo",
        "tagged",
        "{}",
        "-H",
        "trace=4bf9",
        "--header",
        "tenant=a=b",
        "--content-type",
        "application/json",
        "--server",
        &serve.addr,
    ]);
    let (status, _, err) = finish(with, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    let plain = corebus(&["pub", "demo", "tagged", "x", "--server", &serve.addr]);
    let (status, _, err) = finish(plain, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    let (status, out, _) = finish(sub, Duration::from_secs(10));
    assert!(status.success());
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_eq!(
        lines[0]["headers"],
        serde_json::json!({
            "user": [["trace", "4bf9"], ["tenant", "a=b"]],
            "content_type": "application/json",
        })
    );
    assert!(lines[1].get("headers").is_none(), "{}", lines[1]);
    let (status, _, err) = finish(
        corebus(&[
            "pub",
            "demo",
            "t",
            "x",
            "-H",
            "novalue",
            "--server",
            &serve.addr,
        ]),
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(err.contains("expected NAME=VALUE"), "{err}");
}
