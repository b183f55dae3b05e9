//! TLS end to end: the client against a real TLS broker (2 shards) with a
//! certificate made by `openssl` at test time. Pub/sub across shards over
//! TLS, reconnection redoing the handshake, certificates the client must
//! refuse, each side speaking TLS to a peer that does not, and an outside
//! TLS client (`openssl s_client`) negotiating TLS 1.3 and 1.2.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corebus_client::{Client, ClientConfig, Error, Event, TlsError, TlsOptions, TlsRoots};
use corebus_shards::ServerConfig;
use corebus_tests::{
    next_event, server_tls_config, test_certs, topic_owned_by, Broker, Proxy, TestCerts,
};
use tokio::time::timeout;

/// Upper bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn tls_broker(certs: &TestCerts) -> Broker {
    Broker::start_config(ServerConfig {
        shards: Some(2),
        tls: Some(server_tls_config(certs)),
        ..ServerConfig::default()
    })
}

/// A client configuration trusting `ca` only; it fails fast and does not
/// reconnect, so a failing connect returns its first error.
fn tls_config(ca: &TestCerts) -> ClientConfig {
    ClientConfig {
        client_name: "tls-test".into(),
        connect_timeout: Duration::from_secs(3),
        reconnect: false,
        tls: Some(TlsOptions {
            roots: TlsRoots::CaFile(ca.cert_pem.clone()),
            server_name: None,
        }),
        ..ClientConfig::default()
    }
}

/// Connects over TLS to `addr` until the connection lands on `shard`.
async fn tls_client_on(addr: &str, config: &ClientConfig, shard: u16) -> Client {
    for _ in 0..500 {
        let client = timeout(WAIT, Client::connect_with(addr, config.clone()))
            .await
            .expect("connects in time")
            .expect("connects over TLS");
        if client.shard() == shard {
            return client;
        }
        drop(client);
    }
    panic!("no TLS connection landed on shard {shard} in 500 tries");
}

/// A failing connect, bounded: it must end with an error, not hang.
async fn connect_error(addr: impl corebus_client::ServerAddr, config: ClientConfig) -> Error {
    match timeout(WAIT, Client::connect_with(addr, config)).await {
        Err(_) => panic!("connecting hung instead of failing"),
        Ok(Ok(client)) => panic!("connected, but must not: {client:?}"),
        Ok(Err(err)) => err,
    }
}

