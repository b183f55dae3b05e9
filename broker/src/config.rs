//! The effective `serve` configuration: built-in defaults, then a TOML file,
//! then environment variables, then flags, each layer winning over the ones
//! before it.
//!
//! clap is the one source of setting names, defaults and value rules: a file
//! key is the flag's id (`max_frame` for `--max-frame`), its environment
//! variable is `COREBUS_` and the key in upper case, and a file value is
//! checked by the flag's own parser. So the file cannot accept what the flag
//! refuses, and `config default` (generated from the same definitions) cannot
//! drift from the code. A new setting is one field in `cli::ServeArgs`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, FromArgMatches};

use crate::auth_config::{self, AuthSettings};
use crate::cli::ServeArgs;
use crate::webhook::{self, Hook};
use std::sync::Arc;

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The command line (the flag's name).
    Flag(String),
    /// An environment variable (its name).
    Env(String),
    /// The configuration file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "--{flag}"),
            Origin::Env(var) => f.write_str(var),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One setting's effective value, as the text it was given in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The file key (also clap's id for the flag).
    pub key: String,
    /// The value's text.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// The settings `serve` runs with, and where each came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The typed settings.
    pub args: ServeArgs,
    /// Every setting in declaration order.
    pub settings: Vec<Setting>,
    /// API keys and token secrets from the file (the environment's secrets
    /// are layered on by [`AuthSettings::apply_env`]).
    pub auth: AuthSettings,
    /// The `[[webhooks]]` of the file.
    pub webhooks: Vec<Arc<Hook>>,
    /// Files the file names as holding secrets (`*_file` keys), and the
    /// file itself when it holds a secret inline.
    pub secret_files: Vec<PathBuf>,
}

impl Resolved {
    /// Refuses to start when a file holding a secret (named by the file or
    /// the environment, the TLS key, or the configuration file with a secret
    /// inline) may be read or written by its group or by others, naming the
    /// `chmod` that fixes it; `insecure_secret_file_permissions` overrides.
    pub fn check_secret_files(&self) -> anyhow::Result<()> {
        if self.args.insecure_secret_file_permissions {
            return Ok(());
        }
        let mut files = self.secret_files.clone();
        for var in [
            "COREBUS_TOKEN_SECRET_FILE",
            "COREBUS_TOKEN_SECRET_PREVIOUS_FILE",
        ] {
            if let Some(path) = std::env::var_os(var).filter(|value| !value.is_empty()) {
                files.push(PathBuf::from(path));
            }
        }
        files.extend(self.args.tls_key.0.clone());
        files.extend(self.args.cluster_secret_file.0.clone());
        for path in files {
            check_private(&path)?;
        }
        Ok(())
    }
}

/// Fails when `path` is accessible to its group or to others.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(()); // Unreadable or missing: reading it says so.
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} holds a secret and is accessible to its group or others (mode {mode:03o}): \
             run `chmod 600 {}` (or set insecure_secret_file_permissions = true to start anyway)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The files `table` (read from `path`) says hold secrets: the `*_file`
/// keys, a webhook's relative to the file's directory, and `path` itself
/// when a secret is written inline.
fn secret_files(path: &Path, table: &toml::Table) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut inline = false;
    let mut look = |table: &toml::Table, relative_to: Option<&Path>| {
        for key in [
            "token_secret",
            "token_secret_previous",
            "secret",
            "secret_previous",
        ] {
            inline |= table.contains_key(key);
            if let Some(toml::Value::String(file)) = table.get(&format!("{key}_file")) {
                files.push(match relative_to {
                    Some(dir) => dir.join(file),
                    None => PathBuf::from(file),
                });
            }
        }
    };
    look(table, None);
    if let Some(toml::Value::Array(hooks)) = table.get("webhooks") {
        for hook in hooks.iter().filter_map(toml::Value::as_table) {
            look(hook, Some(path.parent().unwrap_or(Path::new(""))));
        }
    }
    if inline {
        files.push(path.to_path_buf());
    }
    files
}

/// Two settings whose values contradict each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    /// The setting that breaks the rule.
    pub key: &'static str,
    /// The setting it is compared with.
    pub other: &'static str,
    /// The rule, e.g. "must be longer than".
    pub rule: &'static str,
    /// Why the rule exists (empty when obvious), starting with ", ".
    pub why: &'static str,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}{}", self.key, self.rule, self.other, self.why)
    }
}

