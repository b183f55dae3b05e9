//! SIGTERM with connected clients: GOAWAY, exit 0 within the deadline, and a
//! client that reconnects to the restarted broker and resumes. Also the
//! `/metrics` endpoint moving with traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corebus_client::{Client, Event};

use crate::common;

use common::{free_port, sample, scrape, Serve};

fn serve(port: u16, extra: &[&str]) -> Serve {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str(), "--shards", "2"];
    args.extend_from_slice(extra);
    Serve::start(&args)
}

#[test]
fn sigterm_drains_exits_zero_and_clients_resume_on_the_restarted_broker() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut first = serve(port, &["--shutdown-deadline", "3s"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut sub, epoch) = runtime.block_on(async {
        let subscriber = Client::connect(&addr).await.expect("connects");
        let mut sub = subscriber
            .subscribe("ops", "restart")
            .await
            .expect("subscribes");
        let publisher = Client::connect(&addr).await.expect("connects");
        for i in 1..=3u64 {
            assert_eq!(
                publisher
                    .publish("ops", "restart", "before")
                    .await
                    .expect("acked"),
                i
            );
        }
        for seq in 1..=3 {
            let message = sub.next_message().await.expect("open").expect("message");
            assert_eq!(message.seq, seq);
        }
        let epoch = sub.epoch();
        drop(subscriber); // the subscription alone keeps the connection
        (sub, epoch)
    });

    let (status, took) = first.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "drained in {took:?}, within the 3 s deadline"
    );

    let _second = serve(port, &[]);
    runtime.block_on(async {
        let publisher = Client::connect(&addr).await.expect("connects");
        // The restarted broker has fresh state: the topic starts a new epoch.
        // Publish until the resubscribed client is back (it retries with backoff).
        let gap = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                publisher
                    .publish("ops", "restart", "after")
                    .await
                    .expect("acked");
                match tokio::time::timeout(Duration::from_millis(200), sub.next_event()).await {
                    Ok(Some(Ok(Event::Discontinuity(gap)))) => return gap,
                    Ok(Some(Ok(Event::Message(m)))) => {
                        panic!("message {m:?} before the discontinuity")
                    }
                    Ok(other) => panic!("subscription ended: {other:?}"),
                    Err(_) => continue,
                }
            }
        })
        .await
        .expect("the client reconnects to the restarted broker");
        assert_ne!(gap.epoch, epoch, "a restart starts a new epoch");
        assert_eq!(
            gap.last_seq, 3,
            "the client says exactly where its old history ended"
        );
        let next = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        assert_eq!((next.epoch, next.seq), (gap.epoch, gap.next_seq));
    });
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let port = free_port();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _serve = serve(port, &["--metrics", &metrics]);
    let health = scrape(&metrics, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let before = scrape(&metrics, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200"));
    assert!(before
        .to_ascii_lowercase()
        .contains("content-type: application/openmetrics-text; version=1.0.0"));
    let body = before.split("\r\n\r\n").nth(1).expect("body");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                ["HELP ", "TYPE ", "UNIT ", "EOF"]
                    .iter()
                    .any(|kind| comment.starts_with(kind)),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
    }
    let published_before = sample(body, "corebus_messages_published_total");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = Client::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connects");
        let mut sub = client
            .subscribe("ops", "metrics")
            .await
            .expect("subscribes");
        // 130 messages: sequence numbers 64 and 128 are the latency samples.
        for _ in 0..130 {
            client.publish("ops", "metrics", "x").await.expect("acked");
        }
        for _ in 0..130 {
            sub.next_message().await.expect("open").expect("message");
        }
        // Shards publish their figures once per tick (at most a second).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = scrape(&metrics, "/metrics");
            let published = sample(&text, "corebus_messages_published_total");
            let delivered = sample(&text, "corebus_messages_delivered_total");
            let connections = sample(&text, "corebus_connections");
            if published >= published_before + 130.0 && delivered >= 130.0 {
                assert!(connections >= 1.0);
                assert!(sample(&text, "corebus_bytes_received_total") > 0.0);
                assert!(sample(&text, "corebus_delivery_latency_seconds_count") >= 2.0);
                break;
            }
            assert!(Instant::now() < deadline, "counters did not move:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let missing = scrape(&metrics, "/nope");
    assert!(missing.starts_with("HTTP/1.1 404"));
}

#[test]
fn health_checks_are_answered_while_many_clients_hold_idle_connections() {
    let port = free_port();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _serve = serve(port, &["--metrics", &metrics]);
    assert!(scrape(&metrics, "/healthz").starts_with("HTTP/1.1 200"));
    // 100 clients connect and send nothing (one sends half a request).
    let mut idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&metrics).expect("connects"))
        .collect();
    idle[0].write_all(b"GET /metr").expect("writes");
    for attempt in 0..3 {
        let started = Instant::now();
        let health = scrape(&metrics, "/healthz");
        let took = started.elapsed();
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(
            took < Duration::from_secs(1),
            "health check {attempt} took {took:?} behind 100 idle connections"
        );
    }
    // The silent connections are closed once the header deadline passes.
    idle[1]
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut rest = Vec::new();
    let read = idle[1].read_to_end(&mut rest);
    assert!(
        read.is_ok(),
        "closed by the server, not timed out: {read:?}"
    );
}
