//! `corebus webhook add|list|remove|rotate`, over the protocol with the
//! client crate.

use std::io::Read;

use anyhow::{bail, Context};
use corebus_client::{Webhook, WebhookMatch, WebhookSpec};

use crate::cli::WebhookCommand;
use crate::pubsub::connect;

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
            print_with_secret(&hook);
        }
        WebhookCommand::List { json, server } => {
            let client = connect(&server, "corebus-webhook").await?;
            for hook in client.list_webhooks().await? {
                if json {
                    println!("{}", to_json(&hook));
                } else {
                    println!("{}", describe(&hook));
                }
            }
        }
        WebhookCommand::Remove { id, server } => {
            let client = connect(&server, "corebus-webhook").await?;
            let removed = client.remove_webhook(&id).await?;
            println!("removed {}", describe(&removed));
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
            print_with_secret(&hook);
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

fn print_with_secret(hook: &Webhook) {
    println!("{}", describe(hook));
    if let Some(secret) = &hook.secret {
        println!("secret {secret}");
    }
    if let Some(until) = hook.previous_secret_expires_ms {
        println!("previous secret signs until {until} (Unix ms)");
    }
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

fn to_json(hook: &Webhook) -> serde_json::Value {
    serde_json::json!({
        "id": hook.id,
        "url": hook.url,
        "namespace": hook.namespace,
        "topic": hook.topic,
        "match": hook.match_kind.as_str(),
        "source": hook.source.as_str(),
        "previous_secret_expires_ms": hook.previous_secret_expires_ms,
    })
}
