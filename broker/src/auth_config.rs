//! The authentication part of the configuration file: `[[keys]]` tables and
//! the token signing secrets, which are structured or secret and so are not
//! flags (a secret on a command line is visible to every user in `ps`).
//!
//! Secrets come from the file (`token_secret`, or `token_secret_file` naming
//! a file that holds it) or from the environment (`COREBUS_TOKEN_SECRET`,
//! `COREBUS_TOKEN_SECRET_FILE`), the environment winning; the same holds for
//! `token_secret_previous`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use corebus_shards::auth::Rule;
use corebus_shards::Permissions;

use crate::auth::{self, ApiKey, BrokerAuth, Secret, TokenSecrets};

/// The file keys this module reads (every other key is a flag's).
pub const FILE_KEYS: [&str; 6] = [
    "keys",
    "anonymous",
    "token_secret",
    "token_secret_file",
    "token_secret_previous",
    "token_secret_previous_file",
];

const KEY_FIELDS: [&str; 4] = ["name", "sha256", "superuser", "permissions"];
const ANONYMOUS_FIELDS: [&str; 2] = ["permissions", "deny"];
const PERMISSION_FIELDS: [&str; 5] = ["ns", "topic", "prefix", "publish", "subscribe"];

/// A secret and where it came from (for `--print-config`, never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedSecret {
    /// The secret.
    pub secret: Secret,
    /// `token_secret in FILE`, `COREBUS_TOKEN_SECRET`, ...
    pub origin: String,
}

/// Keys and secrets as configured. `Debug` prints no secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// The `[[keys]]`.
    pub keys: Vec<ApiKey>,
    /// Signs and verifies tokens.
    pub token_secret: Option<SourcedSecret>,
    /// Verifies tokens only (rotation).
    pub token_secret_previous: Option<SourcedSecret>,
    /// The `[anonymous]` rule set: what a client without credentials may
    /// do; `None` when there is none.
    pub anonymous: Option<Arc<Permissions>>,
}

