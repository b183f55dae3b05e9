//! [`ClientBuilder`]: where to connect, as whom, and how, in one chain.

use std::net::SocketAddr;

use crate::{Client, ClientConfig, Credentials, Error, TlsOptions};

/// The broker's default address, used when no [`ClientBuilder::server`] is
/// given.
///
/// ```
/// let builder = corebus_client::Client::builder();
/// assert_eq!(builder.servers(), [corebus_client::DEFAULT_SERVER]);
/// assert_eq!(corebus_client::DEFAULT_SERVER, "127.0.0.1:7400");
/// ```
pub const DEFAULT_SERVER: &str = "127.0.0.1:7400";

/// Builds a [`Client`]: start from [`Client::builder`], name the servers
/// and credentials, then [`connect`](ClientBuilder::connect).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// # let addr = broker.local_addr().to_string();
/// use corebus_client::Client;
/// let client = Client::builder()
///     .server(addr.as_str())
///     .name("orders-service")
///     .connect()
///     .await?;
/// assert_eq!(client.publish("shop", "orders", "one").await?, 1);
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    servers: Vec<String>,
    config: ClientConfig,
}

impl Client {
    /// A [`ClientBuilder`] with the default [`ClientConfig`] and no server
    /// yet ([`DEFAULT_SERVER`] if none is given).
    ///
    /// ```
    /// let builder = corebus_client::Client::builder();
    /// assert_eq!(builder.servers(), ["127.0.0.1:7400"]);
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

impl ClientBuilder {
    /// Adds a broker address (`host:port`); with several (the nodes of a
    /// cluster), each connection and each reconnection takes the first
    /// that answers, in the order given.
    ///
    /// ```
    /// let builder = corebus_client::Client::builder()
    ///     .server("10.0.0.1:7400")
    ///     .server("10.0.0.2:7400");
    /// assert_eq!(builder.servers(), ["10.0.0.1:7400", "10.0.0.2:7400"]);
    /// ```
    pub fn server(mut self, addr: impl Into<String>) -> ClientBuilder {
        self.servers.push(addr.into());
        self
    }

    /// Authenticates with a token (sent in `HELLO` on every connect and
    /// reconnect).
    ///
    /// ```
    /// let builder = corebus_client::Client::builder().token("eyJhbGciOi...");
    /// assert!(builder.config().credentials.is_some());
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> ClientBuilder {
        self.config.credentials = Some(Credentials::new(token));
        self
    }

    /// Authenticates with an API key (the same slot as
    /// [`token`](ClientBuilder::token): the last one given is sent).
    ///
    /// ```
    /// let builder = corebus_client::Client::builder().api_key("cbk_...");
    /// assert!(builder.config().credentials.is_some());
    /// ```
    pub fn api_key(self, key: impl Into<String>) -> ClientBuilder {
        self.token(key)
    }

    /// The name sent in `HELLO`, shown in the broker's logs.
    ///
    /// ```
    /// let builder = corebus_client::Client::builder().name("billing");
    /// assert_eq!(builder.config().client_name, "billing");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> ClientBuilder {
        self.config.client_name = name.into();
        self
    }

    /// Connects with TLS.
    ///
    /// ```
    /// use corebus_client::{Client, TlsOptions};
    /// let builder = Client::builder().tls(TlsOptions::default());
    /// assert!(builder.config().tls.is_some());
    /// ```
    pub fn tls(mut self, tls: TlsOptions) -> ClientBuilder {
        self.config.tls = Some(tls);
        self
    }

    /// Starts from `config` instead of the default (the servers stay; its
    /// credentials, name and TLS are replaced by those given after this).
    ///
    /// ```
    /// use corebus_client::{Client, ClientConfig};
    /// let builder = Client::builder().with_config(ClientConfig {
    ///     max_in_flight: 64,
    ///     ..ClientConfig::default()
    /// });
    /// assert_eq!(builder.config().max_in_flight, 64);
    /// ```
    pub fn with_config(mut self, config: ClientConfig) -> ClientBuilder {
        self.config = config;
        self
    }

    /// The servers to connect to, in order.
    ///
    /// ```
    /// assert_eq!(corebus_client::Client::builder().servers(), ["127.0.0.1:7400"]);
    /// ```
    pub fn servers(&self) -> Vec<&str> {
        match self.servers.is_empty() {
            true => vec![DEFAULT_SERVER],
            false => self.servers.iter().map(String::as_str).collect(),
        }
    }

    /// The configuration so far.
    ///
    /// ```
    /// let builder = corebus_client::Client::builder();
    /// assert!(builder.config().reconnect);
    /// ```
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Resolves every server and connects to the first that answers (see
    /// [`Client::connect_with`]); the TLS server name, unless set, is the
    /// first server's host. An address that does not resolve is an
    /// [`Error::Connect`] naming it. See [`ClientBuilder`] for an example.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// use corebus_client::Client;
    ///
    /// // Nothing answers on port 1: the next server is tried.
    /// let client = Client::builder()
    ///     .server("127.0.0.1:1")
    ///     .server(addr.to_string())
    ///     .connect()
    ///     .await?;
    /// client.ping().await?;
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self) -> Result<Client, Error> {
        let servers: Vec<String> = self.servers().into_iter().map(str::to_owned).collect();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for server in &servers {
            match tokio::net::lookup_host(server.as_str()).await {
                Ok(resolved) => addrs.extend(resolved),
                Err(source) => {
                    return Err(Error::Connect {
                        addr: server.clone(),
                        source,
                    })
                }
            }
        }
        let mut config = self.config;
        if let Some(tls) = &mut config.tls {
            if tls.server_name.is_none() {
                tls.server_name = crate::ServerAddr::host(servers[0].as_str());
            }
        }
        Client::connect_with(addrs.as_slice(), config).await
    }
}
