//! The MQTT listener with clients nobody here wrote: Mosquitto's
//! `mosquitto_pub` and `mosquitto_sub` (Debian `mosquitto-clients`) for both
//! versions, and Eclipse Paho for Python (`scripts/mqtt_interop.py`: QoS 0,
//! 1 and 2, wildcards, a refused key, permissions, a malformed packet, MQTT
//! to native and back). `scripts/mqtt-tools.sh` installs both (`.ci/run`
//! runs it); a missing tool fails the test with that advice.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use corebus::auth::key_hash_hex;

use crate::common::{free_port, Serve, TempFile};

const BIN: &str = env!("CARGO_BIN_EXE_corebus");
const FULL_KEY: &str = "cbk_mqtt_full";
const LIMITED_KEY: &str = "cbk_mqtt_limited";

fn config() -> TempFile {
    TempFile::new(
        "mqtt-interop.toml",
        &format!(
            "[[keys]]\nname = \"full\"\nsha256 = \"{}\"\nsuperuser = true\n\
             [[keys]]\nname = \"limited\"\nsha256 = \"{}\"\n\
             permissions = [ {{ ns = \"mqtt\", topic = \"interop/\", prefix = true, \
             publish = true, subscribe = true }} ]\n\
             [anonymous]\n\
             permissions = [ {{ ns = \"mqtt\", topic = \"public/\", prefix = true, \
             publish = true, subscribe = true }} ]\n\
             deny = [ {{ ns = \"mqtt\", topic = \"public/secret\", subscribe = true }} ]\n",
            key_hash_hex(FULL_KEY),
            key_hash_hex(LIMITED_KEY),
        ),
    )
}

pub(crate) fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(found, "{name} is missing: run scripts/mqtt-tools.sh");
    Command::new(name)
}

/// Runs `command` to its end (at most 20 s) and returns its stdout.
pub(crate) fn run(mut command: Command) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waits").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not end within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn mqtt_broker() -> (Serve, u16, TempFile) {
    let config = config();
    let port = free_port();
    let mqtt = format!("127.0.0.1:{port}");
    let serve = Serve::start(&["--config", config.path(), "--mqtt-listen", &mqtt]);
    (serve, port, config)
}

#[test]
fn mosquitto_pub_and_sub_speak_both_versions_with_the_key_as_password() {
    let (_serve, port, _config) = mqtt_broker();
    let port = port.to_string();
    for version in ["mqttv311", "mqttv5"] {
        let common = |command: &mut Command| {
            command.args(["-h", "127.0.0.1", "-p", &port, "-V", version]);
            command.args(["-u", "any", "-P", FULL_KEY]);
        };
        // Three messages over a + filter and a # filter (whose parent
        // matches too), each with its topic (-v).
        let mut sub = tool("mosquitto_sub");
        common(&mut sub);
        sub.args([
            "-t", "m/+/x", "-t", "n/#", "-q", "1", "-v", "-C", "3", "-W", "15",
        ]);
        let sub = std::thread::spawn(move || run(sub));
        std::thread::sleep(Duration::from_millis(700));
        for (topic, qos, message) in [
            ("m/a/x", "0", "one"),
            ("n", "1", "two"),
            ("n/b/c", "2", "three"),
        ] {
            let mut publish = tool("mosquitto_pub");
            common(&mut publish);
            publish.args(["-t", topic, "-q", qos, "-m", message]);
            run(publish);
        }
        let got = sub.join().expect("the subscriber ran");
        assert_eq!(got, "m/a/x one\nn two\nn/b/c three\n", "{version}");
        // A wrong key: refused, and mosquitto_pub says why.
        let mut refused = tool("mosquitto_pub");
        refused.args(["-h", "127.0.0.1", "-p", &port, "-V", version]);
        refused.args(["-u", "any", "-P", "cbk_wrong", "-t", "t", "-m", "x"]);
        let out = refused.output().expect("runs");
        assert!(!out.status.success(), "{version}: a wrong key is refused");
        let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            said.contains("bad user name or password") || said.contains("not authori"),
            "{version}: {said}"
        );
    }
}

#[test]
fn paho_passes_the_interoperability_script() {
    let (serve, port, _config) = mqtt_broker();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv-mqtt/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/mqtt-tools.sh",
        python.display()
    );
    let mut script = Command::new(python);
    script
        .arg(root.join("scripts/mqtt_interop.py"))
        .args(["127.0.0.1", &port.to_string(), &serve.addr, BIN])
        .args([FULL_KEY, LIMITED_KEY]);
    let out = run(script);
    for check in [
        "ok paho 3.1.1: QoS 0, 1 and 2",
        "ok paho 5.0: QoS 0, 1 and 2",
        "ok paho 3.1.1: a wrong key is refused: Bad user name or password",
        "ok paho 5.0: a wrong key is refused: Bad user name or password",
        "ok paho 5.0: the key's permissions hold",
        "ok paho 3.1.1: the anonymous rule set grants public/#",
        "ok paho 5.0: the anonymous rule set grants public/#",
        "ok a malformed packet closes only its own connection",
        "ok paho 5.0 -> corebus sub",
        "ok corebus pub -> paho 5.0",
    ] {
        assert!(out.contains(check), "{check:?} missing from:\n{out}");
    }
}

#[test]
fn mosquitto_sub_resumes_its_persistent_session_and_gets_what_came_meanwhile() {
    let (_serve, port, _config) = mqtt_broker();
    let port = port.to_string();
    for version in ["mqttv311", "mqttv5"] {
        let id = format!("persistent-{version}");
        let subscriber = |extra: &[&str]| {
            let mut sub = tool("mosquitto_sub");
            sub.args(["-h", "127.0.0.1", "-p", &port, "-V", version]);
            sub.args(["-u", "any", "-P", FULL_KEY, "-i", &id, "-c", "-q", "1"]);
            if version == "mqttv5" {
                sub.args(["-x", "60"]);
            }
            sub.args(["-t", "away/#", "-v"]).args(extra);
            sub
        };
        // Subscribes, then goes away (-E: exits once subscribed).
        run(subscriber(&["-E"]));
        for (topic, qos, message) in [("away/a", "1", "one"), ("away/b/c", "2", "two")] {
            let mut publish = tool("mosquitto_pub");
            publish.args(["-h", "127.0.0.1", "-p", &port, "-V", version]);
            publish.args(["-u", "any", "-P", FULL_KEY]);
            publish.args(["-t", topic, "-q", qos, "-m", message]);
            run(publish);
        }
        // Back with the same id (mosquitto_sub subscribes again, to the
        // filter the session has): what came meanwhile arrives first.
        let got = run(subscriber(&["-C", "2", "-W", "15"]));
        assert_eq!(got, "away/a one\naway/b/c two\n", "{version}");
    }
}