impl AuthSettings {
    /// Reads the keys and secrets of a parsed configuration file; errors name
    /// the file and the key.
    pub fn from_table(path: &Path, table: &toml::Table) -> anyhow::Result<AuthSettings> {
        let file = path.display();
        let keys = match table.get("keys") {
            None => Vec::new(),
            Some(toml::Value::Array(entries)) => entries
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    parse_key(entry)
                        .map_err(|reason| anyhow!("{file}: key `keys[{index}]`: {reason}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            Some(other) => bail!(
                "{file}: key `keys`: expected [[keys]] tables, found {}",
                other.type_str()
            ),
        };
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for key in &keys {
            if !names.insert(key.name.as_str()) {
                bail!("{file}: key `keys`: two keys are named {:?}", key.name);
            }
            if !hashes.insert(key.sha256) {
                bail!(
                    "{file}: key `keys`: {:?} has the same sha256 as another key",
                    key.name
                );
            }
        }
        let secret = |name: &str| -> anyhow::Result<Option<SourcedSecret>> {
            let file_name = format!("{name}_file");
            let (inline, from_file) = (table.get(name), table.get(&file_name));
            let text = |key: &str, value: &toml::Value| match value {
                toml::Value::String(text) => Ok(text.clone()),
                other => Err(anyhow!(
                    "{file}: key `{key}`: expected a string, found {}",
                    other.type_str()
                )),
            };
            match (inline, from_file) {
                (Some(_), Some(_)) => {
                    bail!("{file}: keys `{name}` and `{file_name}`: set one or the other")
                }
                (Some(value), None) => {
                    let secret = Secret::new(text(name, value)?.into_bytes())
                        .map_err(|reason| anyhow!("{file}: key `{name}`: {reason}"))?;
                    Ok(Some(SourcedSecret {
                        secret,
                        origin: format!("{name} in {file}"),
                    }))
                }
                (None, Some(value)) => {
                    let secret_path = text(&file_name, value)?;
                    let secret = read_secret_file(Path::new(&secret_path))
                        .map_err(|reason| anyhow!("{file}: key `{file_name}`: {reason}"))?;
                    Ok(Some(SourcedSecret {
                        secret,
                        origin: format!("{secret_path} ({file_name} in {file})"),
                    }))
                }
                (None, None) => Ok(None),
            }
        };
        let anonymous = match table.get("anonymous") {
            None => None,
            Some(value) => {
                Some(Arc::new(parse_anonymous(value).map_err(|reason| {
                    anyhow!("{file}: key `anonymous`: {reason}")
                })?))
            }
        };
        let settings = AuthSettings {
            keys,
            token_secret: secret("token_secret")?,
            token_secret_previous: secret("token_secret_previous")?,
            anonymous,
        };
        settings
            .check()
            .map_err(|reason| anyhow!("{file}: {reason}"))?;
        Ok(settings)
    }

    /// Lets `COREBUS_TOKEN_SECRET[_FILE]` and
    /// `COREBUS_TOKEN_SECRET_PREVIOUS[_FILE]` override the file.
    pub fn apply_env(&mut self) -> anyhow::Result<()> {
        self.apply_vars(|name| std::env::var_os(name).filter(|value| !value.is_empty()))
    }

    fn apply_vars(
        &mut self,
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> anyhow::Result<()> {
        for (slot, name) in [
            (&mut self.token_secret, "COREBUS_TOKEN_SECRET"),
            (
                &mut self.token_secret_previous,
                "COREBUS_TOKEN_SECRET_PREVIOUS",
            ),
        ] {
            let file_var = format!("{name}_FILE");
            match (var(name), var(&file_var)) {
                (Some(_), Some(_)) => bail!("{name} and {file_var} are both set: set one"),
                (Some(value), None) => {
                    let bytes = value
                        .into_string()
                        .map_err(|_| anyhow!("{name} is not valid UTF-8"))?
                        .into_bytes();
                    let secret =
                        Secret::new(bytes).map_err(|reason| anyhow!("{name}: {reason}"))?;
                    *slot = Some(SourcedSecret {
                        secret,
                        origin: name.to_string(),
                    });
                }
                (None, Some(path)) => {
                    let path = std::path::PathBuf::from(path);
                    let secret = read_secret_file(&path)
                        .map_err(|reason| anyhow!("{file_var}: {reason}"))?;
                    *slot = Some(SourcedSecret {
                        secret,
                        origin: format!("{} ({file_var})", path.display()),
                    });
                }
                (None, None) => {}
            }
        }
        self.check().map_err(|reason| anyhow!(reason))
    }

    fn check(&self) -> Result<(), String> {
        match (&self.token_secret, &self.token_secret_previous) {
            (None, Some(_)) => Err(
                "token_secret_previous is set without token_secret: during a rotation the new \
                 secret is token_secret and the old one token_secret_previous"
                    .into(),
            ),
            (Some(current), Some(previous)) if current.secret == previous.secret => {
                Err("token_secret_previous is the same as token_secret".into())
            }
            _ => Ok(()),
        }
    }

    /// True when nobody could authenticate and no anonymous rule set says
    /// what a client without credentials may do: the broker runs open or
    /// not at all.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.token_secret.is_none() && self.anonymous.is_none()
    }

    /// The authenticator these settings describe.
    pub fn authenticator(&self, token_max_lifetime: Duration) -> BrokerAuth {
        let secrets = self.token_secret.as_ref().map(|current| TokenSecrets {
            current: current.secret.clone(),
            previous: self
                .token_secret_previous
                .as_ref()
                .map(|previous| previous.secret.clone()),
        });
        BrokerAuth::new(self.keys.clone(), secrets, token_max_lifetime)
            .with_anonymous(self.anonymous.clone())
    }

    /// Comment lines for `serve --print-config`: names and origins only.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let names: Vec<&str> = self.keys.iter().map(|key| key.name.as_str()).collect();
        lines.push(format!(
            "# keys: {} configured ({})",
            names.len(),
            names.join(", ")
        ));
        for (name, secret) in [
            ("token_secret", &self.token_secret),
            ("token_secret_previous", &self.token_secret_previous),
        ] {
            match secret {
                Some(secret) => lines.push(format!("# {name}: set, from {}", secret.origin)),
                None => lines.push(format!("# {name}: not set")),
            }
        }
        lines
    }
}

/// A secret file's contents, without surrounding whitespace (an editor's
/// final newline is not part of the secret).
fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    Secret::new(text.trim().as_bytes().to_vec())
        .map_err(|reason| format!("{}: {reason}", path.display()))
}

/// The rules of the array `field` of `entry` (`permissions`, `deny`):
/// none when it is absent.
fn parse_rules(entry: &toml::Table, field: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    match entry.get(field) {
        None => {}
        Some(toml::Value::Array(permissions)) => {
            for (index, permission) in permissions.iter().enumerate() {
                let at = format!("{field}[{index}]");
                let toml::Value::Table(permission) = permission else {
                    return Err(format!("{at}: expected a table"));
                };
                refuse_unknown(permission, &PERMISSION_FIELDS, &at)?;
                let text = |name: &str| match permission.get(name) {
                    Some(toml::Value::String(text)) => Ok(text.clone()),
                    _ => Err(format!("{at}.{name} must be a string")),
                };
                let rule = auth::make_rule(
                    text("ns")?,
                    text("topic")?,
                    flag(permission, "prefix", &at)?,
                    flag(permission, "publish", &at)?,
                    flag(permission, "subscribe", &at)?,
                )
                .map_err(|reason| format!("{at}: {reason}"))?;
                rules.push(rule);
            }
        }
        Some(other) => {
            return Err(format!(
                "`{field}` must be an array of tables, found {}",
                other.type_str()
            ))
        }
    }
    Ok(rules)
}

