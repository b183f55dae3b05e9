//! Standard output and error for the commands that print, written so that a
//! reader that has gone away never makes the command panic, as `println!`
//! and `eprintln!` do when a write fails.
//!
//! When standard output's reader has closed it (`corebus sub ns t | head -3`
//! after the third line), the next write fails with `BrokenPipe`; it becomes
//! [`StdoutClosed`], which the command returns like any error and `main` turns
//! into a quiet exit with status 0: nobody is left to read what would follow.
//!
//! Why not restore SIGPIPE's default action instead, so that the kernel ends
//! the process as it ends C tools: the Rust runtime sets SIGPIPE to ignored
//! before `main`, and `corebus serve` is this same binary. A broker with the
//! default action would die whenever it wrote to a socket whose peer had gone
//! without passing `MSG_NOSIGNAL`, a property of every write path (glommio's
//! io_uring operations, the TLS stack, the webhook and metrics threads) that
//! nothing here checks. Restoring it in `main` for the client commands only
//! would spare the broker, but make this library's commands correct only
//! when a process-wide setting they cannot see was made by their caller,
//! and end them by a signal (see below). Checking our own writes keeps the
//! signal ignored everywhere and handles only standard output; a socket's
//! `BrokenPipe` still surfaces as the error it is.
//!
//! Why status 0 rather than 141 (128 + SIGPIPE, what a shell reports for a
//! C tool killed by the signal): the command did all that its reader asked
//! for, and under `set -o pipefail` a 141 would fail `corebus sub ... | head`
//! although nothing went wrong. ripgrep makes the same choice.

use std::fmt::Display;
use std::io::{self, Write};

/// Standard output's reader closed it: the command stops, and `main` exits 0
/// without a message.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
pub struct StdoutClosed;

/// Whether `err` ends in [`StdoutClosed`], anywhere in its chain of causes.
pub fn stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<StdoutClosed>())
}

/// The error to return for a failed write to standard output: [`StdoutClosed`]
/// for `BrokenPipe`, the I/O error itself (with context) otherwise, such as
/// a full disk behind a redirection, which is a failure to report.
pub fn write_error(err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(err).context("writing to standard output")
    }
}

/// Writes `text` to standard output and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(write_error)
}

/// Writes `line` and a newline to standard output and flushes it.
pub fn line(line: impl Display) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(write_error)
}

/// Writes `line` and a newline to standard error, ignoring a failure: a
/// diagnostic nobody can read is no reason to stop (or to panic, as
/// `eprintln!` would), and there is nowhere left to report it.
pub fn note(line: impl Display) {
    let _ = writeln!(io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_pipe_is_a_closed_stdout() {
        let closed = write_error(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(stdout_closed(&closed));
        assert!(stdout_closed(&closed.context("printing the webhooks")));
        let full = write_error(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(!stdout_closed(&full));
        assert!(format!("{full:#}").starts_with("writing to standard output: "));
    }
}

/// `err` and its causes on one line, each cause once: many error types
/// (the standard library's, and ours that wrap one) print their cause in
/// their own message too, which `{:#}` would repeat ("Address already in
/// use: Address already in use").
pub fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod one_line_tests {
    use super::one_line;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let said = io.to_string();
        let err = anyhow::Error::new(io)
            .context(format!("cannot listen on 127.0.0.1:7400: {said}"))
            .context("starting the broker");
        assert_eq!(
            one_line(&err),
            format!("starting the broker: cannot listen on 127.0.0.1:7400: {said}")
        );
        let plain = anyhow::anyhow!("root").context("outer");
        assert_eq!(one_line(&plain), "outer: root");
    }
}