/// Rules between settings that no single flag's parser can check.
pub fn check_consistency(args: &ServeArgs) -> Result<(), Conflict> {
    if args.heartbeat_timeout <= args.heartbeat_interval {
        return Err(Conflict {
            key: "heartbeat_timeout",
            other: "heartbeat_interval",
            rule: "must be longer than",
            why: "",
        });
    }
    if args.outbox_limit < args.max_frame as usize {
        return Err(Conflict {
            key: "outbox_limit",
            other: "max_frame",
            rule: "must be at least",
            why: ", or no maximum-size message could ever be queued behind another",
        });
    }
    Ok(())
}

/// The settings' clap definitions, as `serve` has them.
pub fn settings_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("corebus"))
}

/// The settings with their built-in defaults only (no environment, no
/// flags): the base `config check` validates a file over.
pub fn defaults() -> anyhow::Result<(ServeArgs, ArgMatches)> {
    let matches = settings_command()
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(["corebus"])?;
    let args = ServeArgs::from_arg_matches(&matches)?;
    Ok((args, matches))
}

/// The settings from the environment over the file (if any) over the
/// defaults, with no flags: what `token mint` signs with.
pub fn from_env_and_file(file: Option<&Path>) -> anyhow::Result<Resolved> {
    let matches = settings_command().try_get_matches_from(["corebus"])?;
    let mut resolved = resolve(file, &matches)?;
    resolved.auth.apply_env()?;
    Ok(resolved)
}

/// `corebus config check FILE`: the file over the built-in defaults.
pub fn check_file(path: &Path) -> anyhow::Result<()> {
    let (_, matches) = defaults()?;
    resolve(Some(path), &matches)?;
    crate::stdio::line(format_args!("{}: ok", path.display()))
}

