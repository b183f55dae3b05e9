//! Authentication and permissions at the engine.

use std::sync::Arc;

use super::*;
use crate::auth::{AuthError, Authenticator, Grant, Permissions, Rule, TopicPattern};

/// Credentials are looked up by name: "pub-only", "sub-only", "prefix",
/// "root", "expiring" (expires at Unix ms 1), anything else is refused.
#[derive(Debug)]
struct TestAuth;

fn rule(topic: TopicPattern, publish: bool, subscribe: bool) -> Rule {
    Rule {
        namespace: "test".into(),
        topic,
        publish,
        subscribe,
    }
}

impl Authenticator for TestAuth {
    fn authenticate(&self, credentials: &[u8], _now_ms: u64) -> Result<Grant, AuthError> {
        let exact = |p, s| rule(TopicPattern::Exact("t".into()), p, s);
        let (permissions, expires_at_ms) = match credentials {
            b"pub-only" => (
                Permissions {
                    superuser: false,
                    rules: vec![exact(true, false)],
                    denied: Vec::new(),
                },
                None,
            ),
            b"sub-only" => (
                Permissions {
                    superuser: false,
                    rules: vec![exact(false, true)],
                    denied: Vec::new(),
                },
                None,
            ),
            b"prefix" => (
                Permissions {
                    superuser: false,
                    rules: vec![rule(TopicPattern::Prefix("user-".into()), true, true)],
                    denied: Vec::new(),
                },
                None,
            ),
            b"root" => (Permissions::all(), None),
            b"expiring" => (Permissions::all(), Some(1)),
            b"" => return Err(AuthError::Missing),
            _ => return Err(AuthError::Invalid("unknown key".into())),
        };
        Ok(Grant {
            identity: String::from_utf8_lossy(credentials).into_owned(),
            permissions: Arc::new(permissions),
            expires_at_ms,
            peer: None,
        })
    }

    fn mint(&self, claims: &str, ttl_secs: u32, _now_ms: u64) -> Result<String, AuthError> {
        Ok(format!("token({claims},{ttl_secs})"))
    }
}

fn shard(config: EngineConfig) -> Shard {
    Shard::new(0, 1, config, 3).with_authenticator(Arc::new(TestAuth))
}

fn hello(credentials: &'static [u8]) -> Frame {
    Frame::Hello(Hello {
        version: corebus_net::PROTOCOL_VERSION,
        client_name: String::new(),
        credentials: Bytes::from_static(credentials),
    })
}

fn take(shard: &mut Shard, conn: ConnId) -> Vec<OutFrame> {
    let mut frames = Vec::new();
    if let Some(outbox) = shard.outbox_mut(conn) {
        outbox.drain_into(&mut frames);
    }
    frames
}

fn login(shard: &mut Shard, credentials: &'static [u8]) -> ConnId {
    let conn = shard.open_conn();
    assert_eq!(shard.handle_frame(conn, hello(credentials)), Flow::Continue);
    assert!(matches!(take(shard, conn)[..], [OutFrame::Welcome { .. }]));
    conn
}

fn error_codes(frames: &[OutFrame]) -> Vec<(u32, Option<ErrorCode>, bool)> {
    frames
        .iter()
        .filter_map(|f| match f {
            OutFrame::Error(e) => Some((e.request_id, e.code(), e.fatal)),
            _ => None,
        })
        .collect()
}

#[test]
fn missing_or_unknown_credentials_close_the_connection() {
    let mut shard = shard(EngineConfig::default());
    for credentials in [&b""[..], b"wrong"] {
        let conn = shard.open_conn();
        let frame = Frame::Hello(Hello {
            version: corebus_net::PROTOCOL_VERSION,
            client_name: String::new(),
            credentials: Bytes::copy_from_slice(credentials),
        });
        assert_eq!(shard.handle_frame(conn, frame), Flow::Close);
        assert_eq!(
            error_codes(&take(&mut shard, conn)),
            vec![(0, Some(ErrorCode::Unauthorized), true)]
        );
    }
    assert_eq!(shard.stats().auth_failures, 2);
}

