//! The `corebus` command.

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use corebus::cli::{Cli, Command, ConfigCommand};
use corebus::stdio;

fn main() -> ExitCode {
    // Parsed in two steps because `serve` and `doctor` need the matches too:
    // they tell a flag or environment value from a default.
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return clap_exit(err),
    };
    let result = match cli.command {
        Command::Serve(command) => corebus::serve::main(command, subcommand(&matches)),
        Command::Pub(args) => run_client(corebus::pubsub::publish(args)),
        Command::Sub(args) => run_client(corebus::pubsub::subscribe(args)),
        Command::Config(ConfigCommand::Check { file }) => corebus::config::check_file(&file),
        Command::Config(ConfigCommand::Default) => {
            stdio::print(&corebus::config_text::default_file())
        }
        Command::Doctor(command) => corebus::doctor::main(command, subcommand(&matches)),
        Command::Key(command) => corebus::auth_cmd::key(command),
        Command::Token(command) => corebus::auth_cmd::token(command),
        Command::Webhook(command) => run_client(corebus::webhook_cmd::main(command)),
        Command::Cluster(command) => run_client(corebus::cluster::main(command)),
        Command::Completions { shell } => stdio::print(&corebus::cli::completions(shell)),
        Command::Man {
            out_dir: Some(dir), ..
        } => corebus::cli::write_man_pages(&dir).and_then(|files| {
            files
                .iter()
                .try_for_each(|file| stdio::line(file.display()))
        }),
        Command::Man { subcommand, .. } => {
            corebus::cli::man_page(subcommand.as_deref()).and_then(|page| stdio::print(&page))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout has gone (`| head`): a quiet success, the
        // choice explained in `corebus::stdio`.
        Err(err) if stdio::stdout_closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line.
            stdio::note(format_args!("corebus: error: {}", stdio::one_line(&err)));
            ExitCode::FAILURE
        }
    }
}

fn subcommand(matches: &ArgMatches) -> &ArgMatches {
    matches
        .subcommand()
        .map(|(_, sub)| sub)
        .expect("clap requires a subcommand before Cli parses")
}

fn clap_exit(err: clap::Error) -> ExitCode {
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
    // One line, not clap's usage block: its first line, the arguments it
    // lists under it, and its suggestion.
    let text = err.to_string();
    let first = one_line(&text);
    let first = first.as_str();
    match env_origin(&err) {
        Some(var) => stdio::note(format_args!(
            "corebus: error: {first} (from the environment variable {var})"
        )),
        None => stdio::note(format_args!("corebus: error: {first} (see corebus --help)")),
    }
    ExitCode::from(2)
}

/// clap's message on one line: the first line, then what it lists on the
/// indented lines below it (`<NS>, <TOPIC>`), then its tip (`a similar
/// subcommand exists: 'sub'`); the usage block is left out.
fn one_line(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut line = first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim_end()
        .to_string();
    let mut listed = Vec::new();
    for next in lines {
        if let Some(tip) = next.trim_start().strip_prefix("tip: ") {
            line.push_str(&format!("; {tip}"));
        } else if next.starts_with("  ") && !next.trim().is_empty() {
            listed.push(next.trim());
        } else if next.starts_with("Usage:") {
            break;
        }
    }
    if !listed.is_empty() {
        line.push(' ');
        line.push_str(&listed.join(", "));
    }
    line
}

/// The environment variable a bad value came from, if it did: clap's message
/// names only the flag, which the operator may never have typed.
fn env_origin(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(arg) = err.get(ContextKind::InvalidArg)? else {
        return None;
    };
    // "--shards <SHARDS>" → "shards"
    let long = arg.strip_prefix("--")?.split_whitespace().next()?;
    let on_command_line = std::env::args_os().any(|word| {
        let word = word.to_string_lossy();
        word.strip_prefix("--")
            .is_some_and(|rest| rest == long || rest.starts_with(&format!("{long}=")))
    });
    if on_command_line {
        return None;
    }
    let command = corebus::config::settings_command();
    let var = command
        .get_arguments()
        .find(|candidate| candidate.get_long() == Some(long))?
        .get_env()?;
    std::env::var_os(var).map(|_| var.to_string_lossy().into_owned())
}

fn run_client(task: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(task)
}