/// The `[anonymous]` table: `permissions` (what a client without
/// credentials may do) and `deny` (what it may not, whatever
/// `permissions` say).
fn parse_anonymous(value: &toml::Value) -> Result<Permissions, String> {
    let toml::Value::Table(table) = value else {
        return Err(format!(
            "expected an [anonymous] table, found {}",
            value.type_str()
        ));
    };
    refuse_unknown(table, &ANONYMOUS_FIELDS, "")?;
    let rules = parse_rules(table, "permissions")?;
    if rules.is_empty() {
        return Err(
            "the anonymous rule set grants nothing: give it `permissions` (or remove it to \
             refuse clients without credentials)"
                .into(),
        );
    }
    Ok(Permissions {
        superuser: false,
        rules,
        denied: parse_rules(table, "deny")?,
    })
}

fn parse_key(entry: &toml::Value) -> Result<ApiKey, String> {
    let toml::Value::Table(entry) = entry else {
        return Err(format!("expected a table, found {}", entry.type_str()));
    };
    refuse_unknown(entry, &KEY_FIELDS, "")?;
    let name = match entry.get("name") {
        Some(toml::Value::String(name)) if !name.is_empty() => name.clone(),
        _ => return Err("`name` must be a non-empty string".into()),
    };
    let sha256 = match entry.get("sha256") {
        Some(toml::Value::String(hex)) => auth::parse_sha256_hex(hex)
            .map_err(|reason| format!("`sha256` of {name:?}: {reason}"))?,
        _ => {
            return Err(format!(
                "key {name:?} has no `sha256` (its SHA-256 in hex; `corebus key hash` prints it)"
            ))
        }
    };
    let superuser = flag(entry, "superuser", "")?;
    let rules = parse_rules(entry, "permissions")?;
    if !superuser && rules.is_empty() {
        return Err(format!(
            "key {name:?} grants nothing: give it permissions, or superuser = true"
        ));
    }
    Ok(ApiKey {
        name,
        sha256,
        permissions: Arc::new(Permissions {
            superuser,
            rules,
            denied: Vec::new(),
        }),
    })
}

fn refuse_unknown(table: &toml::Table, known: &[&str], at: &str) -> Result<(), String> {
    let Some(unknown) = table.keys().find(|key| !known.contains(&key.as_str())) else {
        return Ok(());
    };
    let place = if at.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    };
    let mut reason = format!(
        "{place}unknown field `{unknown}` (known: {})",
        known.join(", ")
    );
    if at.is_empty() {
        // TOML puts every line after a [[keys]] header into that key.
        reason.push_str("; top-level settings must come before the first [[keys]]");
    }
    Err(reason)
}

