//! The broker's log subscriber also carries records of libraries that log
//! through the `log` crate (glommio's warnings and errors: a panic caught
//! while waking a task, io_uring buffers it could not register), filtered
//! by the same directives. Its own test binary: a process has one global
//! subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use corebus::cli::LogFormat;
use corebus::serve::init_logging_to;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn log_crate_records_reach_the_subscriber_under_the_same_filter() {
    std::env::remove_var("RUST_LOG");
    let captured = Captured::default();
    let writer = captured.clone();
    init_logging_to(
        "info,glommio=warn",
        LogFormat::Json,
        move || writer.clone(),
        false,
    )
    .expect("the first subscriber installs");
    log::warn!(target: "glommio::sys::uring", "registering buffers failed");
    log::info!(target: "glommio::executor", "filtered out by glommio=warn");
    log::error!(target: "other::library", "an error elsewhere");
    tracing::info!("the broker's own record");
    let text = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    let find = |message: &str| {
        records
            .iter()
            .find(|record| record["fields"]["message"] == message)
            .cloned()
    };
    let warning = find("registering buffers failed").unwrap_or_else(|| panic!("forwarded: {text}"));
    assert_eq!(warning["level"], "WARN", "{text}");
    assert_eq!(warning["target"], "glommio::sys::uring", "{text}");
    assert!(find("an error elsewhere").is_some(), "{text}");
    assert!(find("the broker's own record").is_some(), "{text}");
    assert!(find("filtered out by glommio=warn").is_none(), "{text}");
    // A second subscriber is refused, not silently ignored.
    assert!(init_logging_to("info", LogFormat::Text, std::io::sink, false).is_err());
}
