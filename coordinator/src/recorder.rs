//! The run's metrics files, written on a thread of their own (file IO stays off the async
//! runtime) in commit order.
//!
//! `metrics/train.jsonl` and `metrics/rank-<r>.jsonl` hold only values that are a pure
//! function of the config and seed, so two runs with the same seed give bit-identical files;
//! wall-clock figures go to `metrics/timing.jsonl`. A resumed run keeps the lines of the steps
//! before the one it resumes at and drops the rest, which it trains again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use crate::io_thread::IoThread;
use crate::run_folder::{RunFolder, Throttle};
use crate::state::steps::Commit;

/// One committed step to record, with its wall-clock figures.
#[derive(Debug)]
pub struct Line {
    /// The commit.
    pub commit: Commit,
    /// Wall time since the previous commit.
    pub seconds: f64,
    /// Training tokens per second over it.
    pub tokens_per_s: f64,
}

/// What the metrics thread does.
#[derive(Debug)]
enum Job {
    /// Append a committed step (and publish the files when due).
    Record(Line),
    /// Publish the files now (a checkpoint is about to commit, or the run ended); then answer
    /// on the channel, if any.
    Publish(Option<std::sync::mpsc::Sender<()>>),
}

/// The metrics files of a run and the thread that appends to them.
#[derive(Debug)]
pub struct Recorder(IoThread<Job>);

struct Files {
    dir: PathBuf,
    folder: RunFolder,
    throttle: Throttle,
    train: File,
    timing: File,
    ranks: BTreeMap<u32, File>,
    start_step: u64,
    config_hash: String,
}

/// Opens a metrics file keeping only the lines of steps before `start` (a fresh run starts it
/// empty; a resumed one drops the lines of steps it will train again).
///
/// # Errors
/// The file cannot be read or written.
pub fn open_from(path: &Path, start: u64) -> anyhow::Result<File> {
    let kept: Vec<String> = match fs::read_to_string(path) {
        Ok(text) if start > 0 => text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s < start)
            })
            .map(str::to_string)
            .collect(),
        Ok(_) => vec![],
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for writing", path.display()))?;
    for l in kept {
        writeln!(f, "{l}").with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(f)
}

impl Recorder {
    /// Opens the metrics files under `dir` for a run resuming at `start_step` and starts the
    /// writing thread.
    ///
    /// # Errors
    /// A metrics file that cannot be opened.
    pub fn open(folder: RunFolder, start_step: u64, config_hash: String) -> anyhow::Result<Self> {
        let dir = folder.local.join("metrics");
        let dir = dir.as_path();
        let mut files = Files {
            folder: folder.clone(),
            throttle: Throttle::new(),
            dir: dir.to_path_buf(),
            train: open_from(&dir.join("train.jsonl"), start_step)?,
            timing: open_from(&dir.join("timing.jsonl"), start_step)?,
            ranks: BTreeMap::new(),
            start_step,
            config_hash,
        };
        let thread = IoThread::start("elf-metrics", move |job: Job| {
            let publish = match &job {
                Job::Record(line) => {
                    if let Err(e) = files.write(line) {
                        tracing::error!(error = %format!("{e:#}"), "cannot write the metrics files");
                    }
                    files.throttle.due(std::time::Instant::now())
                }
                Job::Publish(_) => true,
            };
            if publish && let Err(e) = files.publish() {
                tracing::warn!(error = %format!("{e:#}"), "cannot publish the metrics files to the run location");
            }
            if let Job::Publish(Some(done)) = job {
                let _ = done.send(());
            }
        })
        .context("cannot start the metrics thread")?;
        Ok(Self(thread))
    }

    /// Queues a commit for writing.
    pub fn record(&self, line: Line) {
        self.0.submit(Job::Record(line));
    }

    /// Publishes the files to the run location once the queued lines are written; the
    /// receiver answers when they are (a checkpoint's manifest waits for it, so the metrics
    /// in the store always cover the newest committed checkpoint).
    pub fn published(&self) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.0.submit(Job::Publish(Some(tx)));
        rx
    }

    /// Writes every queued line, publishes the files and closes them (blocking).
    pub fn close(&mut self) {
        self.0.submit(Job::Publish(None));
        self.0.close();
    }
}

impl Files {
    /// Publishes every metrics file to the run location.
    fn publish(&mut self) -> anyhow::Result<()> {
        self.train.flush()?;
        self.timing.flush()?;
        let mut names = vec!["train.jsonl".to_string(), "timing.jsonl".to_string()];
        names.extend(self.ranks.keys().map(|r| format!("rank-{r}.jsonl")));
        for n in names {
            self.folder.publish(&format!("metrics/{n}"))?;
        }
        Ok(())
    }

    fn write(&mut self, line: &Line) -> anyhow::Result<()> {
        let c = &line.commit;
        let r0 = c.reports[0].applied().cloned().unwrap_or_default();
        let hash = &self.config_hash;
        let train = json!({
            "step": c.step.0, "loss": r0.loss, "ce_loss": r0.ce_loss, "l2_loss": r0.l2_loss, "lr": c.lr,
            "grad_norm": r0.grad_norm, "world_size": c.quorum.ranks.len(), "quorum_id": c.quorum.id.0,
            "param_digest": r0.param_digest, "config_hash": hash,
        });
        writeln!(self.train, "{train}")?;
        for rep in &c.reports {
            let a = rep.applied().cloned().unwrap_or_default();
            let f = match self.ranks.entry(rep.rank) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(open_from(
                    &self.dir.join(format!("rank-{}.jsonl", rep.rank)),
                    self.start_step,
                )?),
            };
            let l = json!({
                "step": rep.step.0, "rank": rep.rank, "worker": rep.worker.0, "loss": a.loss,
                "ce_loss": a.ce_loss, "l2_loss": a.l2_loss, "grad_norm": a.grad_norm,
                "param_digest": a.param_digest, "config_hash": hash,
            });
            writeln!(f, "{l}")?;
        }
        let ranks: Vec<_> = c
            .reports
            .iter()
            .map(|r| {
                let t = r.timings;
                json!({"rank": r.rank, "compute_seconds": t.compute_seconds, "allreduce_seconds": t.allreduce_seconds,
                       "allreduce_bytes": t.allreduce_bytes, "step_seconds": t.step_seconds})
            })
            .collect();
        writeln!(
            self.timing,
            "{}",
            json!({"step": c.step.0, "step_seconds": line.seconds, "tokens_per_s": line.tokens_per_s, "ranks": ranks})
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_run_keeps_the_lines_before_its_start_and_drops_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("train.jsonl");
        let text: String = (0..10).map(|s| format!("{{\"step\":{s}}}\n")).collect();
        fs::write(&p, &text).unwrap();
        drop(open_from(&p, 4).unwrap());
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "{\"step\":0}\n{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n"
        );
        drop(open_from(&p, 0).unwrap());
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "",
            "a fresh run starts empty"
        );
    }
}
