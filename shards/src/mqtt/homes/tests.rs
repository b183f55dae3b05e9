//! What crosses nodes for MQTT sessions: a session arrives whole, in
//! parts; a claim's answer names the holder as the asking node sees it;
//! malformed requests are errors, never panics; and a connection whose
//! home cannot be asked is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use corebus_mqtt::{self as mqtt, MqttStr, Packet, QoS, Version};
use corebus_net::{Body, Headers, PayloadFormat};

use super::wire::{self, Order};
use super::{Claim, ToHome};
use crate::mesh::{Holder, Parcel};
use crate::mqtt::outbound::{Delivery, InFlight, Outbound};
use crate::mqtt::session::{Claimed, Record, Saved, Session};
use crate::mqtt::{MqttConn, MqttSettings, Phase};
use crate::ConnId;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 7400))
}

fn delivery(topic: &str, seq: u64, qos: QoS) -> Delivery {
    let headers = Headers {
        content_type: Some("text/plain".into()),
        ..Headers::default()
    };
    let mut delivery = Delivery::new_for_test(
        topic,
        Body::with_headers(PayloadFormat::Plain, qos.bits(), &headers, b"payload"),
        qos,
        9,
        seq,
    );
    delivery.retain = seq.is_multiple_of(2);
    delivery.ids = vec![1, seq as u32];
    delivery
}

fn session() -> Session {
    Session {
        in_flight: vec![
            (
                4,
                InFlight {
                    state: Outbound::Ack,
                    delivery: delivery("a/b", 1, QoS::AtLeastOnce),
                    order: 10,
                },
            ),
            (
                5,
                InFlight {
                    state: Outbound::Complete,
                    delivery: delivery("", 2, QoS::ExactlyOnce),
                    order: 11,
                },
            ),
        ],
        waiting: (3..40)
            .map(|seq| delivery("a//b/", seq, QoS::AtLeastOnce))
            .collect(),
        unreleased: [7, 65535].into_iter().collect(),
        origin: Some(u64::MAX - 3),
        next_packet_id: 6,
        recent: vec![(1, 9, 1), (u64::MAX, 9, 2)],
    }
}

fn saved(filter: &str, identifier: Option<u32>) -> Saved {
    Saved {
        subscription: mqtt::Subscription {
            filter: MqttStr::new(filter).expect("a filter"),
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: mqtt::RetainHandling::Never,
        },
        identifier,
    }
}

#[test]
fn a_session_crosses_to_another_node_whole_in_parts() {
    let original = session();
    let expected = format!("{original:?}");
    let encoded = wire::encode_session(&Parcel::new(original));
    let to = Holder::local(3, ConnId(77));
    let parts = wire::session_parts(to, Some(encoded.clone()), 100);
    assert!(parts.len() > 10, "{} parts", parts.len());
    let mut chunks = Vec::new();
    for (index, (kind, body)) in parts.iter().enumerate() {
        assert_eq!(*kind, wire::SESSION);
        let (for_conn, last, chunk) = wire::decode_part(body.clone()).expect("a part");
        assert_eq!(for_conn, to);
        assert_eq!(last, index == parts.len() - 1, "only the last says so");
        assert!(chunk.len() <= 100);
        chunks.push(chunk);
    }
    let parcel = wire::decode_session(chunks)
        .expect("decodes")
        .expect("a session");
    let decoded = parcel.take::<Session>().expect("a Session");
    assert_eq!(format!("{decoded:?}"), expected);

    // None: one last part, empty, and no session.
    let parts = wire::session_parts(to, None, 100);
    assert_eq!(parts.len(), 1);
    let (_, last, chunk) = wire::decode_part(parts[0].1.clone()).expect("a part");
    assert!(last && chunk.is_empty());
    assert!(wire::decode_session(vec![chunk])
        .expect("decodes")
        .is_none());
}