#[test]
fn permission_matrix_is_enforced_and_denials_keep_the_connection() {
    let mut shard = shard(EngineConfig::default());
    let t = TopicKey::from_strs("test", "t").expect("valid");
    let other_topic = TopicKey::from_strs("test", "u").expect("valid");
    let other_ns = TopicKey::from_strs("prod", "t").expect("valid");
    let user = TopicKey::from_strs("test", "user-9").expect("valid");
    // (credentials, topic, may publish, may subscribe)
    let matrix = [
        (&b"pub-only"[..], &t, true, false),
        (b"pub-only", &other_topic, false, false),
        (b"pub-only", &other_ns, false, false),
        (b"sub-only", &t, false, true),
        (b"sub-only", &other_ns, false, false),
        (b"prefix", &user, true, true),
        (b"prefix", &t, false, false),
        (b"root", &other_ns, true, true),
    ];
    for (credentials, topic, may_publish, may_subscribe) in matrix {
        let conn = shard.open_conn();
        let frame = Frame::Hello(Hello {
            version: corebus_net::PROTOCOL_VERSION,
            client_name: String::new(),
            credentials: Bytes::copy_from_slice(credentials),
        });
        shard.handle_frame(conn, frame);
        take(&mut shard, conn);
        assert_eq!(
            shard.handle_frame(conn, publish(topic, 1, "x")),
            Flow::Continue
        );
        assert_eq!(
            shard.handle_frame(conn, subscribe(topic, 2, 1)),
            Flow::Continue
        );
        let frames = take(&mut shard, conn);
        let denied: Vec<u32> = error_codes(&frames)
            .into_iter()
            .map(|(request, code, fatal)| {
                assert_eq!((code, fatal), (Some(ErrorCode::Forbidden), false));
                request
            })
            .collect();
        let who = String::from_utf8_lossy(credentials);
        assert_eq!(denied.contains(&1), !may_publish, "{who} publish {topic}");
        assert_eq!(
            denied.contains(&2),
            !may_subscribe,
            "{who} subscribe {topic}"
        );
        let acked = frames.iter().any(|f| matches!(f, OutFrame::PubAck { .. }));
        assert_eq!(acked, may_publish, "{who} publish {topic} acked");
        shard.close_conn(conn);
    }
}

#[test]
fn only_superusers_mint_tokens() {
    let mut shard = shard(EngineConfig::default());
    let request = || {
        Frame::TokenRequest(corebus_net::TokenRequest {
            request_id: 4,
            ttl_secs: 60,
            claims: "{}".into(),
        })
    };
    let root = login(&mut shard, b"root");
    shard.handle_frame(root, request());
    assert!(matches!(
        &take(&mut shard, root)[..],
        [OutFrame::Token { request_id: 4, token }] if token == "token({},60)"
    ));
    let plain = login(&mut shard, b"sub-only");
    shard.handle_frame(plain, request());
    assert_eq!(
        error_codes(&take(&mut shard, plain)),
        vec![(4, Some(ErrorCode::Forbidden), false)]
    );
    let webhook = Frame::WebhookRequest(corebus_net::WebhookRequest {
        request_id: 5,
        command: r#"{"op":"list"}"#.into(),
    });
    shard.handle_frame(plain, webhook);
    assert_eq!(
        error_codes(&take(&mut shard, plain)),
        vec![(5, Some(ErrorCode::Forbidden), false)]
    );
}

#[test]
fn an_expired_grant_closes_a_live_connection() {
    let mut shard = shard(EngineConfig::default());
    let conn = login(&mut shard, b"expiring");
    shard.tick(1);
    assert_eq!(
        error_codes(&take(&mut shard, conn)),
        vec![(0, Some(ErrorCode::TokenExpired), true)]
    );
}

#[test]
fn connections_without_hello_are_closed_at_the_handshake_deadline() {
    let config = EngineConfig {
        handshake_timeout_ms: 100,
        ..EngineConfig::default()
    };
    let mut shard = shard(config);
    let lurker = shard.open_conn();
    let member = login(&mut shard, b"root");
    shard.tick(50);
    assert!(take(&mut shard, lurker).is_empty());
    shard.tick(100);
    assert_eq!(
        error_codes(&take(&mut shard, lurker)),
        vec![(0, Some(ErrorCode::HandshakeTimeout), true)]
    );
    assert!(
        take(&mut shard, member).is_empty(),
        "authenticated connections stay"
    );
}

#[test]
fn in_flight_publishes_are_bounded_per_connection() {
    let config = EngineConfig {
        max_in_flight_per_conn: 2,
        ..EngineConfig::default()
    };
    // Two shards, so acks wait for the owner's answer over the mesh.
    let mut cluster = Cluster::new(2, config);
    let t = topic_owned_by(1, 2);
    let publisher = cluster.connect(0);
    for request in 1..=3 {
        cluster.send(publisher, publish(&t, request, "x"));
    }
    let frames = cluster.take_conn(publisher);
    assert_eq!(
        error_codes(&frames),
        vec![(3, Some(ErrorCode::TooManyInFlight), false)]
    );
    cluster.pump();
    let acks = cluster
        .take_conn(publisher)
        .iter()
        .filter(|f| matches!(f, OutFrame::PubAck { .. }))
        .count();
    assert_eq!(acks, 2);
    cluster.send(publisher, publish(&t, 4, "x"));
    cluster.pump();
    assert!(matches!(
        cluster.take_conn(publisher)[..],
        [OutFrame::PubAck {
            request_id: 4,
            seq: 3
        }]
    ));
}
