//! `corebus webhook add|list|remove|rotate|enable`, over the protocol with the
//! client crate.

use std::io::Read;

use anyhow::{bail, Context};
use corebus_client::{Webhook, WebhookMatch, WebhookSpec};

use crate::cli::WebhookCommand;
use crate::pubsub::connect;
use crate::stdio;

/// Runs one webhook command against a broker.
pub async fn main(command: WebhookCommand) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Add(args) => {
            let client = connect(&args.server, "corebus-webhook").await?;
            let kind = if args.prefix {
                WebhookMatch::Prefix
            } else {
                WebhookMatch::Exact
            };
            let mut spec = WebhookSpec::new(args.url, args.ns, args.topic, kind);
            if args.secret_stdin {
                spec = spec.with_secret(secret_from_stdin()?);
            }
            let hook = client.add_webhook(&spec).await?;
            print_with_secret(&hook)?;
        }
        WebhookCommand::List { json, server } => {
            let client = connect(&server, "corebus-webhook").await?;
            for hook in client.list_webhooks().await? {
                if json {
                    stdio::line(to_json(&hook))?;
                } else {
                    stdio::line(format_args!(
                        "{}{}{}",
                        describe(&hook),
                        disabled_text(&hook),
                        delivery_text(&hook)
                    ))?;
                }
            }
        }
        WebhookCommand::Remove { id, server } => {
            let client = connect(&server, "corebus-webhook").await?;
            let removed = client.remove_webhook(&id).await?;
            stdio::line(format_args!("removed {}", describe(&removed)))?;
        }
        WebhookCommand::Enable { id, server } => {
            let client = connect(&server, "corebus-webhook").await?;
            let enabled = client.enable_webhook(&id).await?;
            stdio::line(format_args!("enabled {}", describe(&enabled)))?;
        }
        WebhookCommand::Rotate {
            id,
            secret_stdin,
            server,
        } => {
            let client = connect(&server, "corebus-webhook").await?;
            let secret = if secret_stdin {
                Some(secret_from_stdin()?)
            } else {
                None
            };
            let hook = client.rotate_webhook_secret(&id, secret.as_deref()).await?;
            print_with_secret(&hook)?;
        }
    }
    Ok(())
}

fn secret_from_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the secret from standard input")?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("standard input held no secret");
    }
    Ok(secret)
}

fn print_with_secret(hook: &Webhook) -> anyhow::Result<()> {
    stdio::line(describe(hook))?;
    if let Some(secret) = &hook.secret {
        stdio::line(format_args!("secret {secret}"))?;
    }
    if let Some(until) = hook.previous_secret_expires_ms {
        stdio::line(format_args!(
            "previous secret signs until {until} (Unix ms)"
        ))?;
    }
    Ok(())
}

/// `ID SOURCE NS TOPIC (exact|prefix) URL`.
fn describe(hook: &Webhook) -> String {
    format!(
        "{} {} {} {:?} ({}) {}",
        hook.id,
        hook.source.as_str(),
        hook.namespace,
        hook.topic,
        hook.match_kind.as_str(),
        hook.url
    )
}

/// ` DISABLED since <Unix ms> (DETAIL)` for a disabled webhook.
fn disabled_text(hook: &Webhook) -> String {
    hook.disabled.as_ref().map_or_else(String::new, |disabled| {
        format!(
            " DISABLED since {} ({}); corebus webhook enable {}",
            disabled.at_ms, disabled.detail, hook.id
        )
    })
}

/// `webhook list`'s delivery state: `; delivered N, dropped M (last:
/// REASON: DETAIL)`, or nothing from a broker that does not report it.
fn delivery_text(hook: &Webhook) -> String {
    let Some(delivery) = &hook.delivery else {
        return String::new();
    };
    let dropped: u64 = delivery.dropped.iter().map(|(_, count)| count).sum();
    let mut text = format!("; delivered {}, dropped {dropped}", delivery.delivered);
    if let Some(last) = &delivery.last_drop {
        text.push_str(&format!(" (last: {}: {})", last.reason, last.detail));
    }
    text
}

/// One `webhook list --json` line. `previous_secret_expires_ms` is a string,
/// like every 64-bit integer the CLI prints as JSON (see `crate::output`):
/// it is now plus `webhook_rotation_grace`, which is not bounded below 2^53.
fn to_json(hook: &Webhook) -> serde_json::Value {
    serde_json::json!({
        "id": hook.id,
        "url": hook.url,
        "namespace": hook.namespace,
        "topic": hook.topic,
        "match": hook.match_kind.as_str(),
        "source": hook.source.as_str(),
        "previous_secret_expires_ms": hook.previous_secret_expires_ms.map(|ms| ms.to_string()),
        "disabled": hook.disabled.as_ref().map(|disabled| serde_json::json!({
            "at_ms": disabled.at_ms.to_string(),
            "detail": disabled.detail,
        })),
        "delivery": hook.delivery.as_ref().map(|delivery| serde_json::json!({
            "delivered": delivery.delivered,
            "requests": delivery.requests,
            "retries": delivery.retries,
            "queued": delivery.queued,
            "dropped": delivery.dropped.iter().map(|(reason, count)| (reason.clone(), serde_json::Value::from(*count))).collect::<serde_json::Map<String, serde_json::Value>>(),
            "last_drop": delivery.last_drop.as_ref().map(|last| serde_json::json!({
                "at_ms": last.at_ms.to_string(),
                "reason": last.reason,
                "detail": last.detail,
            })),
        })),
    })
}

#[cfg(test)]
mod tests {
    use corebus_client::WebhookSource;

    use super::*;

    fn hook(previous_secret_expires_ms: Option<u64>) -> Webhook {
        Webhook {
            id: "wh-1".into(),
            url: "https://hooks.example.com/in".into(),
            namespace: "orders".into(),
            topic: "eu/".into(),
            match_kind: WebhookMatch::Prefix,
            source: WebhookSource::Runtime,
            secret: Some("whsec_not_listed".into()),
            previous_secret_expires_ms,
            delivery: None,
            disabled: None,
        }
    }

    #[test]
    fn list_json_has_no_secret_and_the_expiry_as_an_exact_string() {
        let far = (1u64 << 53) + 1;
        assert_eq!(
            to_json(&hook(Some(far))).to_string(),
            r#"{"delivery":null,"disabled":null,"id":"wh-1","match":"prefix","namespace":"orders","previous_secret_expires_ms":"9007199254740993","source":"runtime","topic":"eu/","url":"https://hooks.example.com/in"}"#
        );
        // A last drop's time is a 64-bit epoch value: a string as well.
        let mut reported = hook(None);
        reported.delivery = Some(corebus_client::WebhookDelivery {
            last_drop: Some(corebus_client::WebhookDrop {
                at_ms: far,
                reason: "rejected".into(),
                detail: "answered 400".into(),
            }),
            ..Default::default()
        });
        assert_eq!(
            to_json(&reported)["delivery"]["last_drop"]["at_ms"],
            "9007199254740993"
        );
        assert_eq!(
            to_json(&hook(None))["previous_secret_expires_ms"],
            serde_json::Value::Null
        );
    }
}
