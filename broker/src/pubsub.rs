//! `corebus pub` and `corebus sub`, on the client crate.

use std::collections::VecDeque;
use std::io::Write;

use anyhow::{bail, Context};
use corebus_client::{
    Client, ClientConfig, Compression, ConnectionEvent, ConnectionEvents, Credentials, Error,
    Event, ResumeFrom, ServerAddr, TlsOptions, TlsRoots,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cli::{PubArgs, Retry, ServerArg, SubArgs};
use crate::output::{json_discontinuity, json_message};
use crate::stdio;

/// The credentials to send: `--token`, `--key`, or COREBUS_CREDENTIALS.
/// The credentials to present: --token, --key or --key-file, else the
/// environment's COREBUS_TOKEN, COREBUS_KEY_FILE, COREBUS_CREDENTIALS (the
/// first set).
fn credentials(server: &ServerArg) -> anyhow::Result<Option<Credentials>> {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let from_file = |path: &std::path::Path| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        let key = text.lines().next().unwrap_or_default().trim();
        anyhow::ensure!(!key.is_empty(), "the key file {} is empty", path.display());
        Ok(key.to_string())
    };
    let secret = if let Some(secret) = server.token.clone().or_else(|| server.key.clone()) {
        Some(secret)
    } else if let Some(path) = &server.key_file {
        Some(from_file(path)?)
    } else if let Some(token) = env("COREBUS_TOKEN") {
        Some(token)
    } else if let Some(path) = env("COREBUS_KEY_FILE") {
        Some(from_file(std::path::Path::new(&path)).context("COREBUS_KEY_FILE")?)
    } else {
        env("COREBUS_CREDENTIALS")
    };
    Ok(secret.map(Credentials::new))
}

pub(crate) async fn connect(server: &ServerArg, name: &str) -> anyhow::Result<Client> {
    connect_with(server, name, ClientConfig::default()).await
}

/// [`connect`] with `base` for what the server arguments do not set.
async fn connect_with(
    server: &ServerArg,
    name: &str,
    base: ClientConfig,
) -> anyhow::Result<Client> {
    let names: Vec<&str> = server
        .server
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    // With several addresses the certificate is checked against the first
    // one's host (the nodes of a cluster share a name or a certificate).
    let server_name = names.first().and_then(|name| name.host());
    let tls = match (&server.ca, server.tls) {
        (Some(ca), _) => Some(TlsOptions {
            roots: TlsRoots::CaFile(ca.clone()),
            server_name,
        }),
        (None, true) => Some(TlsOptions {
            server_name,
            ..TlsOptions::default()
        }),
        (None, false) => None,
    };
    let config = ClientConfig {
        client_name: name.into(),
        credentials: credentials(server)?,
        tls,
        ..base
    };
    let addr = &server.server;
    let mut addrs = Vec::new();
    for name in &names {
        if !has_port(name) {
            bail!("--server {name}: expected HOST:PORT (the default port is 7400: {name}:7400)");
        }
        match tokio::net::lookup_host(*name).await {
            Ok(resolved) => addrs.extend(resolved),
            Err(err) => bail!("--server {name}: {err}"),
        }
    }
    if addrs.is_empty() {
        bail!("--server {addr:?} names no address");
    }
    match Client::connect_with(addrs.as_slice(), config).await {
        Ok(client) => Ok(client),
        // Only a failure to reach the broker suggests it is not running; a
        // refused handshake (bad credentials) speaks for itself.
        Err(err @ Error::Connect { .. }) => {
            Err(anyhow::Error::new(err).context(format!("is a broker running at {addr}?")))
        }
        Err(err) => Err(err.into()),
    }
}

