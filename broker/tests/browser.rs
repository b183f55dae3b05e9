//! The TypeScript client's own tests and the real-browser suite (headless
//! Chromium driven by playwright-core), run from here so that the README's
//! one test command covers them: `npm test` in clients/typescript (codec,
//! client logic against a fake WebSocket, a loopback round trip), then
//! `test/browser/run.mjs` against this build's `corebus` binary.
//!
//! They need Node.js 20+ and what `clients/typescript/scripts/setup.sh`
//! installs (the npm packages, Debian's chromium); `.ci/run` runs it. A
//! missing piece fails the test, naming the script.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_corebus");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the broker crate is in the repository")
        .to_path_buf()
}

/// Fails, naming the set-up script, when something it installs is missing.
fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{what} is missing ({}): run clients/typescript/scripts/setup.sh",
        path.display()
    );
}

fn run(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("{what}: cannot start ({err}); is Node.js 20+ installed? run clients/typescript/scripts/setup.sh"));
    assert!(
        status.success(),
        "{what} failed ({status}); its output is above"
    );
}

#[test]
fn the_typescript_client_passes_its_tests_and_the_browser_suite() {
    let client = repo().join("clients/typescript");
    require(
        &client.join("node_modules/typescript"),
        "the client's npm packages",
    );
    require(
        &client.join("node_modules/playwright-core"),
        "playwright-core",
    );
    require(Path::new("/usr/bin/chromium"), "Debian's chromium");
    require(
        &repo().join("examples/notifications/node_modules/ws"),
        "the notifications example's npm packages",
    );
    // Builds dist/ (tsc), then the unit tests.
    run(
        Command::new("npm").arg("test").current_dir(&client),
        "npm test (clients/typescript)",
    );
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&screenshots).expect("creates the screenshot directory");
    run(
        Command::new("node")
            .arg("test/browser/run.mjs")
            .current_dir(&client)
            .env("COREBUS_BIN", BIN)
            .env("SCREENSHOT_DIR", &screenshots),
        "the browser suite (clients/typescript/test/browser)",
    );
}
