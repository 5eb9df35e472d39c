//! The run's location (a run URL: `s3://`, `gs://`, `az://`, `file://`, or a plain path on a
//! laptop) and the coordinator's local copy of the files it appends to.
//!
//! Object storage is the only medium the processes of a run share. The coordinator appends its
//! metrics files locally (an object cannot be appended to) and publishes each whole file to
//! the run location: after a write at most every [`PUBLISH_EVERY`], and when the run ends. For
//! a run on a store its local folder is a cache it can lose: a restarted coordinator, on any
//! host, first copies the run's metrics files back from the store. For a plain path the local
//! folder *is* the run location and nothing is copied.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use elf_store::Location;

/// How often an appended file is published to a run location on a store, at most.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// The marker file a coordinator writes at the run location when it starts, which every
/// worker reads back to prove it reaches the same location.
pub const MARKER: &str = "run.json";

/// Where a run's files go, and where the coordinator appends them.
#[derive(Debug, Clone)]
pub struct RunFolder {
    /// The run location.
    pub run: Location,
    /// The coordinator's local folder (the run folder itself for a plain path, else a cache).
    pub local: PathBuf,
}

impl RunFolder {
    /// Opens the run at `spec`; a run on a store appends under `cache` (default: a folder
    /// under the system temp folder named after `run_id`).
    ///
    /// # Errors
    /// A malformed run URL, or a local folder that cannot be created.
    pub fn open(spec: &str, cache: Option<&Path>, run_id: &str) -> anyhow::Result<Self> {
        let run = Location::parse(spec).with_context(|| format!("--run {spec}"))?;
        let local = match &run {
            Location::Local(p) => p.clone(),
            Location::Store { .. } => cache.map_or_else(
                || std::env::temp_dir().join("elf-cache").join(run_id),
                Path::to_path_buf,
            ),
        };
        std::fs::create_dir_all(local.join("metrics"))
            .with_context(|| format!("{}: cannot create the run folder", local.display()))?;
        Ok(Self { run, local })
    }

    /// True when the run location is on a store (files are published there).
    pub fn on_store(&self) -> bool {
        matches!(self.run, Location::Store { .. })
    }

    /// Copies the run's `metrics/*.jsonl` from the store into the local folder (the store is
    /// the truth; a local copy from an earlier process is replaced).
    ///
    /// # Errors
    /// A store error: an uncertain answer is not "no metrics yet".
    pub fn fetch_metrics(&self) -> anyhow::Result<()> {
        if !self.on_store() {
            return Ok(());
        }
        let remote = self.run.join("metrics");
        for name in remote
            .list()
            .with_context(|| format!("{}: cannot list the metrics files", remote.display()))?
        {
            if !name.ends_with(".jsonl") {
                continue;
            }
            let bytes = remote.join(&name).read_all()?;
            let path = self.local.join("metrics").join(&name);
            std::fs::write(&path, &bytes)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }

    /// Writes `bytes` to `rel` under the run location (and the local folder).
    ///
    /// # Errors
    /// The write failed.
    pub fn put(&self, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.local.join(rel);
        std::fs::write(&path, bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        if self.on_store() {
            self.remote(rel).put(bytes.to_vec())?;
        }
        Ok(())
    }

    /// Publishes the local file `rel` to the run location (nothing for a plain path).
    ///
    /// # Errors
    /// An unreadable local file or a failed upload.
    pub fn publish(&self, rel: &str) -> anyhow::Result<()> {
        if !self.on_store() {
            return Ok(());
        }
        let path = self.local.join(rel);
        let bytes =
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        self.remote(rel).put(bytes)?;
        Ok(())
    }

    /// Returns `rel` (`a/b`) under the run location, one path segment at a time (an object
    /// key joined whole would escape its `/`).
    fn remote(&self, rel: &str) -> Location {
        rel.split('/')
            .fold(self.run.clone(), |l, part| l.join(part))
    }
}

/// Publishes files at most every [`PUBLISH_EVERY`].
#[derive(Debug)]
pub struct Throttle(Option<Instant>);

impl Throttle {
    /// A throttle that lets the first publish through.
    pub fn new() -> Self {
        Self(None)
    }

    /// Returns true (and restarts the clock) when a publish is due at `now`.
    pub fn due(&mut self, now: Instant) -> bool {
        if self
            .0
            .is_some_and(|t| now.duration_since(t) < PUBLISH_EVERY)
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}