/// Publishes one message or every stdin line; prints sequence numbers.
pub async fn publish(args: PubArgs) -> anyhow::Result<()> {
    if args.stdin && !args.raw && args.count > 1 {
        bail!("--count repeats a message, a --file or --stdin --raw, not each line of --stdin");
    }
    // The whole body first: a file that cannot be read publishes nothing.
    let body = match (&args.message, &args.file, args.raw) {
        (Some(message), ..) => Some(Body::Template(message.clone())),
        (None, Some(path), _) => {
            Some(Body::Bytes(std::fs::read(path).with_context(|| {
                format!("cannot read {}", path.display())
            })?))
        }
        (None, None, true) => {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut all)
                .await
                .context("reading stdin")?;
            Some(Body::Bytes(all))
        }
        (None, None, false) => None,
    };
    let compression = if args.compress {
        Compression::zstd()
    } else {
        Compression::Off
    };
    let config = ClientConfig {
        compression,
        ..ClientConfig::default()
    };
    let client = connect_with(&args.server, "corebus-cli-pub", config).await?;
    let mut out = Published::new(&args);
    let Some(body) = body else {
        return publish_lines(client, &args, out).await;
    };
    for n in 1..=args.count {
        out.publish(&client, body.payload(n, args.count)).await?;
    }
    out.drain().await?;
    client.close().await?;
    out.single_or_summary()
}

/// What `pub` publishes.
enum Body {
    /// The message argument: `{{n}}` becomes the message's number when
    /// there are several.
    Template(String),
    /// A file's or standard input's bytes, as they are.
    Bytes(Vec<u8>),
}

impl Body {
    fn payload(&self, n: u64, count: u64) -> Vec<u8> {
        match self {
            Body::Template(text) if count > 1 => text.replace("{{n}}", &n.to_string()).into_bytes(),
            Body::Template(text) => text.clone().into_bytes(),
            Body::Bytes(bytes) => bytes.clone(),
        }
    }
}

/// What `pub` prints: a JSON line per message with --json; otherwise the
/// sequence number of a single message, or a summary.
struct Published<'a> {
    args: &'a PubArgs,
    /// The headers of every message (`--header`, `--content-type`), if any.
    headers: Option<corebus_client::Headers>,
    /// Publishes sent and not yet acknowledged, oldest first.
    pending: VecDeque<corebus_client::PendingPublish>,
    count: u64,
    last_seq: Option<u64>,
}

/// Unacknowledged publishes `pub` lets pile up before it waits for the
/// oldest (the client bounds what is in flight on the wire).
const PIPELINED: usize = 1024;

impl<'a> Published<'a> {
    fn new(args: &'a PubArgs) -> Published<'a> {
        let headers = corebus_client::Headers {
            user: args.headers.clone(),
            content_type: args.content_type.clone(),
            ..corebus_client::Headers::default()
        };
        Published {
            args,
            headers: (!headers.is_empty()).then_some(headers),
            pending: VecDeque::new(),
            count: 0,
            last_seq: None,
        }
    }

    /// Sends one message: frames go out in call order, acks are awaited
    /// later, in order.
    async fn publish(&mut self, client: &Client, payload: Vec<u8>) -> anyhow::Result<()> {
        let (namespace, topic) = (&self.args.namespace, &self.args.topic);
        let ack = match &self.headers {
            Some(headers) => {
                client
                    .start_publish_with_headers(namespace, topic, headers, payload)
                    .await?
            }
            None => client.start_publish(namespace, topic, payload).await?,
        };
        self.pending.push_back(ack);
        while self.pending.len() > PIPELINED {
            if let Some(ack) = self.pending.pop_front() {
                self.acked(ack.await?)?;
            }
        }
        Ok(())
    }

    /// Waits for every acknowledgement still due.
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(ack) = self.pending.pop_front() {
            self.acked(ack.await?)?;
        }
        Ok(())
    }

    fn acked(&mut self, seq: u64) -> anyhow::Result<()> {
        self.count += 1;
        self.last_seq = Some(seq);
        if self.args.json {
            let mut line = String::from("{\"ns\":");
            line.push_str(&serde_json::Value::from(self.args.namespace.as_str()).to_string());
            line.push_str(",\"topic\":");
            line.push_str(&serde_json::Value::from(self.args.topic.as_str()).to_string());
            line.push_str(",\"seq\":");
            crate::output::push_json_u64(&mut line, seq);
            line.push('}');
            stdio::line(line)?;
        }
        Ok(())
    }

