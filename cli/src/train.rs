//! `elf train` (an in-process coordinator and N local worker processes), `elf coordinator`
//! and `elf worker`.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use elf_coordinator::{Options, Outcome};
use elf_worker::node::{self, NodeOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::out;

/// What `elf train` and `elf coordinator` share: config overrides and where the run starts
/// and stops.
#[derive(Debug, Args)]
pub struct RunControl {
    /// Overrides, `key=value` (dotted keys reach sections), applied before validation.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Resume from this checkpoint folder (default: the newest valid checkpoint of the run, if
    /// any).
    #[arg(long)]
    pub resume: Option<String>,
    /// Stop after this many steps of the run (a later process resumes it).
    #[arg(long)]
    pub stop_after: Option<u64>,
}

/// Arguments of `elf train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run config (YAML).
    #[arg(long, default_value = "configs/quickstart.yaml")]
    pub config: PathBuf,
    /// Where metrics, logs, the resolved config and samples go.
    #[arg(long, default_value = "runs/quickstart")]
    pub run_dir: PathBuf,
    /// Local worker processes (each a full replica; data parallel).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
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

/// Arguments of `elf coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The run config (YAML); only the coordinator reads it.
    #[arg(long)]
    pub config: PathBuf,
    /// gRPC listen address (`127.0.0.1:0` picks a free port; see the `ready` event).
    #[arg(long, default_value = "127.0.0.1:0", env = "ELF_LISTEN")]
    pub listen: String,
    /// HTTP listen address for `/metrics` and `/status`.
    #[arg(long, default_value = "127.0.0.1:0", env = "ELF_HTTP")]
    pub http: String,
    /// Run folder.
    #[arg(long, env = "ELF_RUN_DIR")]
    pub run_dir: PathBuf,
    /// Training workers to wait for (default: the config's `cluster.workers`).
    #[arg(long)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub run: RunControl,
}

/// Arguments of `elf worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Coordinator URL, e.g. `http://127.0.0.1:5000`.
    #[arg(long, env = "ELF_COORDINATOR")]
    pub coordinator: String,
    /// Stable worker identity (default: hostname and pid).
    #[arg(long, env = "ELF_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Device: `cpu` (or `cuda:N` with the cuda feature).
    #[arg(long, default_value = "cpu", env = "ELF_DEVICE")]
    pub device: String,
    /// Where the collective listens; the bound address is registered.
    #[arg(long, default_value = "127.0.0.1:0", env = "ELF_COLLECTIVE")]
    pub collective: String,
    /// Where `/metrics` listens.
    #[arg(long, default_value = "127.0.0.1:0", env = "ELF_HTTP")]
    pub http: String,
    /// Seconds to keep trying to reach the coordinator.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout_s: u64,
    /// `train`, or `eval`: a dedicated eval worker that runs the coordinator's eval jobs on
    /// committed checkpoints (training never waits for it).
    #[arg(long, default_value = "train", value_parser = ["train", "eval"], env = "ELF_ROLE")]
    pub role: String,
    /// Seconds to keep trying to reach a coordinator that went away mid-run (it restarts and
    /// resumes from its checkpoints; the worker registers again and continues).
    #[arg(long, default_value_t = 120)]
    pub reconnect_timeout_s: u64,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs `elf coordinator` until the run ends.
pub fn coordinator(a: CoordinatorArgs) -> anyhow::Result<()> {
    let rc = crate::load_config(&a.config, &a.run.set)?;
    let rt = runtime()?;
    let opts = Options {
        listen: a.listen,
        http_listen: a.http,
        run_dir: a.run_dir,
        workers: a.workers,
        events: true,
        resume: a.run.resume,
        stop_after: a.run.stop_after,
    };
    let outcome = rt.block_on(async move {
        let running = elf_coordinator::start(rc, opts).await?;
        Ok::<_, anyhow::Error>(running.done.await?)
    })?;
    match outcome {
        Outcome::Done { .. } => Ok(()),
        Outcome::Failed(why) => anyhow::bail!("run failed: {why}"),
    }
}

/// Runs `elf worker` until the coordinator says the run is done.
pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    let id = a.worker_id.unwrap_or_else(|| {
        let host = fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let opts = NodeOptions {
        coordinator: a.coordinator,
        worker_id: id,
        device: a.device.clone(),
        collective_listen: a.collective,
        http_listen: a.http,
        connect_timeout: Duration::from_secs(a.connect_timeout_s),
        role: a.role.clone(),
        reconnect_timeout: Duration::from_secs(a.reconnect_timeout_s),
    };
    match a.device.as_str() {
        "cpu" => node::run::<elf_model::backend::CpuTrain>(opts, Default::default()),
        #[cfg(feature = "cuda")]
        d if d.starts_with("cuda") => {
            let index = d
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            node::run::<elf_model::backend::CudaTrain>(
                opts,
                burn::backend::cuda::CudaDevice::new(index),
            )
        }
        other => anyhow::bail!(
            "--device {other}: not available in this build (cpu; cuda:N with --features cuda)"
        ),
    }
}

/// Runs `elf train`: an in-process coordinator and `workers` local worker processes.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let rc = crate::load_config(&a.config, &a.run.set)?;
    let logs = a.run_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("{}: cannot create", logs.display()))?;
    let rt = runtime()?;
    let opts = Options {
        listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        run_dir: a.run_dir.clone(),
        workers: Some(a.workers),
        events: false,
        resume: a.run.resume.clone(),
        stop_after: a.run.stop_after,
    };
    let mut running = rt.block_on(elf_coordinator::start(rc, opts))?;
    let url = format!("http://{}", running.grpc_addr);
    // Share the cores between the replicas rather than oversubscribing them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a
        .threads
        .unwrap_or((cores / (a.workers + a.eval_workers).max(1)).max(1));
    let exe = std::env::current_exe().context("cannot locate the elf binary")?;
    let mut children = Vec::with_capacity(a.workers + a.eval_workers);
    for i in 0..a.workers + a.eval_workers {
        let (name, role, log) = if i < a.workers {
            (format!("local-{i}"), "train", format!("worker-{i}.log"))
        } else {
            let j = i - a.workers;
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
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a worker process")?;
        children.push(child);
    }
    tracing::info!(workers = a.workers, threads_per_worker = threads, coordinator = %url, "started local workers");
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
        Outcome::Done { steps } => {
            if !failed_children.is_empty() {
                anyhow::bail!(
                    "workers {failed_children:?} exited with an error (logs in {})",
                    logs.display()
                );
            }
            tracing::info!(steps, run_dir = %a.run_dir.display(), "training done");
            match fs::read_to_string(a.run_dir.join("samples.txt")) {
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
