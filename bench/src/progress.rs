//! A progress line on stderr while a run goes: rewritten in place on a
//! terminal, one line every few seconds otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::options::Plan;
use crate::report::human;

/// Runs shorter than this get no progress line.
const MIN_DURATION: Duration = Duration::from_secs(2);

/// The running progress task; [`Progress::stop`] ends it.
#[derive(Debug)]
pub struct Progress {
    task: Option<JoinHandle<()>>,
    terminal: bool,
}

impl Progress {
    /// Starts printing for `plan`; `counts` returns (published, delivered)
    /// so far.
    pub fn start<F>(plan: &Plan, counts: F) -> Progress
    where
        F: Fn() -> (u64, u64) + Send + 'static,
    {
        let terminal = std::io::stderr().is_terminal();
        if plan.duration < MIN_DURATION {
            return Progress {
                task: None,
                terminal,
            };
        }
        let label = format!("{} {}", plan.target.name(), plan.scenario.name());
        let every = if terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last_delivered = 0;
            let mut ticks = tokio::time::interval_at(started + every, every);
            loop {
                ticks.tick().await;
                let (published, delivered) = counts();
                let rate = (delivered - last_delivered.min(delivered)) as f64 / every.as_secs_f64();
                last_delivered = delivered;
                let line = format!(
                    "[{label}] {:>4.0}s  published {:>10}  delivered {:>10}  {:>8} msg/s",
                    started.elapsed().as_secs_f64(),
                    published,
                    delivered,
                    human(rate)
                );
                let mut stderr = std::io::stderr().lock();
                // Progress is best effort: a closed stderr must not end the run.
                let _ = if terminal {
                    write!(stderr, "\r{line}\x1b[K")
                } else {
                    writeln!(stderr, "{line}")
                };
                let _ = stderr.flush();
            }
        });
        Progress {
            task: Some(task),
            terminal,
        }
    }

    /// Stops printing (and ends the in-place line).
    pub fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
            if self.terminal {
                eprintln!();
            }
        }
    }
}
