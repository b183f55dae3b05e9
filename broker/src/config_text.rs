//! Configuration as text: the commented default file (`corebus config
//! default`, deploy/corebus.toml) and the effective configuration
//! (`serve --print-config`). Built on the settings' definitions in
//! `config`, which never reads this module.

use std::fmt::Write as _;

use crate::config::{setting_args, settings_command, Resolved};

/// The default configuration file: every key with its default and what it
/// does, generated from the flags' definitions.
pub fn default_file() -> String {
    let mut out = String::from(
        "# corebus configuration file (TOML).\n\
         #\n\
         # Every key is also a flag of `corebus serve` (max_frame is --max-frame)\n\
         # and an environment variable (COREBUS_MAX_FRAME). A flag wins over the\n\
         # environment, the environment over this file, and this file over the\n\
         # built-in defaults, which are the values below. Durations are strings\n\
         # with a unit: \"250ms\", \"15s\", \"10m\", \"1h 30m\". Sizes are bytes,\n\
         # or strings with a unit: \"64KiB\", \"8MiB\", \"1GiB\". Check a file with\n\
         # `corebus config check FILE`; unknown keys and bad values are refused.\n",
    );
    let command = settings_command();
    for arg in setting_args(&command) {
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|help| help.to_string())
            .unwrap_or_default();
        // clap drops the final period of one-paragraph help; prose wants it.
        let help = if help.ends_with('.') {
            help
        } else {
            format!("{help}.")
        };
        for line in wrap(&help, 76) {
            let _ = writeln!(out, "# {line}");
        }
        for value in arg.get_possible_values() {
            if let Some(help) = value.get_help() {
                let _ = writeln!(out, "#   {}: {help}", value.get_name());
            }
        }
        let env = arg
            .get_env()
            .map(|var| var.to_string_lossy().into_owned())
            .unwrap_or_default();
        let flag = arg.get_long().unwrap_or_default();
        let _ = writeln!(out, "# (--{flag}, {env})");
        let default = arg
            .get_default_values()
            .first()
            .map(|value| value.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(out, "{} = {}", arg.get_id(), toml_value(&default));
    }
    out.push_str(AUTH_SECTION);
    out
}

/// The end of the default file: the authentication keys, which are not
/// flags (see `crate::auth_config`), commented out.
const AUTH_SECTION: &str = "
# Authentication (see docs/security.md). With no [[keys]] and no
# token_secret the broker runs without authentication, and then only on a
# loopback address unless insecure_no_auth is true. With either, every
# connection must present an API key or a token in its handshake.
#
# Token signing secret (HS256; at least 32 bytes): token_secret, or
# token_secret_file naming a file that holds it (environment:
# COREBUS_TOKEN_SECRET or COREBUS_TOKEN_SECRET_FILE, which win over this
# file). During a rotation the old secret moves to token_secret_previous (or
# token_secret_previous_file), accepted for verification only; remove it
# once token_max_lifetime has passed.
# token_secret_file = \"/etc/corebus/token-secret\"
# token_secret_previous_file = \"/etc/corebus/token-secret.old\"
#
# API keys, by the SHA-256 of the key text only (`corebus key generate`
# prints a new key and its hash). A super-user key may do everything and
# mint tokens; other keys get permissions: a namespace, a topic (exact, or a
# prefix with prefix = true; the empty prefix is every topic), and publish
# and/or subscribe. [[keys]] tables must come after every other setting.
# [[keys]]
# name = \"orders-service\"
# sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"
# superuser = false
# permissions = [
#   { ns = \"orders\", topic = \"eu/\", prefix = true, publish = true, subscribe = false },
# ]
#
# Clients without credentials are refused, unless an [anonymous] table says
# what they may do: permissions as a key's, and deny rules that take away
# what they cover (docs/security.md). It must come after every other
# setting.
# [anonymous]
# permissions = [
#   { ns = \"mqtt\", topic = \"public/\", prefix = true, publish = true, subscribe = true },
# ]
# deny = [ { ns = \"mqtt\", topic = \"public/secret\", subscribe = true } ]
#
# Webhooks (see docs/webhooks.md): each message published to the namespace and
# topic (exact, or a prefix with prefix = true) is POSTed as JSON to url,
# signed with secret (or secret_file; at least 24 characters). During a
# rotation, keep the old one as secret_previous (or secret_previous_file):
# both sign until it is removed. Webhooks added at run time
# (`corebus webhook add`) are kept in data_dir instead. [[webhooks]] tables
# must come after every other setting.
# [[webhooks]]
# id = \"orders-to-billing\"
# url = \"https://billing.example.com/corebus\"
# namespace = \"orders\"
# topic = \"eu/\"
# prefix = true
# secret_file = \"/etc/corebus/webhook-billing.secret\"
";

/// The effective configuration as a configuration file, each value
/// followed by where it came from (`serve --print-config`).
pub fn effective_file(resolved: &Resolved) -> String {
    let mut out = String::from("# effective corebus configuration (value, then its origin)\n");
    for setting in &resolved.settings {
        let _ = writeln!(
            out,
            "{} = {}  # {}",
            setting.key,
            toml_value(&setting.value),
            setting.origin
        );
    }
    for line in resolved.auth.describe() {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// `text` as a TOML value: integers and booleans bare, everything else a
/// string, quoted and escaped by the `toml` crate.
fn toml_value(text: &str) -> String {
    if text.parse::<i64>().is_ok() || text == "true" || text == "false" {
        return text.to_string();
    }
    toml::Value::String(text.to_string()).to_string()
}

/// Greedy word wrap.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{defaults, resolve, Origin};

    #[test]
    fn toml_values_quote_what_is_not_an_integer_and_read_back_as_written() {
        assert_eq!(toml_value("1024"), "1024");
        assert_eq!(toml_value("false"), "false");
        assert_eq!(toml_value("15s"), "\"15s\"");
        for text in [
            "15s",
            "a\"b\\c",
            "it's",
            "tab\there",
            "two\nlines",
            "\u{7}bell",
        ] {
            let table: toml::Table = format!("key = {}", toml_value(text))
                .parse()
                .unwrap_or_else(|err| panic!("{text:?}: {err}"));
            assert_eq!(table["key"].as_str(), Some(text));
        }
    }

    #[test]
    fn the_default_file_parses_to_exactly_the_defaults() {
        let path = std::env::temp_dir().join(format!(
            "corebus-config-text-{}-default.toml",
            std::process::id()
        ));
        std::fs::write(&path, default_file()).expect("writes the temporary file");
        let (defaults, matches) = defaults().expect("defaults parse");
        let resolved = resolve(Some(&path), &matches).expect("default file is valid");
        assert_eq!(resolved.args, defaults);
        let command = settings_command();
        assert_eq!(resolved.settings.len(), setting_args(&command).count());
        for setting in &resolved.settings {
            assert_eq!(
                setting.origin,
                Origin::File(path.clone()),
                "{} is in the file",
                setting.key
            );
        }
        let _ = std::fs::remove_file(path);
    }
}