/// A claim of `id` by connection `conn` of node `peer`, at the home whose
/// registry `settings` holds; the answer as `peer` reads it.
fn claim_from(
    settings: &MqttSettings,
    home: SocketAddr,
    peer: SocketAddr,
    conn: u64,
    filters: Vec<Saved>,
) -> Option<Claimed> {
    let record = Record {
        holder: Holder::local(1, ConnId(conn)),
        persistent: true,
        filters,
    };
    let (kind, body) = wire::encode(&ToHome::Claim(record), "the-id", usize::MAX);
    let Ok(Order::Reply(kind, answer)) = wire::on_request(Some(settings), peer, kind, body) else {
        panic!("a claim is answered");
    };
    let (previous, parcel) = wire::decode_claimed(home, kind, answer).expect("an answer");
    let claimed = parcel.take::<Option<Claimed>>().expect("a claim's answer");
    assert_eq!(previous, claimed.as_ref().map(|claimed| claimed.previous));
    claimed
}

#[test]
fn a_claims_answer_names_the_holder_as_the_asking_node_sees_it() {
    let settings = MqttSettings::new("mqtt".into(), 100, 1 << 20);
    let (home, a, b) = (addr(3), addr(1), addr(2));
    assert!(claim_from(&settings, home, a, 10, vec![saved("x/#", Some(4))]).is_none());
    // From another node: the holder is on a third node, the first.
    let claimed = claim_from(&settings, home, b, 20, Vec::new()).expect("held");
    assert_eq!(
        claimed.previous,
        Holder {
            node: Some(a),
            ..Holder::local(1, ConnId(10))
        }
    );
    let filters = claimed.filters.expect("a persistent session's filters");
    assert_eq!(
        format!("{filters:?}"),
        format!("{:?}", vec![saved("x/#", Some(4))])
    );
    // From the node that holds it: on the asking node itself.
    let claimed = claim_from(&settings, home, b, 21, Vec::new()).expect("held");
    assert_eq!(claimed.previous, Holder::local(1, ConnId(20)));
    // Held by a connection of the home: on the answering node.
    let record = Record {
        holder: Holder::local(0, ConnId(30)),
        persistent: false,
        filters: Vec::new(),
    };
    settings.clients.claim("the-id", record);
    let claimed = claim_from(&settings, home, a, 40, Vec::new()).expect("held");
    assert_eq!(
        claimed.previous,
        Holder {
            node: Some(home),
            ..Holder::local(0, ConnId(30))
        }
    );
    assert!(claimed.filters.is_none(), "not a persistent session");

    // A release by a connection that no longer holds the id frees nothing;
    // by the holder, it does.
    let release = |conn: u64| {
        let (kind, body) = wire::encode(
            &ToHome::Release(Holder::local(1, ConnId(conn))),
            "the-id",
            usize::MAX,
        );
        wire::on_request(Some(&settings), a, kind, body).expect("understood");
    };
    release(10);
    assert!(claim_from(&settings, home, b, 50, Vec::new()).is_some());
    release(50);
    let (kind, body) = wire::encode(
        &ToHome::Release(Holder::local(1, ConnId(50))),
        "the-id",
        usize::MAX,
    );
    wire::on_request(Some(&settings), b, kind, body).expect("understood");
    assert!(
        claim_from(&settings, home, a, 60, Vec::new()).is_none(),
        "free"
    );
}

#[test]
fn malformed_requests_and_answers_are_errors_not_panics() {
    let settings = MqttSettings::new("mqtt".into(), 100, 1 << 20);
    let record = Record {
        holder: Holder::local(1, ConnId(1)),
        persistent: true,
        filters: vec![saved("a/+", None), saved("b", Some(2))],
    };
    let (kind, claim) = wire::encode(&ToHome::Claim(record), "id", usize::MAX);
    let session = wire::encode_session(&Parcel::new(session()));
    // Every cut of a valid body is refused.
    for len in 0..claim.len() {
        assert!(wire::on_request(Some(&settings), addr(1), kind, claim.slice(..len)).is_err());
    }
    for len in 1..session.len() {
        assert!(
            wire::decode_session(vec![session.slice(..len)]).is_err(),
            "cut at {len}"
        );
    }
    assert!(wire::on_request(Some(&settings), addr(1), 99, Bytes::new()).is_err());
    // Noise: whatever it says, an answer or an error.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..20_000 {
        let len = round % 96;
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        for kind in 0..9 {
            let _ = wire::on_request(Some(&settings), addr(1), kind, noise.clone());
            let _ = wire::decode_claimed(addr(2), kind, noise.clone());
        }
        let _ = wire::decode_part(noise.clone());
        let _ = wire::decode_session(vec![noise]);
    }
}

