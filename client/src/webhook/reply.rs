//! Reading a webhook command's result: strict about the fields this client
//! needs, tolerant of any others.

use serde_json::Value;

use super::{Webhook, WebhookDelivery, WebhookDisabled, WebhookDrop, WebhookMatch, WebhookSource};
use crate::command::parse_root;

/// Parses a result `{"<key>": W}`; `with_secret` requires W's secret.
pub(super) fn parse_one(result: &str, key: &str, with_secret: bool) -> Result<Webhook, String> {
    let root = parse_root(result)?;
    let value = root
        .get(key)
        .ok_or_else(|| format!("field `{key}` is missing"))?;
    let webhook = parse_webhook(value, key)?;
    if with_secret && webhook.secret.is_none() {
        return Err(format!("field `{key}.secret` is missing"));
    }
    Ok(webhook)
}

/// Parses a result `{"webhooks": [W, ...]}`.
pub(super) fn parse_list(result: &str) -> Result<Vec<Webhook>, String> {
    let root = parse_root(result)?;
    let list = root
        .get("webhooks")
        .ok_or("field `webhooks` is missing")?
        .as_array()
        .ok_or("field `webhooks` is not an array")?;
    list.iter()
        .enumerate()
        .map(|(index, value)| parse_webhook(value, &format!("webhooks[{index}]")))
        .collect()
}

/// Parses one webhook object found at `path`. Error texts name fields and
/// quote only the values of `match` and `source`.
fn parse_webhook(value: &Value, path: &str) -> Result<Webhook, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("field `{path}` is not an object"))?;
    let text = |key: &str| -> Result<Option<&str>, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(format!("field `{path}.{key}` is not a string")),
        }
    };
    let required = |key: &str| -> Result<String, String> {
        text(key)?
            .map(str::to_owned)
            .ok_or_else(|| format!("field `{path}.{key}` is missing"))
    };
    let match_text = required("match")?;
    let match_kind = WebhookMatch::parse(&match_text).ok_or_else(|| {
        format!("field `{path}.match` is {match_text:?}, not \"exact\" or \"prefix\"")
    })?;
    let source_text = required("source")?;
    let source = WebhookSource::parse(&source_text).ok_or_else(|| {
        format!("field `{path}.source` is {source_text:?}, not \"config\" or \"runtime\"")
    })?;
    let previous_secret_expires_ms = match object.get("previous_secret_expires_ms") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            format!("field `{path}.previous_secret_expires_ms` is not an unsigned integer")
        })?),
    };
    let delivery = match object.get("delivery") {
        None | Some(Value::Null) => None,
        Some(value) => {
            Some(parse_delivery(value).map_err(|e| format!("field `{path}.delivery`: {e}"))?)
        }
    };
    let disabled = match object.get("disabled") {
        None | Some(Value::Null) => None,
        Some(value) => {
            Some(parse_disabled(value).map_err(|e| format!("field `{path}.disabled`: {e}"))?)
        }
    };
    Ok(Webhook {
        id: required("id")?,
        url: required("url")?,
        namespace: required("namespace")?,
        topic: required("topic")?,
        match_kind,
        source,
        secret: text("secret")?.map(str::to_owned),
        previous_secret_expires_ms,
        delivery,
        disabled,
    })
}

/// Reads a webhook's `disabled` object.
fn parse_disabled(value: &Value) -> Result<WebhookDisabled, String> {
    let at_ms = value
        .get("at_ms")
        .and_then(Value::as_str)
        .and_then(|text| text.parse().ok())
        .ok_or("`at_ms` is not a decimal string")?;
    let detail = value
        .get("detail")
        .and_then(Value::as_str)
        .ok_or("`detail` is not a string")?
        .to_owned();
    Ok(WebhookDisabled { at_ms, detail })
}

/// Reads a webhook's `delivery` object.
fn parse_delivery(value: &Value) -> Result<WebhookDelivery, String> {
    let count = |key: &str| -> Result<u64, String> {
        value
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("`{key}` is not an unsigned integer"))
    };
    let dropped = match value.get("dropped") {
        Some(Value::Object(reasons)) => reasons
            .iter()
            .map(|(reason, count)| {
                count
                    .as_u64()
                    .map(|count| (reason.clone(), count))
                    .ok_or_else(|| format!("`dropped.{reason}` is not an unsigned integer"))
            })
            .collect::<Result<Vec<_>, String>>()?,
        _ => return Err("`dropped` is not an object".into()),
    };
    let last_drop = match value.get("last_drop") {
        None | Some(Value::Null) => None,
        Some(last) => {
            let text = |key: &str| {
                last.get(key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("`last_drop.{key}` is not a string"))
            };
            Some(WebhookDrop {
                at_ms: text("at_ms")?
                    .parse()
                    .map_err(|_| "`last_drop.at_ms` is not a decimal integer".to_string())?,
                reason: text("reason")?.to_owned(),
                detail: text("detail")?.to_owned(),
            })
        }
    };
    Ok(WebhookDelivery {
        delivered: count("delivered")?,
        requests: count("requests")?,
        retries: count("retries")?,
        queued: count("queued")?,
        dropped,
        last_drop,
    })
}
