//! `corebus serve --tls-cert/--tls-key` with `corebus pub/sub --ca`, and the
//! clear failures around it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use common::{Serve, BIN};

fn run(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corebus runs");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corebus {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .expect("stderr");
    (status, out, err)
}

#[test]
fn cli_publishes_and_subscribes_over_tls() {
    let certs = corebus_tests::test_certs();
    let cert = certs.cert_pem.to_string_lossy().into_owned();
    let key = certs.key_pem.to_string_lossy().into_owned();
    let broker = Serve::start(&["--shards", "2", "--tls-cert", &cert, "--tls-key", &key]);
    let server = broker.addr.replace("127.0.0.1", "localhost");

    let (status, out, err) = run(&[
        "pub", "demo", "secure", "hello", "--server", &server, "--ca", &cert,
    ]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "1");
    let (status, out, err) = run(&[
        "sub", "demo", "secure", "--from", "1", "--count", "1", "--server", &server, "--ca", &cert,
    ]);
    assert!(status.success(), "{err}");
    assert_eq!(out, "hello\n");

    // Plaintext to the TLS port, and TLS with the wrong roots: one clear line.
    let (status, _, err) = run(&["pub", "demo", "secure", "x", "--server", &server]);
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    let (status, _, err) = run(&["pub", "demo", "secure", "x", "--server", &server, "--tls"]);
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.to_lowercase().contains("tls") || err.contains("certificate"),
        "{err}"
    );
}

#[test]
fn serve_refuses_half_a_tls_configuration_and_unreadable_files() {
    let (status, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent.pem",
    ]);
    assert!(!status.success());
    assert!(err.contains("tls_cert and tls_key"), "{err}");
    let (status, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/nonexistent.key",
    ]);
    assert!(!status.success());
    assert!(err.contains("/nonexistent.pem"), "{err}");
}
