//! Runtime webhooks on disk: `webhooks.json` in the data directory, written
//! atomically (a temporary file, fsync, rename, fsync of the directory) and
//! readable by its owner only, since it holds signing secrets.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::hook::{self, Hook};

const FILE: &str = "webhooks.json";
/// The version of the `webhooks.json` format.
pub const FORMAT_VERSION: u64 = 1;

/// The webhook file of one data directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir` (created on the first save).
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The stored webhooks; none when the file does not exist.
    pub fn load(&self) -> anyhow::Result<Vec<Hook>> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        if value["version"].as_u64() != Some(FORMAT_VERSION) {
            bail!(
                "{}: unknown format version {} (this broker reads {FORMAT_VERSION})",
                path.display(),
                value["version"]
            );
        }
        let Some(entries) = value["webhooks"].as_array() else {
            bail!("{}: \"webhooks\" is not an array", path.display());
        };
        let mut hooks: Vec<Hook> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let hook = hook::from_stored(entry).map_err(|reason| {
                anyhow::anyhow!("{}: webhook {index}: {reason}", path.display())
            })?;
            if hooks.iter().any(|other| other.id == hook.id) {
                bail!("{}: two webhooks have the id {:?}", path.display(), hook.id);
            }
            hooks.push(hook);
        }
        Ok(hooks)
    }

    /// Replaces the file with `hooks`, atomically.
    pub fn save(&self, hooks: &[Value]) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir).with_context(|| {
            format!(
                "cannot create the data directory {} (set data_dir)",
                self.dir.display()
            )
        })?;
        let value = json!({
            "version": FORMAT_VERSION,
            "webhooks": hooks,
        });
        let mut text = serde_json::to_string_pretty(&value).context("serializing webhooks")?;
        text.push('\n');
        replace_file(&self.dir, FILE, text.as_bytes())
            .with_context(|| format!("cannot write {}", self.path().display()))
    }
}

/// Replaces `dir/name` with `bytes` atomically: a temporary file readable
/// by the owner only, synced, renamed over it, and the directory synced.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    // A stale temporary file (a crash mid-write) goes first: the new one
    // is created exclusively and never through a link.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    write_synced(&temp, bytes)?;
    fs::rename(&temp, &path)?;
    sync_dir(dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // `mode` applies only when the file is created.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
