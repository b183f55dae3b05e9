//! The `[[webhooks]]` tables of the configuration file.

use std::path::Path;

use anyhow::{anyhow, bail, Context};

use super::hook::{check_id, check_secret, Hook, Secrets, Source};
use super::url::Destination;
use crate::permissions::topic_pattern;

/// Reads the `[[webhooks]]` tables of a configuration file.
pub fn from_table(path: &Path, table: &toml::Table) -> anyhow::Result<Vec<Hook>> {
    let file = path.display();
    let entries = match table.get("webhooks") {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(entries)) => entries,
        Some(other) => bail!(
            "{file}: key `webhooks`: expected [[webhooks]] tables, found {}",
            other.type_str()
        ),
    };
    let mut hooks: Vec<Hook> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let hook = parse_config_hook(path, entry)
            .with_context(|| format!("{file}: key `webhooks[{index}]`"))?;
        if hooks.iter().any(|other| other.id == hook.id) {
            bail!(
                "{file}: key `webhooks`: two webhooks have the id {:?}",
                hook.id
            );
        }
        hooks.push(hook);
    }
    Ok(hooks)
}

const CONFIG_FIELDS: [&str; 9] = [
    "id",
    "url",
    "namespace",
    "topic",
    "prefix",
    "secret",
    "secret_file",
    "secret_previous",
    "secret_previous_file",
];

fn parse_config_hook(path: &Path, entry: &toml::Value) -> anyhow::Result<Hook> {
    let Some(table) = entry.as_table() else {
        bail!("expected a table, found {}", entry.type_str());
    };
    if let Some(unknown) = table.keys().find(|k| !CONFIG_FIELDS.contains(&k.as_str())) {
        bail!(
            "unknown field `{unknown}` (known: {})",
            CONFIG_FIELDS.join(", ")
        );
    }
    let text = |field: &str| -> anyhow::Result<Option<String>> {
        match table.get(field) {
            None => Ok(None),
            Some(toml::Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => bail!("`{field}` must be a string, found {}", other.type_str()),
        }
    };
    let required = |field: &str| -> anyhow::Result<String> {
        text(field)?.ok_or_else(|| anyhow!("`{field}` is missing"))
    };
    let id = required("id")?;
    check_id(&id).map_err(|e| anyhow!(e))?;
    let destination = Destination::parse(&required("url")?).map_err(|e| anyhow!("url: {e}"))?;
    let namespace = required("namespace")?;
    corebus_net::validate_namespace(namespace.as_bytes())
        .map_err(|err| anyhow!("namespace: {err}"))?;
    let prefix = match table.get("prefix") {
        None => false,
        Some(toml::Value::Boolean(prefix)) => *prefix,
        Some(other) => bail!("`prefix` must be true or false, found {}", other.type_str()),
    };
    let topic =
        topic_pattern(text("topic")?.unwrap_or_default(), prefix).map_err(|e| anyhow!(e))?;
    let secret = |inline: &str, file: &str| -> anyhow::Result<Option<String>> {
        let value = match (text(inline)?, text(file)?) {
            (Some(_), Some(_)) => bail!("give `{inline}` or `{file}`, not both"),
            (Some(secret), None) => Some(secret),
            (None, Some(name)) => {
                let name = path
                    .parent()
                    .map_or_else(|| name.clone().into(), |dir| dir.join(&name));
                let read = std::fs::read_to_string(&name)
                    .with_context(|| format!("`{file}`: cannot read {}", name.display()))?;
                Some(read.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, None) => None,
        };
        if let Some(secret) = &value {
            check_secret(secret).map_err(|e| anyhow!("`{inline}`: {e}"))?;
        }
        Ok(value)
    };
    let current = secret("secret", "secret_file")?
        .ok_or_else(|| anyhow!("`secret` or `secret_file` is required"))?;
    let previous = secret("secret_previous", "secret_previous_file")?.map(|p| (p, u64::MAX));
    let secrets = Secrets { current, previous };
    Ok(Hook::new(
        id,
        destination,
        namespace,
        topic,
        Source::Config,
        secrets,
    ))
}
