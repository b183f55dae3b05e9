//! The `corebus` command.

use std::process::ExitCode;

use clap::Parser;
use corebus::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = err.print();
                    return ExitCode::SUCCESS;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = err.print();
                    return ExitCode::from(2);
                }
                _ => {}
            }
            // One line, not clap's usage block.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("corebus: error: {first} (see corebus --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => corebus::serve::run(args),
        Command::Pub(args) => run_client(corebus::pubsub::publish(args)),
        Command::Sub(args) => run_client(corebus::pubsub::subscribe(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("corebus: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_client(task: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(task)
}
