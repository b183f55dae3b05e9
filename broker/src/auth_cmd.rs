//! `corebus key generate|hash` and `corebus token mint`.

use std::io::BufRead;

use anyhow::{bail, Context};
use corebus_shards::auth::unix_now_ms;

use crate::auth;
use crate::cli::{KeyCommand, MintArgs, TokenCommand};
use crate::config;
use crate::stdio;

/// `corebus key ...`.
pub fn key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate => {
            let key = auth::generate_key().context("reading /dev/urandom")?;
            stdio::line(&key)?;
            stdio::line(format_args!("sha256 = \"{}\"", auth::key_hash_hex(&key)))?;
        }
        KeyCommand::Hash { key } => {
            let key = match key {
                Some(key) => key,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the key from stdin")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if key.is_empty() {
                bail!("no key given (as an argument or on stdin)");
            }
            stdio::line(auth::key_hash_hex(&key))?;
        }
    }
    Ok(())
}

/// `corebus token ...`.
pub fn token(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Mint(args) = command;
    stdio::line(mint(&args)?)
}

fn mint(args: &MintArgs) -> anyhow::Result<String> {
    let resolved = config::from_env_and_file(args.file.config.as_deref())?;
    if resolved.auth.token_secret.is_none() {
        bail!(
            "no token signing secret: set token_secret or token_secret_file in the \
             configuration file (--config), or COREBUS_TOKEN_SECRET / COREBUS_TOKEN_SECRET_FILE"
        );
    }
    let max = resolved.args.token_max_lifetime;
    if args.ttl > max {
        bail!(
            "--ttl {}s is longer than token_max_lifetime ({}s): the broker would refuse the token",
            args.ttl.as_secs(),
            max.as_secs()
        );
    }
    if args.ttl.as_secs() == 0 {
        bail!("--ttl must be at least 1s");
    }
    let rule = auth::make_rule(
        args.ns.clone(),
        args.topic.clone(),
        args.prefix,
        args.publish,
        args.subscribe,
    )
    .map_err(anyhow::Error::msg)?;
    let authenticator = resolved.auth.authenticator(max);
    Ok(authenticator.mint_token(
        args.sub.as_deref(),
        &[rule],
        args.ttl.as_secs(),
        unix_now_ms(),
    )?)
}