/// Layers the file (if any) under what `matches` got from flags and the
/// environment. `matches` must come from a command that flattens
/// [`ServeArgs`].
pub fn resolve(file: Option<&Path>, matches: &ArgMatches) -> anyhow::Result<Resolved> {
    let table = match file {
        Some(path) => Some((path, read_table(path)?)),
        None => None,
    };
    let command = settings_command();
    if let Some((path, table)) = &table {
        if let Some(unknown) = table.keys().find(|key| {
            !setting_args(&command).any(|arg| arg.get_id() == key.as_str())
                && !auth_config::FILE_KEYS.contains(&key.as_str())
                && key.as_str() != "webhooks"
        }) {
            let known: Vec<&str> = setting_args(&command)
                .map(|arg| arg.get_id().as_str())
                .chain(auth_config::FILE_KEYS)
                .chain(["webhooks"])
                .collect();
            bail!(
                "{}: unknown key `{unknown}` (known keys: {})",
                path.display(),
                known.join(", ")
            );
        }
    }
    // Parses one file value as if it were the only flag given: no defaults,
    // no environment, nothing required.
    let file_command = command
        .clone()
        .mut_args(|arg| arg.default_value(None).env(None).required(false));
    let mut settings = Vec::new();
    for arg in setting_args(&command) {
        let key = arg.get_id().as_str();
        let flag = arg.get_long().unwrap_or(key);
        let from_file = match &table {
            Some((path, table)) => match table.get(key) {
                Some(value) => {
                    let (text, parsed) = parse_file_value(&file_command, path, arg, value)?;
                    Some((path.to_path_buf(), text, parsed))
                }
                None => None,
            },
            None => None,
        };
        // A repeatable flag given several times is one comma-separated
        // value, as the file and the environment write it.
        let raw = || {
            matches
                .get_raw(key)
                .map(|values| {
                    values
                        .map(|value| value.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        // A file value is checked even where a flag or the environment
        // overrides it: a broken file should not wait for the day the
        // override is removed.
        let (value, origin) = match (matches.value_source(key), from_file) {
            (Some(ValueSource::CommandLine), _) => (raw(), Origin::Flag(flag.to_string())),
            (Some(ValueSource::EnvVariable), _) => {
                let var = arg.get_env().map(|var| var.to_string_lossy().into_owned());
                (raw(), Origin::Env(var.unwrap_or_default()))
            }
            (_, Some((path, text, _))) => (text, Origin::File(path)),
            (_, None) => (raw(), Origin::Default),
        };
        settings.push(Setting {
            key: key.to_string(),
            value,
            origin,
        });
    }
    // The typed settings, parsed once from every value that is not a
    // default, wherever it came from. (Updating them with one file value at a
    // time reset flags given on the command line, such as a bare
    // `--insecure-no-auth`, whenever the file set a key declared after them.)
    let mut argv = vec![OsString::from("corebus")];
    for (arg, setting) in setting_args(&command).zip(&settings) {
        if !matches!(setting.origin, Origin::Default) {
            let flag = arg.get_long().unwrap_or(&setting.key);
            argv.push(OsString::from(format!("--{flag}={}", setting.value)));
        }
    }
    let final_command = command.clone().mut_args(|arg| arg.env(None));
    let args = final_command
        .try_get_matches_from(argv)
        .and_then(|matches| ServeArgs::from_arg_matches(&matches))
        .map_err(|err| anyhow!("the settings: {}", clap_reason(&err)))?;
    let auth = match &table {
        Some((path, table)) => AuthSettings::from_table(path, table)?,
        None => AuthSettings::default(),
    };
    let webhooks = match &table {
        Some((path, table)) => webhook::from_table(path, table)?
            .into_iter()
            .map(Arc::new)
            .collect(),
        None => Vec::new(),
    };
    for hook in &webhooks {
        let hook: &Arc<Hook> = hook;
        let checked = args
            .webhook_allow_hosts
            .check(&hook.destination)
            .and_then(|()| args.webhook_allow_networks.check_literal(&hook.destination));
        if let Err(reason) = checked {
            bail!("webhook {:?}: {reason}", hook.id);
        }
    }
    let resolved = Resolved {
        args,
        settings,
        auth,
        webhooks,
        secret_files: match &table {
            Some((path, table)) => secret_files(path, table),
            None => Vec::new(),
        },
    };
    if let Err(conflict) = check_consistency(&resolved.args) {
        bail!(
            "{} {} {}{}",
            resolved.describe(conflict.key),
            conflict.rule,
            resolved.describe(conflict.other),
            conflict.why
        );
    }
    Ok(resolved)
}

impl Resolved {
    /// The `[[webhooks]]` in their stored form (counters left out), by id:
    /// equal when the configured webhooks are.
    pub fn configured_webhooks(&self) -> Vec<serde_json::Value> {
        let mut webhooks: Vec<serde_json::Value> = self
            .webhooks
            .iter()
            .map(|hook| {
                let mut stored = hook.to_stored();
                // Counters are not configuration.
                if let Some(object) = stored.as_object_mut() {
                    object.remove("delivery");
                }
                stored
            })
            .collect();
        webhooks.sort_by_key(|hook| hook["id"].as_str().unwrap_or_default().to_string());
        webhooks
    }

    /// `key = value (origin)`, for error messages.
    fn describe(&self, key: &str) -> String {
        match self.settings.iter().find(|setting| setting.key == key) {
            Some(setting) => format!("{key} = {} ({})", setting.value, setting.origin),
            None => key.to_string(),
        }
    }
}

/// One file value, as its flag's text and parsed by its flag's parser alone.
fn parse_file_value(
    file_command: &clap::Command,
    path: &Path,
    arg: &Arg,
    value: &toml::Value,
) -> anyhow::Result<(String, ArgMatches)> {
    let key = arg.get_id().as_str();
    let flag = arg.get_long().unwrap_or(key);
    let text =
        file_text(value).map_err(|reason| anyhow!("{}: key `{key}`: {reason}", path.display()))?;
    let parsed = file_command
        .clone()
        .try_get_matches_from([
            OsString::from("corebus"),
            OsString::from(format!("--{flag}={text}")),
        ])
        .map_err(|err| {
            anyhow!(
                "{}: key `{key}`: invalid value {text:?}: {}",
                path.display(),
                clap_reason(&err)
            )
        })?;
    Ok((text, parsed))
}

/// The settings' arguments (clap's own `--help` is not one).
pub(crate) fn setting_args(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
}

/// Reads and parses a configuration file; errors name the file and line.
fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        anyhow!(
            "{}: cannot read the configuration file: {err}",
            path.display()
        )
    })?;
    text.parse::<toml::Table>().map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = err.message().trim().replace('\n', " ");
        match line {
            Some(line) => anyhow!("{}: line {line}: {message}", path.display()),
            None => anyhow!("{}: {message}", path.display()),
        }
    })
}

/// A file value as the text its flag would be given. Strings, integers and
/// booleans only: no setting is a float, a list or a table. The flag's
/// parser decides whether the text suits it.
fn file_text(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        other => Err(format!(
            "expected a string, an integer or a boolean, found {}",
            other.type_str()
        )),
    }
}

