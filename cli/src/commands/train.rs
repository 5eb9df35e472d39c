//! `elf train`: an in-process coordinator and N local worker processes on this machine, a
//! progress bar, and the samples at the end.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use elf_coordinator::{Options, Outcome};
use indicatif::{ProgressBar, ProgressStyle};

use super::cluster::{RunControl, load_run_config, runtime, start_coordinator};
use crate::out;

/// Arguments of `elf train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run config (YAML).
    #[arg(long, default_value = "configs/quickstart.yaml")]
    pub config: PathBuf,
    /// Where metrics, logs, the resolved config and samples go (default: the config's
    /// `output_dir` when it sets one, as the reference names its runs, else runs/quickstart).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Local worker processes (each a full replica; data parallel): sets `cluster.workers`
    /// (default: the config's), which is part of the resolved, hashed config.
    #[arg(long)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub run: RunControl,
    /// Local dedicated eval workers (`elf worker --role eval`) that run the config's eval jobs
    /// (section `eval`) beside training; without one, rank 0 evaluates between steps.
    #[arg(long, default_value_t = 0)]
    pub eval_workers: usize,
    /// Threads per worker process (default: the cores shared among all local workers).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs `elf train`: an in-process coordinator and `workers` local worker processes.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let rc = load_run_config(&a.config, &a.run.set, a.workers)?;
    let workers = rc.config.cluster.workers;
    let run_dir = match &a.run_dir {
        Some(d) => d.clone(),
        None if rc.sets("output_dir") => PathBuf::from(&rc.config.output_dir),
        None => PathBuf::from("runs/quickstart"),
    };
    let logs = run_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("{}: cannot create", logs.display()))?;
    let rt = runtime()?;
    let opts = Options {
        listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        run: run_dir.display().to_string(),
        cache_dir: None,
        security: Default::default(),
        events: false,
        resume: a.run.resume.clone(),
        stop_after: a.run.stop_after,
        flops_per_token: None,
        peak_flops: a.run.peak_flops,
    };
    let mut running = rt.block_on(start_coordinator(rc, opts))?;
    let url = format!("http://{}", running.grpc_addr);
    eprintln!("status page: http://{}/", running.http_addr);
    // Share the cores between the replicas rather than oversubscribing them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a
        .threads
        .unwrap_or((cores / (workers + a.eval_workers).max(1)).max(1));
    let exe = std::env::current_exe().context("cannot locate the elf binary")?;
    let mut children = Vec::with_capacity(workers + a.eval_workers);
    for i in 0..workers + a.eval_workers {
        let (name, role, log) = if i < workers {
            (format!("local-{i}"), "train", format!("worker-{i}.log"))
        } else {
            let j = i - workers;
            (
                format!("local-eval-{j}"),
                "eval",
                format!("eval-worker-{j}.log"),
            )
        };
        let log = fs::File::create(logs.join(log))?;
        let child = std::process::Command::new(&exe)
            .args([
                "worker",
                "--coordinator",
                &url,
                "--worker-id",
                &name,
                "--role",
                role,
            ])
            .args(["--threads", &threads.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a worker process")?;
        children.push(child);
    }
    tracing::info!(workers, threads_per_worker = threads, coordinator = %url, "started local workers");
    let pb = ProgressBar::new(running.progress.borrow().total).with_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    let outcome = rt.block_on(async {
        let mut progress = running.progress.clone();
        let mut done = std::pin::pin!(&mut running.done);
        loop {
            tokio::select! {
                r = &mut done => break r,
                c = progress.changed() => {
                    if c.is_err() { continue; }
                    let p = progress.borrow().clone();
                    pb.set_length(p.total);
                    pb.set_position(p.committed);
                    pb.set_message(format!("loss {:.3} (l2 {:.3} ce {:.3}) {:.0} tok/s", p.loss.0, p.loss.2, p.loss.1, p.tokens_per_s));
                }
            }
        }
    })?;
    pb.finish_and_clear();
    let mut failed_children = vec![];
    for (i, mut c) in children.into_iter().enumerate() {
        // Workers exit right after hearing DONE/STOP; a straggler is stopped.
        let status = wait_or_kill(&mut c, Duration::from_secs(20));
        if !status {
            failed_children.push(i);
        }
    }
    match outcome {
        Outcome::Failed(why) => {
            anyhow::bail!("run failed: {why} (worker logs in {})", logs.display())
        }
        Outcome::Terminated { steps } => {
            anyhow::bail!("stopped after {steps} committed steps; a restart resumes it")
        }
        Outcome::Invalid(why) => Err(anyhow::Error::new(
            elf_shared::config::ConfigError::Invalid {
                path: "the run's config".into(),
                problems: vec![why],
            },
        )
        .context(format!("worker logs in {}", logs.display()))),
        Outcome::Done { steps } => {
            if !failed_children.is_empty() {
                // The run recovered from them: it is done, and the exit status says so.
                tracing::warn!(
                    workers = ?failed_children,
                    logs = %logs.display(),
                    "the run completed, but these local workers exited with an error along the way"
                );
            }
            tracing::info!(steps, run_dir = %run_dir.display(), "training done");
            match fs::read_to_string(run_dir.join("samples.txt")) {
                Ok(s) => out::line(s.trim_end()),
                Err(_) => tracing::warn!("no samples were written"),
            }
            Ok(())
        }
    }
}

fn wait_or_kill(c: &mut std::process::Child, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match c.try_wait() {
            Ok(Some(s)) => return s.success(),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
        }
    }
}
