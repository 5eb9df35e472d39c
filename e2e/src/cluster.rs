//! Starting runs: a coordinator and `n` workers as separate processes ([`Run`]), or `elf train`
//! with its embedded coordinator.

use std::path::Path;
use std::time::Duration;

use crate::process::{Proc, repo_root};

/// How long any one wait of a test may take.
pub const T: Duration = Duration::from_secs(120);

/// Fault-tolerance settings of the kill tests: 3 workers need a batch of 24 (whole shards of
/// 4 for 3, 2 and 1 ranks); failures are detected within 3 s.
pub const FT: [&str; 6] = [
    "--set",
    "global_batch_size=24",
    "--set",
    "cluster.heartbeat_timeout_ms=3000",
    "--set",
    "cluster.collective_timeout_ms=20000",
];

/// The tests start several processes each; on a 2-core machine they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the machine for one test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `elf` binary under test.
#[derive(Debug, Clone, Copy)]
pub struct Elf(pub &'static str);

/// A coordinator and its workers, as real processes.
#[derive(Debug)]
pub struct Run {
    /// The coordinator.
    pub coordinator: Proc,
    /// The workers, `w0`, `w1`, ...
    pub workers: Vec<Proc>,
}

impl Elf {
    /// Returns the path of the tiny config.
    pub fn tiny(&self) -> String {
        repo_root().join("configs/tiny.yaml").display().to_string()
    }

    /// Starts a coordinator and `n` workers training `steps` steps of the tiny config into
    /// `dir`.
    pub fn cluster(&self, dir: &Path, n: usize, steps: u64, extra: &[&str]) -> Run {
        self.cluster_env(dir, n, steps, extra, &[], &|_| vec![])
    }

    /// Starts `elf coordinator` of the tiny config with run folder `dir` and `args` after.
    pub fn coordinator(&self, name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let (cfg, d) = (self.tiny(), dir.display().to_string());
        let mut all = vec!["coordinator", "--config", &cfg, "--run-dir", &d];
        all.extend_from_slice(args);
        Proc::spawn(name, self.0, &all, env)
    }

    /// As [`Elf::cluster`], with environment variables for the coordinator and for worker `i`.
    pub fn cluster_env(
        &self,
        dir: &Path,
        n: usize,
        steps: u64,
        extra: &[&str],
        coordinator_env: &[(&str, &str)],
        worker_env: &dyn Fn(usize) -> Vec<(&'static str, String)>,
    ) -> Run {
        let max = format!("train.max_steps={steps}");
        let nn = n.to_string();
        let mut args = vec!["--workers", &nn, "--set", &max];
        args.extend_from_slice(extra);
        let mut coordinator = self.coordinator("coordinator", dir, &args, coordinator_env);
        let ready = coordinator.wait_event("ready", T);
        let url = format!("http://{}", ready["addr"].as_str().expect("addr"));
        let workers = (0..n)
            .map(|i| {
                let env = worker_env(i);
                let mut env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                env.push(("RAYON_NUM_THREADS", "1"));
                self.worker(&format!("worker-{i}"), &url, &format!("w{i}"), &env)
            })
            .collect();
        Run {
            coordinator,
            workers,
        }
    }

    /// Starts one worker of the coordinator at `url`, with `args` after.
    pub fn worker(&self, name: &str, url: &str, id: &str, env: &[(&str, &str)]) -> Proc {
        self.worker_with(name, url, id, &[], env)
    }

    /// As [`Elf::worker`], with more arguments (`--role eval`).
    pub fn worker_with(
        &self,
        name: &str,
        url: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut all = vec!["worker", "--coordinator", url, "--worker-id", id];
        all.extend_from_slice(args);
        Proc::spawn(name, self.0, &all, env)
    }

    /// Runs `elf train` of the tiny config (12 steps, checkpoints every 4) into `dir`.
    ///
    /// # Panics
    /// When it fails, with its stderr.
    pub fn train(&self, dir: &Path, workers: usize, extra: &[&str]) -> std::process::Output {
        self.train_env(dir, workers, extra, &[])
    }

    /// As [`Elf::train`], with environment variables.
    ///
    /// # Panics
    /// When it fails, with its stderr.
    pub fn train_env(
        &self,
        dir: &Path,
        workers: usize,
        extra: &[&str],
        env: &[(&'static str, String)],
    ) -> std::process::Output {
        let mut args = vec![
            "--set",
            "checkpoint.interval_steps=4",
            "--set",
            "train.max_steps=12",
        ];
        args.extend_from_slice(extra);
        self.train_args(dir, workers, &args, env)
    }

    /// Runs `elf train --config configs/tiny.yaml --run-dir dir --workers n` with `args` after
    /// (and nothing else), in the repository root.
    ///
    /// # Panics
    /// When it fails, with its stderr.
    pub fn train_args(
        &self,
        dir: &Path,
        workers: usize,
        extra: &[&str],
        env: &[(&'static str, String)],
    ) -> std::process::Output {
        let d = dir.display().to_string();
        let w = workers.to_string();
        let mut args = vec![
            "train",
            "--config",
            "configs/tiny.yaml",
            "--run-dir",
            &d,
            "--workers",
            &w,
        ];
        args.extend_from_slice(extra);
        let o = self.run_train(&args, env);
        assert!(
            o.status.success(),
            "elf train {args:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// Runs `elf` with `args` (a `train` command line) in the repository root with
    /// `RUST_LOG=info`, and returns how it ended, success or not.
    pub fn run_train(&self, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
        let mut cmd = std::process::Command::new(self.0);
        cmd.args(args)
            .current_dir(repo_root())
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("elf runs")
    }
}

impl Run {
    /// Waits for every process to exit successfully.
    ///
    /// # Panics
    /// On a failure or timeout, with the logs.
    pub fn finish(self) {
        self.finish_as("");
    }

    /// As [`Run::finish`]; failures say `what` the run was.
    ///
    /// # Panics
    /// On a failure or timeout, with the logs.
    pub fn finish_as(mut self, what: &str) {
        for w in &mut self.workers {
            let s = w.wait_exit(T);
            assert!(
                s.success(),
                "{what}: {} failed\n{}{}",
                w.name,
                w.logs(),
                self.coordinator.logs()
            );
        }
        let s = self.coordinator.wait_exit(T);
        assert!(
            s.success(),
            "{what}: the coordinator failed\n{}",
            self.coordinator.logs()
        );
    }

    /// Returns the coordinator's `ready` event fields `addr` (as a URL) and `http`.
    pub fn addresses(&mut self) -> (String, String) {
        let ready = self.coordinator.wait_event("ready", T);
        (
            format!("http://{}", ready["addr"].as_str().expect("addr")),
            ready["http"].as_str().expect("http").to_string(),
        )
    }

    /// Returns true when a worker's log mentions `what`.
    pub fn workers_mention(&self, what: &str) -> bool {
        self.workers.iter().any(|w| w.logs().contains(what))
    }
}
