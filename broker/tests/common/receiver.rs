//! A webhook receiver for the tests: an HTTP/1.1 server on loopback that
//! records every request and answers as the test decides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long `wait_for` waits.
pub const WAIT: Duration = Duration::from_secs(20);

/// One request as the test receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status the receiver answered (`None`: it never answered).
    pub status: Option<u16>,
    /// When it arrived whole.
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }

    pub fn seq(&self) -> u64 {
        self.json()["seq"].as_u64().expect("seq")
    }

    pub fn topic(&self) -> String {
        self.json()["topic"].as_str().expect("topic").to_string()
    }
}

/// What the receiver answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with one more header: `(status, name, value)`.
    WithHeader(u16, &'static str, String),
    Hang,
    /// 200 after this long (recorded when answered).
    Slowly(Duration),
}

pub type Decide = dyn Fn(usize, &Received) -> Reply + Send + Sync;

/// An HTTP/1.1 server on loopback that records every request.
pub struct Receiver {
    pub url: String,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(
        decide: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let decide: Arc<Decide> = Arc::new(decide);
        let accept_log = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, accept_log.clone(), decide.clone()));
            }
        });
        Receiver { url, log }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().expect("not poisoned").clone()
    }

    /// Waits until `done` holds for the requests so far.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            assert!(
                started.elapsed() < WAIT,
                "{what}: not within {WAIT:?}; got {} requests",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<Received>>>,
    decide: Arc<Decide>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buf.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        assert!(
            request_line.starts_with("POST /hook HTTP/1.1"),
            "{request_line}"
        );
        let headers: HashMap<String, String> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let length: usize = headers["content-length"].parse().expect("length");
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buf.extend_from_slice(&chunk[..read]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let mut received = Received {
            headers,
            body,
            status: None,
            at: Instant::now(),
        };
        let index = log.lock().expect("not poisoned").len();
        let mut reply = decide(index, &received);
        if let Reply::Slowly(delay) = reply {
            tokio::time::sleep(delay).await;
            reply = Reply::Status(200);
        }
        if let Reply::Status(status) | Reply::WithHeader(status, ..) = reply {
            received.status = Some(status);
        }
        log.lock().expect("not poisoned").push(received);
        match reply {
            Reply::Hang | Reply::Slowly(_) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Reply::Status(_) | Reply::WithHeader(..) => {
                let (status, extra) = match reply {
                    Reply::WithHeader(status, name, value) => {
                        (status, format!("{name}: {value}\r\n"))
                    }
                    Reply::Status(302) => (302, "Location: /elsewhere\r\n".to_string()),
                    Reply::Status(status) => (status, String::new()),
                    Reply::Hang | Reply::Slowly(_) => unreachable!("handled above"),
                };
                let response =
                    format!("HTTP/1.1 {status} Test\r\n{extra}Content-Length: 0\r\n\r\n");
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Checks the request's Corebus-Signature against each of `secrets` (all
/// must sign it) the way docs/webhooks.md tells receivers to.
pub fn assert_signed(request: &Received, secrets: &[&str]) {
    let header = &request.headers["corebus-signature"];
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => timestamp = Some(value.parse::<u64>().expect("t is a number")),
            Some(("v1", value)) => signatures.push(value.to_string()),
            _ => panic!("unexpected part {part:?} in {header:?}"),
        }
    }
    let timestamp = timestamp.expect("t= present");
    assert!(
        now_secs().abs_diff(timestamp) < 60,
        "timestamp {timestamp} is not now"
    );
    assert_eq!(signatures.len(), secrets.len(), "{header}");
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(&request.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert!(
            signatures.contains(&expected),
            "{header} is not signed by {secret}"
        );
    }
}