    fn summary(&self) -> String {
        match self.last_seq {
            Some(seq) => format!("published {} messages, last seq {seq}", self.count),
            None => "published 0 messages".to_string(),
        }
    }

    /// One message: its sequence number; several: the summary.
    fn single_or_summary(&self) -> anyhow::Result<()> {
        match (self.args.json, self.count, self.last_seq) {
            (true, ..) => Ok(()),
            (false, 1, Some(seq)) => stdio::line(seq),
            _ => stdio::line(self.summary()),
        }
    }
}

/// `pub --stdin`: each line one message.
async fn publish_lines(
    client: Client,
    args: &PubArgs,
    mut out: Published<'_>,
) -> anyhow::Result<()> {
    // Lines are bytes: a payload need not be UTF-8.
    let mut lines = BufReader::new(tokio::io::stdin()).split(b'\n');
    let read_error = loop {
        let mut line = match lines.next_segment().await {
            Ok(Some(line)) => line,
            Ok(None) => break None,
            Err(err) => break Some(err),
        };
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        out.publish(&client, line).await?;
    };
    // What was read before a failure is published and counted, not lost.
    out.drain().await?;
    client.close().await?;
    if let Some(err) = read_error {
        bail!("reading stdin: {err} ({} before it failed)", out.summary());
    }
    match args.json {
        true => Ok(()),
        false => stdio::line(out.summary()),
    }
}

/// Prints messages of one topic until `--count` is reached or the
/// connection ends for good; discontinuities are reported, never skipped.
pub async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    let reconnect = match args.retry {
        Retry::Times(0) => ClientConfig {
            reconnect: false,
            ..ClientConfig::default()
        },
        Retry::Times(attempts) => ClientConfig {
            reconnect_max_attempts: Some(attempts),
            ..ClientConfig::default()
        },
        Retry::Forever => ClientConfig::default(),
    };
    let client = connect_with(&args.server, "corebus-cli-sub", reconnect).await?;
    tokio::spawn(report_reconnects(client.connection_events(), args.retry));
    let mut subscription = match args.from {
        Some(seq) => {
            client
                .subscribe_from(&args.namespace, &args.topic, ResumeFrom::Seq(seq))
                .await?
        }
        None => client.subscribe(&args.namespace, &args.topic).await?,
    };
    // On stderr, so stdout stays one line per message; scripts can wait for it.
    stdio::note(format_args!(
        "subscribed to {}/{} after seq {}",
        args.namespace,
        args.topic,
        subscription.start_after()
    ));
    let stdout = std::io::stdout();
    let mut received = 0u64;
    while let Some(item) = subscription.next_event().await {
        let mut out = stdout.lock();
        let item = match item {
            // One message that cannot be decompressed is reported, and the
            // stream goes on.
            Err(err @ Error::Decompress { .. }) => {
                stdio::note(format_args!("corebus: {err}"));
                continue;
            }
            item => item?,
        };
        match item {
            Event::Message(message) => {
                if args.json {
                    let line = json_message(
                        &args.namespace,
                        message.topic(),
                        message.seq,
                        &message.payload,
                        message.headers(),
                    );
                    writeln!(out, "{line}")
                } else {
                    let prefix = args.verbose.then(|| {
                        format!("[{}/{} #{}] ", args.namespace, message.topic(), message.seq)
                    });
                    out.write_all(prefix.unwrap_or_default().as_bytes())
                        .and_then(|()| out.write_all(&message.payload))
                        .and_then(|()| out.write_all(b"\n"))
                }
                .and_then(|()| out.flush())
                .map_err(stdio::write_error)?;
                received += 1;
            }
            Event::Discontinuity(gap) => {
                if args.json {
                    let line = json_discontinuity(
                        &args.namespace,
                        &args.topic,
                        gap.epoch,
                        gap.last_seq,
                        gap.next_seq,
                    );
                    writeln!(out, "{line}")
                        .and_then(|()| out.flush())
                        .map_err(stdio::write_error)?;
                } else {
                    stdio::note(format_args!("corebus: {}", missed(&gap)));
                }
            }
        }
        if args.count == Some(received) {
            drop(out);
            subscription.unsubscribe().await?;
            client.close().await?;
            return Ok(());
        }
    }
    bail!(
        "the subscription ended before {} messages",
        args.count.unwrap_or(received + 1)
    )
}