/// The reason inside a clap value error, without clap's framing (which
/// names the flag, not the file key).
fn clap_reason(err: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(err) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        return format!("expected one of: {}", valid.join(", "));
    }
    let text = err.to_string();
    let first = text.lines().next().unwrap_or("invalid value");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("corebus-config-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("writes the temporary file");
        path
    }

    /// Parses `argv` as flags (the environment is not read: tests share one
    /// process, so environment precedence is tested black-box in
    /// `tests/ops.rs`), then layers `file` under them.
    fn resolve_with(argv: &[&str], file: Option<&Path>) -> anyhow::Result<Resolved> {
        let matches = settings_command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(std::iter::once("corebus").chain(argv.iter().copied()))?;
        resolve(file, &matches)
    }

    #[test]
    fn a_flag_survives_file_keys_declared_after_it() {
        // The file sets keys before and after the flags' in declaration
        // order; flags and file values all hold.
        let path = temp_file(
            "after.toml",
            "max_frame = 2097152\ntoken_max_lifetime = \"2h\"\nwebhook_queue = 7\n",
        );
        let resolved = resolve_with(
            &["--insecure-no-auth", "--insecure-secret-file-permissions"],
            Some(&path),
        )
        .expect("valid");
        assert!(resolved.args.insecure_no_auth);
        assert!(resolved.args.insecure_secret_file_permissions);
        assert_eq!(resolved.args.max_frame, 2 << 20);
        assert_eq!(
            resolved.args.token_max_lifetime,
            std::time::Duration::from_secs(7200)
        );
        assert_eq!(resolved.args.webhook_queue, 7);
    }

    #[test]
    fn every_setting_has_a_matching_environment_variable() {
        let command = settings_command();
        for arg in setting_args(&command) {
            let id = arg.get_id().as_str();
            let env = arg.get_env().map(|var| var.to_string_lossy().into_owned());
            assert_eq!(env, Some(format!("COREBUS_{}", id.to_uppercase())), "{id}");
            assert_eq!(
                arg.get_long().map(|long| long.replace('-', "_")).as_deref(),
                Some(id)
            );
            assert!(!arg.get_default_values().is_empty(), "{id} has a default");
        }
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let path = temp_file(
            "layers.toml",
            "shards = 3\nmax_frame = 4096\nheartbeat_interval = \"2s\"\n",
        );
        let resolved = resolve_with(&["--shards", "2"], Some(&path)).expect("valid");
        assert_eq!(resolved.args.shards, crate::cli::Shards::Count(2));
        assert_eq!(resolved.args.max_frame, 4096);
        assert_eq!(
            resolved.args.heartbeat_interval,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(resolved.args.ring_messages, 1024);
        let origin = |key: &str| {
            resolved
                .settings
                .iter()
                .find(|setting| setting.key == key)
                .map(|setting| setting.origin.clone())
        };
        assert_eq!(origin("shards"), Some(Origin::Flag("shards".into())));
        assert_eq!(origin("max_frame"), Some(Origin::File(path.clone())));
        assert_eq!(origin("ring_messages"), Some(Origin::Default));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn file_errors_name_the_file_and_the_key() {
        let cases = [
            ("bogus = 1\n", "unknown key `bogus`"),
            (
                "shards = 1.5\n",
                "key `shards`: expected a string, an integer or a boolean, found float",
            ),
            ("shards = true\n", "key `shards`: invalid value \"true\""),
            ("insecure_no_auth = \"maybe\"\n", "key `insecure_no_auth`"),
            (
                "max_frame = \"big\"\n",
                "key `max_frame`: invalid value \"big\"",
            ),
            (
                "max_frame = 10\n",
                "key `max_frame`: invalid value \"10\": 10 is not in 64..=67108864",
            ),
            (
                "heartbeat_interval = \"5 parsecs\"\n",
                "key `heartbeat_interval`",
            ),
            (
                "slow_consumer = \"sometimes\"\n",
                "expected one of: drop, disconnect",
            ),
            ("listen = 7400\n", "key `listen`"),
            ("heartbeat_timeout = \"10s\"\n", "heartbeat_timeout = 10s"),
            ("listen = \n", "line 1"),
        ];
        for (text, expected) in cases {
            let path = temp_file("bad.toml", text);
            let err = resolve_with(&[], Some(&path)).expect_err(text);
            let message = format!("{err:#}");
            assert!(
                message.contains(&path.display().to_string()),
                "{text}: {message}"
            );
            assert!(message.contains(expected), "{text}: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }
}
