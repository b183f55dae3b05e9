//! The broker in this process, wired as `corebus serve` wires it: for
//! tests, examples and programs that embed corebus.

use std::net::SocketAddr;
use std::sync::Arc;

use corebus_shards::Server;

use crate::cluster::ClusterCommands;
use crate::config::{self, settings_command};
use crate::parts::{authenticator, server_config, start_webhooks, tls_config};
use crate::webhook::Webhooks;

/// A running broker in this process: `serve`'s settings (flags only: the
/// environment and configuration files are not read), authentication,
/// TLS, webhooks (their commands, delivery and `webhooks.json` in
/// `--data-dir`) and the cluster commands of a node that runs alone.
/// Without the process-wide parts of `serve`: no logging set-up, signal
/// handling, metrics listener, cluster membership or reload.
///
/// ```
/// let broker = corebus::embedded::Embedded::start(&["--listen", "127.0.0.1:0", "--shards", "1"])
///     .expect("the broker starts");
/// assert_ne!(broker.local_addr().port(), 0);
/// broker.stop();
/// ```
#[derive(Debug)]
pub struct Embedded {
    server: Server,
    webhooks: Arc<Webhooks>,
}

impl Embedded {
    /// Starts a broker with `serve`'s `flags` (`--listen`, `--shards`,
    /// `--data-dir`, `--api-key-file`...) over the built-in defaults.
    pub fn start(flags: &[&str]) -> anyhow::Result<Embedded> {
        let matches = settings_command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(std::iter::once("corebus").chain(flags.iter().copied()))?;
        let resolved = config::resolve(None, &matches)?;
        let args = &resolved.args;
        let mut server = server_config(args)?;
        server.auth = authenticator(args, &resolved.auth)?;
        server.tls = tls_config(args)?.map(|(config, _)| config);
        let webhooks = start_webhooks(&resolved)?;
        server.webhooks = webhooks.clone();
        server.cluster = Arc::new(ClusterCommands::default());
        crate::doctor::preflight(args.shards)?;
        let server = corebus_shards::start(server)?;
        Ok(Embedded { server, webhooks })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The webhook registry and its delivery.
    pub fn webhooks(&self) -> &Arc<Webhooks> {
        &self.webhooks
    }

    /// Stops the shards at once (connections are dropped).
    pub fn stop(self) {
        self.server.stop();
    }
}