#[test]
fn a_connection_whose_home_cannot_be_asked_is_refused_as_unavailable() {
    for version in [Version::V311, Version::V5] {
        let settings = Arc::new(MqttSettings::new("mqtt".into(), 100, 1 << 20));
        let mut conn = MqttConn::new(settings);
        conn.version = version;
        conn.expiry_secs = 60;
        if version == Version::V5 {
            // Its WELCOME came first: accepted, the CONNACK held.
            conn.phase = Phase::Resuming;
            conn.accepted = true;
        } else {
            conn.phase = Phase::Connecting;
        }
        let mut frames = BytesMut::new();
        let claim = conn.claim_client_id(Holder::local(0, ConnId(1)), Some(addr(2)), &mut frames);
        assert!(matches!(claim, Claim::AtHome(home, ToHome::Claim(_)) if home == addr(2)));
        assert!(conn.is_resuming(), "the CONNACK waits for the home");
        assert!(conn.claimed(None, &mut frames).is_err());
        let mut pending = BytesMut::from(&conn.pending[..]);
        let Ok(mqtt::Check::Complete { len }) = mqtt::check(&pending, usize::MAX) else {
            panic!("a CONNACK");
        };
        match mqtt::decode(pending.split_to(len).freeze(), version) {
            Ok(Packet::ConnAck(ack)) => {
                let unavailable = if version == Version::V5 { 0x88 } else { 3 };
                assert_eq!((ack.code, ack.session_present), (unavailable, false));
            }
            other => panic!("a CONNACK, not {other:?}"),
        }
        assert_eq!(conn.phase, Phase::Done);
        assert!(!conn.detach(0), "a refused connection leaves no session");
    }
}

#[test]
fn a_clients_home_answer_lets_its_connack_go() {
    let settings = Arc::new(MqttSettings::new("mqtt".into(), 100, 1 << 20));
    let mut conn = MqttConn::new(settings);
    conn.version = Version::V5;
    conn.phase = Phase::Resuming;
    conn.accepted = true;
    let mut frames = BytesMut::new();
    let _ = conn.claim_client_id(Holder::local(0, ConnId(1)), Some(addr(2)), &mut frames);
    assert!(conn.pending.is_empty(), "nothing before the answer");
    let taken = conn
        .claimed(Some(Parcel::new(None::<Claimed>)), &mut frames)
        .expect("accepted");
    assert!(taken.is_none() && frames.is_empty());
    let mut pending = BytesMut::from(&conn.pending[..]);
    let Ok(mqtt::Check::Complete { len }) = mqtt::check(&pending, usize::MAX) else {
        panic!("a CONNACK");
    };
    assert!(matches!(
        mqtt::decode(pending.split_to(len).freeze(), Version::V5),
        Ok(Packet::ConnAck(ack)) if ack.code == 0 && !ack.session_present
    ));
    assert_eq!(conn.phase, Phase::Open);
}

#[test]
fn what_a_connection_tells_its_home_fits_a_frame_and_only_its_last_entry_goes() {
    let settings = MqttSettings::new("mqtt".into(), 100, 1 << 20);
    let filters: Vec<Saved> = (0..1000)
        .map(|n| saved(&format!("{n:0>96}"), None))
        .collect();
    let record = Record {
        holder: Holder::local(1, ConnId(1)),
        persistent: true,
        filters,
    };
    let (kind, body) = wire::encode(&ToHome::Claim(record), "the-id", 10_000);
    assert!(body.len() <= 10_000, "{} bytes", body.len());
    wire::on_request(Some(&settings), addr(1), kind, body).expect("understood");
    let claimed = claim_from(&settings, addr(3), addr(2), 2, Vec::new()).expect("held");
    let kept = claimed.filters.expect("persistent").len();
    assert!(kept > 50 && kept < 1000, "{kept} kept");

    // Filter changes queue one entry for the home: the last.
    let mut conn = MqttConn::new(Arc::new(MqttSettings::new("mqtt".into(), 100, 1 << 20)));
    conn.expiry_secs = 60;
    let mut frames = BytesMut::new();
    let _ = conn.claim_client_id(Holder::local(0, ConnId(1)), Some(addr(2)), &mut frames);
    for _ in 0..3 {
        conn.save_filters();
    }
    conn.release_client_id();
    let (home, requests) = conn.take_home_requests().expect("requests");
    assert_eq!(home, addr(2));
    assert!(
        matches!(requests[..], [ToHome::Save(_), ToHome::Release(_)]),
        "{requests:?}"
    );
    assert!(conn.take_home_requests().is_none(), "taken once");
}