/// Says on stderr what happens to the connection: losses, failed attempts
/// (out of how many), reconnections and resumed subscriptions.
/// Discontinuities are the subscription's to report, and the end is the
/// command's error.
async fn report_reconnects(mut events: ConnectionEvents, retry: Retry) {
    while let Some(event) = events.next().await {
        match event {
            ConnectionEvent::Disconnected {
                reason,
                reconnecting: true,
            } => stdio::note(format_args!(
                "corebus: connection lost ({reason}); reconnecting{}",
                match retry {
                    Retry::Times(n) => format!(" (up to {n} attempts)"),
                    Retry::Forever => String::new(),
                }
            )),
            ConnectionEvent::ReconnectFailed { attempt, error } => {
                let of = match retry {
                    Retry::Times(n) => format!(" of {n}"),
                    Retry::Forever => String::new(),
                };
                stdio::note(format_args!(
                    "corebus: reconnection attempt {attempt}{of} failed: {error}"
                ))
            }
            // Without reconnection the loss ends the command, whose error says it.
            ConnectionEvent::Disconnected { .. }
            | ConnectionEvent::Discontinuity { .. }
            | ConnectionEvent::Ended { .. } => {}
            other => stdio::note(format_args!("corebus: {other}")),
        }
    }
}

/// A discontinuity in words: `missed messages 4–9 of epoch 1f…`, or, when
/// the topic's history restarted, where the new epoch starts.
fn missed(gap: &corebus_client::Discontinuity) -> String {
    match gap.lost() {
        Some(lost) if lost.start() == lost.end() => {
            format!("missed message {} of epoch {:x}", lost.start(), gap.epoch)
        }
        Some(lost) => format!(
            "missed messages {}–{} of epoch {:x}",
            lost.start(),
            lost.end(),
            gap.epoch
        ),
        None => format!(
            "the topic's history restarted after seq {}: epoch {:x} continues at seq {}",
            gap.last_seq, gap.epoch, gap.next_seq
        ),
    }
}

/// Whether `name` ends in `:PORT` (an IPv6 address in brackets: `[::1]:7400`).
fn has_port(name: &str) -> bool {
    name.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
    })
}

#[cfg(test)]
mod server_tests {
    use super::has_port;

    #[test]
    fn discontinuities_read_plainly() {
        use corebus_client::Discontinuity;
        let gap = |last_seq, next_seq| Discontinuity {
            epoch: 0x1f,
            last_seq,
            next_seq,
        };
        assert_eq!(
            super::missed(&gap(3, 10)),
            "missed messages 4–9 of epoch 1f"
        );
        assert_eq!(super::missed(&gap(3, 5)), "missed message 4 of epoch 1f");
        assert_eq!(
            super::missed(&gap(7, 1)),
            "the topic's history restarted after seq 7: epoch 1f continues at seq 1"
        );
    }

    #[test]
    fn a_server_names_its_port() {
        for with in ["127.0.0.1:7400", "broker.example:1", "[::1]:7400"] {
            assert!(has_port(with), "{with}");
        }
        for without in [
            "127.0.0.1",
            "broker.example",
            "::1",
            "[::1]",
            "host:",
            "host:x",
        ] {
            assert!(!has_port(without), "{without}");
        }
    }
}