/// The rustls error inside a handshake failure.
fn rustls_reason(err: &Error) -> Option<&rustls::Error> {
    match err {
        Error::Tls(TlsError::Handshake { source, .. }) => source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_over_tls_across_shards() {
    let certs = test_certs();
    let broker = tls_broker(&certs);
    let port = broker.addr().port();
    let config = tls_config(&certs);
    // By name: the certificate is checked for "localhost" (a DNS SAN)...
    let subscriber = tls_client_on(&format!("localhost:{port}"), &config, 0).await;
    // ...and by IP address: for 127.0.0.1 (an IP SAN).
    let publisher = tls_client_on(&broker.addr().to_string(), &config, 1).await;

    // Both directions cross shards: each topic is owned by the other side's shard.
    for (owner, name) in [(1, "to-publisher-shard"), (0, "to-subscriber-shard")] {
        let topic = topic_owned_by(owner, broker.shards(), name);
        let mut sub = subscriber
            .subscribe("test", &topic)
            .await
            .expect("subscribed");
        let epoch = sub.epoch();
        // Payloads from a few bytes to well over one TLS record (16 KiB).
        let payloads: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                let len = if i % 50 == 7 { 100_000 } else { 4 + i as usize };
                (0..len).map(|at| (at as u32 ^ i) as u8).collect()
            })
            .collect();
        let mut acks = Vec::new();
        for payload in &payloads {
            acks.push(
                publisher
                    .start_publish("test", &topic, payload.clone())
                    .await
                    .expect("publish queued"),
            );
        }
        for (at, ack) in acks.into_iter().enumerate() {
            let seq = timeout(WAIT, ack)
                .await
                .expect("ack in time")
                .expect("acked");
            assert_eq!(seq, at as u64 + 1);
        }
        for (at, payload) in payloads.iter().enumerate() {
            let event = next_event(&mut sub).await;
            match event {
                Event::Message(message) => {
                    assert_eq!((message.epoch, message.seq), (epoch, at as u64 + 1));
                    assert_eq!(&message.payload[..], &payload[..], "payload {at}");
                }
                Event::Discontinuity(gap) => panic!("unexpected {gap:?}"),
            }
        }
        sub.unsubscribe().await.expect("unsubscribed");
    }
    let started = Instant::now();
    let rtt = publisher.ping().await.expect("ping over TLS");
    // A measure of this round trip: some time, and no more than the call took.
    assert!(
        rtt > Duration::ZERO && rtt <= started.elapsed(),
        "rtt {rtt:?}, call {:?}",
        started.elapsed()
    );
    publisher.close().await.expect("clean close over TLS");
    subscriber.close().await.expect("clean close over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_redoes_the_tls_handshake() {
    let certs = test_certs();
    let broker = tls_broker(&certs);
    let proxy = Proxy::start(broker.addr()).await;
    let config = ClientConfig {
        reconnect: true,
        reconnect_initial_delay: Duration::from_millis(5),
        reconnect_max_delay: Duration::from_millis(50),
        ..tls_config(&certs)
    };
    let client = timeout(WAIT, Client::connect_with(proxy.addr(), config))
        .await
        .expect("connects in time")
        .expect("connects over TLS through the proxy");
    let topic = topic_owned_by(1, broker.shards(), "tls-reconnect");
    let mut sub = client.subscribe("test", &topic).await.expect("subscribed");
    let publisher = timeout(
        WAIT,
        Client::connect_with(broker.addr(), tls_config(&certs)),
    )
    .await
    .expect("connects in time")
    .expect("publisher connects over TLS");

    for round in 1..=3u64 {
        assert_eq!(
            publisher
                .publish("test", &topic, round.to_be_bytes().to_vec())
                .await
                .expect("acked"),
            round
        );
        let event = next_event(&mut sub).await;
        match event {
            Event::Message(message) => {
                assert_eq!(message.seq, round);
                assert_eq!(&message.payload[..], &round.to_be_bytes());
            }
            Event::Discontinuity(gap) => panic!("unexpected {gap:?}"),
        }
        if round < 3 {
            // The next connection is new TCP under a new TLS session.
            assert_eq!(proxy.cut(), 1, "one connection through the proxy");
        }
    }
    assert_eq!(proxy.accepted(), 3, "two reconnections");
    timeout(WAIT, client.ping())
        .await
        .expect("ping in time")
        .expect("ping over the new TLS connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_are_refused() {
    let certs = test_certs();
    let broker = tls_broker(&certs);
    let addr = broker.addr();

    // The platform's roots do not vouch for a self-signed certificate.
    let system = ClientConfig {
        tls: Some(TlsOptions {
            roots: TlsRoots::System,
            server_name: None,
        }),
        ..tls_config(&certs)
    };
    let err = connect_error(addr, system).await;
    eprintln!("system roots: {err}");
    match &err {
        Error::Tls(TlsError::Handshake { peer, .. }) => {
            assert_eq!(*peer, addr.to_string());
            assert!(
                matches!(
                    rustls_reason(&err),
                    Some(rustls::Error::InvalidCertificate(_))
                ),
                "{err}"
            );
        }
        // A machine without any trust store fails before connecting; still typed.
        Error::Tls(TlsError::NoSystemRoots { .. }) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }

    // Another self-signed certificate as the only root. It has the same
    // subject as the broker's, so webpki tries it as the issuer and finds
    // the signature wrong (`BadSignature`, not `UnknownIssuer`).
    let stranger = test_certs();
    let err = connect_error(addr, tls_config(&stranger)).await;
    eprintln!("another self-signed root: {err}");
    assert!(
        matches!(
            rustls_reason(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{err}"
    );

    // The right root, but a name the certificate is not valid for.
    let mut wrong_name = tls_config(&certs);
    if let Some(tls) = &mut wrong_name.tls {
        tls.server_name = Some("elsewhere.example".into());
    }
    let err = connect_error(addr, wrong_name).await;
    eprintln!("wrong name: {err}");
    assert!(
        matches!(
            rustls_reason(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err}"
    );

    // None of that hurt the broker.
    let client = timeout(WAIT, Client::connect_with(addr, tls_config(&certs)))
        .await
        .expect("connects in time")
        .expect("a trusting client still connects");
    client.ping().await.expect("ping over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ca_files_are_typed_errors() {
    let certs = test_certs();
    let broker = tls_broker(&certs);
    let missing = certs.dir.join("missing.pem");
    let err = connect_error(
        broker.addr(),
        ClientConfig {
            tls: Some(TlsOptions {
                roots: TlsRoots::CaFile(missing.clone()),
                server_name: None,
            }),
            ..tls_config(&certs)
        },
    )
    .await;
    assert!(
        matches!(&err, Error::Tls(TlsError::CaFileUnreadable { path, .. }) if *path == missing),
        "{err}"
    );
    // The key file is PEM, but holds no certificate.
    let err = connect_error(
        broker.addr(),
        ClientConfig {
            tls: Some(TlsOptions {
                roots: TlsRoots::CaFile(certs.key_pem.clone()),
                server_name: None,
            }),
            ..tls_config(&certs)
        },
    )
    .await;
    assert!(
        matches!(&err, Error::Tls(TlsError::NoCertificate { path }) if *path == certs.key_pem),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_to_the_tls_port_fails_cleanly() {
    let certs = test_certs();
    let broker = tls_broker(&certs);
    let plain = ClientConfig {
        tls: None,
        ..tls_config(&certs)
    };
    let err = connect_error(broker.addr(), plain).await;
    eprintln!("plaintext to TLS: {err}");
    assert!(
        matches!(
            err,
            Error::Handshake(_) | Error::Protocol(_) | Error::Io(_) | Error::ConnectionLost(_)
        ),
        "a plaintext HELLO to a TLS port fails the handshake, got {err:?}"
    );
    // The broker still serves TLS.
    let client = timeout(
        WAIT,
        Client::connect_with(broker.addr(), tls_config(&certs)),
    )
    .await
    .expect("connects in time")
    .expect("TLS still works");
    client.ping().await.expect("ping over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_to_a_plaintext_broker_fails_cleanly() {
    let certs = test_certs();
    let broker = Broker::start(2);
    let err = connect_error(broker.addr(), tls_config(&certs)).await;
    eprintln!("TLS to plaintext: {err}");
    assert!(
        matches!(err, Error::Tls(TlsError::Handshake { .. })),
        "a ClientHello to a plaintext port fails the TLS handshake, got {err:?}"
    );
    // The broker still serves plaintext.
    let client = Client::connect(broker.addr())
        .await
        .expect("plaintext connects");
    client.ping().await.expect("ping");
}

/// Runs `openssl s_client` against `addr` with stdin closed, so that it exits
/// after the handshake; returns its stdout and stderr together.
fn s_client(addr: SocketAddr, certs: &TestCerts, version_flag: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), version_flag])
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&certs.cert_pem)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("this test needs the `openssl` command: {err}"));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match child.try_wait().expect("waits for openssl") {
            Some(_) => break,
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("openssl s_client {version_flag} did not finish within {WAIT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut output = String::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|out| Box::new(out) as Box<dyn Read>),
        child
            .stderr
            .take()
            .map(|err| Box::new(err) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        pipe.read_to_string(&mut output)
            .expect("reads openssl output");
    }
    output
}

#[test]
fn openssl_s_client_negotiates_tls13_and_tls12() {
    let certs = test_certs();
    let broker = tls_broker(&certs);
    let output = s_client(broker.addr(), &certs, "-tls1_3");
    assert!(
        output.contains("Protocol  : TLSv1.3") || output.contains("New, TLSv1.3"),
        "no TLS 1.3 session in:\n{output}"
    );
    assert!(
        output.contains("Verify return code: 0 (ok)"),
        "verification failed:\n{output}"
    );
    let output = s_client(broker.addr(), &certs, "-tls1_2");
    assert!(
        output.contains("Protocol  : TLSv1.2") || output.contains("New, TLSv1.2"),
        "no TLS 1.2 session in:\n{output}"
    );
}