#[test]
fn an_entry_moves_to_its_new_home_which_keeps_a_newer_one() {
    let (old_home, new_home) = (addr(1), addr(3));
    let record = |holder: Holder| Record {
        holder,
        persistent: true,
        filters: vec![saved("f/#", None)],
    };
    let settings = MqttSettings::new("mqtt".into(), 100, 1 << 20);
    // Held by a connection of the new home itself, named as such.
    let on_new = Holder {
        node: Some(new_home),
        ..Holder::local(0, ConnId(3))
    };
    let (kind, body) = wire::adopt("moved", record(on_new), new_home);
    wire::on_request(Some(&settings), old_home, kind, body).expect("understood");
    let found = settings
        .clients
        .claim("moved", record(Holder::local(1, ConnId(9))));
    assert_eq!(
        found.expect("adopted").previous,
        Holder::local(0, ConnId(3))
    );
    // An id claimed at the new home since keeps that entry.
    let (kind, body) = wire::adopt("moved", record(Holder::local(2, ConnId(4))), new_home);
    wire::on_request(Some(&settings), old_home, kind, body).expect("understood");
    let found = settings
        .clients
        .claim("moved", record(Holder::local(1, ConnId(10))));
    assert_eq!(found.expect("held").previous, Holder::local(1, ConnId(9)));
}

#[test]
fn what_a_holder_tells_a_node_its_entry_left_is_passed_on_to_the_new_home() {
    let settings = MqttSettings::new("mqtt".into(), 100, 1 << 20);
    let holder = Holder::local(0, ConnId(7));
    let record = |filters| Record {
        holder,
        persistent: true,
        filters,
    };
    assert!(settings.clients.claim("left", record(Vec::new())).is_none());
    assert!(settings
        .clients
        .claim("stays", record(Vec::new()))
        .is_none());
    let moved = settings.moved_client_ids(|id| (id == "left").then(|| addr(3)));
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].0, addr(3));
    // The holder here goes on telling this node: passed on, in order; an id
    // that stayed is kept here as before.
    settings
        .clients
        .save("left", holder, true, vec![saved("new/#", Some(2))]);
    settings.clients.release("left", holder);
    settings.clients.release("stays", holder);
    let forwards = settings.client_id_forwards(usize::MAX);
    let kinds: Vec<(SocketAddr, u8)> = forwards
        .iter()
        .map(|(home, (kind, _))| (*home, *kind))
        .collect();
    assert_eq!(kinds, vec![(addr(3), wire::SAVE), (addr(3), wire::RELEASE)]);
    assert!(
        settings.client_id_forwards(usize::MAX).is_empty(),
        "sent once"
    );
    // At the new home, the forwarded save updates the adopted entry.
    let home = MqttSettings::new("mqtt".into(), 100, 1 << 20);
    let here = SocketAddr::from(([127, 0, 0, 1], 7400));
    let (kind, body) = moved[0].1.clone();
    wire::on_request(Some(&home), here, kind, body).expect("adopted");
    let (kind, body) = forwards[0].1.clone();
    wire::on_request(Some(&home), here, kind, body).expect("saved");
    let claimed = home
        .clients
        .claim("left", record(Vec::new()))
        .expect("held by the connection on the first node");
    assert_eq!(
        claimed.previous,
        Holder {
            node: Some(here),
            ..holder
        }
    );
    let filters = claimed.filters.expect("persistent");
    assert_eq!(
        format!("{filters:?}"),
        format!("{:?}", vec![saved("new/#", Some(2))])
    );
}