fn flag(table: &toml::Table, field: &str, at: &str) -> Result<bool, String> {
    match table.get(field) {
        None => Ok(false),
        Some(toml::Value::Boolean(value)) => Ok(*value),
        Some(other) => {
            let place = if at.is_empty() {
                field.to_string()
            } else {
                format!("{at}.{field}")
            };
            Err(format!(
                "{place} must be true or false, found {}",
                other.type_str()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> anyhow::Result<AuthSettings> {
        let table: toml::Table = text.parse().expect("TOML");
        AuthSettings::from_table(Path::new("corebus.toml"), &table)
    }

    #[test]
    fn keys_and_secrets_parse() {
        let settings = parse(&format!(
            "token_secret = \"{}\"\n\
             [[keys]]\nname = \"admin\"\nsha256 = \"{HASH}\"\nsuperuser = true\n\
             [[keys]]\nname = \"orders\"\nsha256 = \"{}\"\n\
             permissions = [ {{ ns = \"orders\", topic = \"eu/\", prefix = true, publish = true }} ]\n",
            "s".repeat(32),
            "0".repeat(64)
        ))
        .expect("valid");
        assert_eq!(settings.keys.len(), 2);
        assert!(settings.keys[0].permissions.superuser);
        assert_eq!(settings.keys[1].permissions.rules.len(), 1);
        assert!(!settings.is_open());
        assert!(settings.describe()[0].contains("admin, orders"));
        assert!(!format!("{settings:?}").contains("ssss"));
        assert!(parse("").expect("empty").is_open());
        let keys_only = parse(&format!(
            "[[keys]]\nname = \"admin\"\nsha256 = \"{HASH}\"\nsuperuser = true\n"
        ))
        .expect("valid");
        assert!(!keys_only.is_open(), "keys alone");
        let secret_only = parse(&format!("token_secret = \"{}\"", "s".repeat(32))).expect("valid");
        assert!(!secret_only.is_open(), "a token secret alone");
    }

    #[test]
    fn errors_name_the_key_and_the_reason() {
        let key = |body: &str| format!("[[keys]]\nname = \"k\"\nsha256 = \"{HASH}\"\n{body}");
        let cases = [
            (
                key("superuser = 1"),
                "keys[0]`: superuser must be true or false",
            ),
            (key(""), "grants nothing"),
            (
                key("token_secret = \"x\""),
                "come before the first [[keys]]",
            ),
            (
                key("permissions = [ { ns = \"a\", topic = \"b\" } ]"),
                "permissions[0]: the permission on a/b grants nothing",
            ),
            (
                key("permissions = [ { ns = \"a\", topic = \"b\", pub = true } ]"),
                "unknown field `pub`",
            ),
            (
                "[[keys]]\nname = \"k\"\nsha256 = \"abc\"\nsuperuser = true\n".into(),
                "expected 64 hex digits",
            ),
            (
                "[[keys]]\nname = \"k\"\nsuperuser = true\n".into(),
                "no `sha256`",
            ),
            (
                format!("{}{}", key("superuser = true\n"), key("superuser = true\n")),
                "two keys are named",
            ),
            ("keys = 3".into(), "expected [[keys]] tables"),
            ("token_secret = \"short\"".into(), "at least 32"),
            (
                format!(
                    "token_secret = \"{0}\"\ntoken_secret_file = \"/x\"",
                    "s".repeat(32)
                ),
                "set one or the other",
            ),
            (
                "token_secret_file = \"/nonexistent/secret\"".into(),
                "cannot read",
            ),
            (
                format!("token_secret_previous = \"{}\"", "s".repeat(32)),
                "without token_secret",
            ),
            (
                format!(
                    "token_secret = \"{0}\"\ntoken_secret_previous = \"{0}\"",
                    "s".repeat(32)
                ),
                "the same as token_secret",
            ),
            (
                format!("[[keys]]\nname = \"\"\nsha256 = \"{HASH}\"\nsuperuser = true\n"),
                "`name` must be a non-empty string",
            ),
        ];
        for (text, expected) in cases {
            let message = format!("{:#}", parse(&text).expect_err(&text));
            assert!(message.starts_with("corebus.toml: "), "{message}");
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("corebus-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, format!("{}\n", "f".repeat(40))).expect("writes");
        let mut settings = parse(&format!("token_secret = \"{}\"", "s".repeat(32))).expect("valid");
        let path = secret_file.clone();
        settings
            .apply_vars(|name| match name {
                "COREBUS_TOKEN_SECRET_FILE" => Some(path.clone().into_os_string()),
                "COREBUS_TOKEN_SECRET_PREVIOUS" => Some("p".repeat(32).into()),
                _ => None,
            })
            .expect("valid");
        let current = settings.token_secret.as_ref().expect("set");
        assert_eq!(
            current.secret,
            Secret::new("f".repeat(40).into_bytes()).expect("ok")
        );
        assert!(current.origin.contains("COREBUS_TOKEN_SECRET_FILE"));
        let both = settings.apply_vars(|name| match name {
            "COREBUS_TOKEN_SECRET" | "COREBUS_TOKEN_SECRET_FILE" => Some("x".into()),
            _ => None,
        });
        assert!(format!("{:#}", both.expect_err("both")).contains("set one"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_anonymous_rule_set_is_read_with_its_denials() {
        let file = Path::new("corebus.toml");
        let table: toml::Table = "[anonymous]\n\
             permissions = [ { ns = \"mqtt\", topic = \"\", prefix = true, publish = true, \
             subscribe = true } ]\n\
             deny = [ { ns = \"mqtt\", topic = \"test/nosubscribe\", subscribe = true } ]\n"
            .parse()
            .expect("toml");
        let settings = AuthSettings::from_table(file, &table).expect("valid");
        let anonymous = settings.anonymous.as_ref().expect("a rule set");
        assert_eq!((anonymous.rules.len(), anonymous.denied.len()), (1, 1));
        assert!(
            !settings.is_open(),
            "anonymous clients get the rules, not everything"
        );
        for (text, want) in [
            ("[anonymous]\n", "grants nothing"),
            ("[anonymous]\nallow = []\n", "unknown field `allow`"),
            ("anonymous = 1\n", "expected an [anonymous] table"),
            (
                "[anonymous]\npermissions = [ { ns = \"a\", topic = \"b\", publish = true } ]\n\
                 deny = [ { ns = \"a\", topic = \"b\" } ]\n",
                "deny[0]: the permission on a/b grants nothing",
            ),
        ] {
            let table: toml::Table = text.parse().expect("toml");
            let err = AuthSettings::from_table(file, &table).expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }
}
