//! `elf coordinator` and `elf worker`: the two processes of a run deployed across machines,
//! and what `elf train` shares with them (config overrides, sizing the run, the runtime).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use elf_coordinator::{Options, Outcome};
use elf_protocol::security::{Security, SecurityFlags};
use elf_shared::config::ResolvedConfig;
use elf_shared::messages::Role;
use elf_worker::session::WorkerOptions;
use elf_worker::trainer;

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
    /// Peak FLOP/s of one training worker's device (e.g. 9.89e14 for an H100/H200 in bf16),
    /// for the MFU on the status page and in `elf_mfu_ratio` (unset: no MFU is reported).
    #[arg(long, env = "ELF_PEAK_FLOPS")]
    pub peak_flops: Option<f64>,
}

/// How the gRPC channel between coordinator and workers is authenticated (see
/// `elf_protocol::security`). Without these, only loopback listeners are allowed.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// `mtls` (client certificates; the role is the subject's OU: train, eval, admin),
    /// `token` (a join token from --token-file; TLS beyond loopback) or `insecure`.
    #[arg(long, env = "ELF_SECURITY", value_parser = ["mtls", "token", "insecure"])]
    pub security: Option<String>,
    /// Accept listening beyond loopback without authentication (same as `--security
    /// insecure`).
    #[arg(long)]
    pub insecure: bool,
    /// Folder with `ca.crt` and, where this process presents one, `tls.crt` and `tls.key`.
    #[arg(long, env = "ELF_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// File holding the join token (`--security token`).
    #[arg(long, env = "ELF_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl SecurityArgs {
    fn flags(&self) -> SecurityFlags {
        SecurityFlags {
            mode: self.security.clone(),
            insecure: self.insecure,
            tls_dir: self.tls_dir.clone(),
            token_file: self.token_file.clone(),
        }
    }
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
    /// The run location: an object-store URL (`s3://`, `gs://`, `az://`, `file://`), the only
    /// medium a multi-host run's processes share, or a local path. Checkpoints (unless
    /// `checkpoint.url` says otherwise), metrics, final weights, samples and eval generations
    /// go there.
    #[arg(long = "run", visible_alias = "run-dir", env = "ELF_RUN")]
    pub run_url: String,
    /// Local folder for the coordinator's copy of the metrics files of a run on a store (a
    /// cache: a coordinator on another host restores it from the store).
    #[arg(long, env = "ELF_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Training workers to wait for: sets `cluster.workers` (default: the config's).
    #[arg(long)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub run: RunControl,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Loads a run's config with its overrides; `--workers N` is the override
/// `cluster.workers=N`, applied last, so the one world-size value is in the resolved config.
pub fn load_run_config(
    path: &std::path::Path,
    set: &[String],
    workers: Option<usize>,
) -> anyhow::Result<ResolvedConfig> {
    let mut set = set.to_vec();
    if let Some(n) = workers {
        set.push(format!("cluster.workers={n}"));
    }
    let mut rc = load_reported(path, &set)?;
    crate::resolve_hub_ids(&mut rc, true)?;
    Ok(rc)
}

/// Loads a config and warns once about the reference keys in it that cannot apply here.
///
/// # Errors
/// As [`crate::load_config`].
pub fn load_reported(path: &std::path::Path, set: &[String]) -> anyhow::Result<ResolvedConfig> {
    let rc = crate::load_config(path, set)?;
    let inert = rc.inert_keys();
    if !inert.is_empty() {
        tracing::warn!(
            "{}: these reference keys have no effect here: {}",
            path.display(),
            inert.join("; ")
        );
    }
    Ok(rc)
}

/// Starts a coordinator for `rc`: sizes the run from its dataset, then serves.
pub async fn start_coordinator(
    rc: ResolvedConfig,
    mut opts: Options,
) -> anyhow::Result<elf_coordinator::Running> {
    if let Some(p) = opts.peak_flops
        && !(p.is_finite() && p > 0.0)
    {
        anyhow::bail!("--peak-flops {p}: must be a positive number of FLOP/s");
    }
    opts.flops_per_token = Some(elf_model::flops::config_flops_per_token(&rc.config));
    let facts = {
        let rc = rc.clone();
        tokio::task::spawn_blocking(move || elf_dataset::run_facts(&rc)).await??
    };
    elf_coordinator::start(rc, facts, opts).await
}

/// Arguments of `elf worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Coordinator URL, e.g. `http://127.0.0.1:5000`.
    #[arg(long, env = "ELF_COORDINATOR")]
    pub coordinator: String,
    /// Stable worker identity, kept across restarts: a process with the same id replaces the
    /// old one (default: `POD_NAME` from the environment, else the host name and the
    /// collective port).
    #[arg(long, env = "ELF_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Device: `cpu` (or `cuda:N` with the cuda feature).
    #[arg(long, default_value = "cpu", env = "ELF_DEVICE")]
    pub device: String,
    /// Where the collective (ring and state copies) listens.
    #[arg(long, default_value = "127.0.0.1:0", env = "ELF_COLLECTIVE")]
    pub collective: String,
    /// The host (IP or name) peers on other hosts reach the collective at; registered with
    /// the bound port. Default: the bound address, or `POD_IP` from the environment when the
    /// bind address is unspecified (`0.0.0.0`).
    #[arg(long, env = "ELF_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(long, default_value = "127.0.0.1:0", env = "ELF_HTTP")]
    pub http: String,
    /// Compute threads (default: every core).
    #[arg(long, env = "ELF_THREADS")]
    pub threads: Option<usize>,
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
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// The id of a worker started without `--worker-id`: `POD_NAME`, else the host name with the
/// collective port (stable when the port is fixed; distinct for local workers on port 0,
/// which then differ per process).
fn default_worker_id(collective: &str) -> anyhow::Result<String> {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return Ok(pod);
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let port = collective
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .with_context(|| format!("--collective {collective}: no port"))?;
    Ok(if port == 0 {
        format!("{host}-{}", std::process::id())
    } else {
        format!("{host}-{port}")
    })
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs `elf coordinator` until the run ends.
pub fn coordinator(a: CoordinatorArgs) -> anyhow::Result<()> {
    let security = Security::for_listeners(&a.security.flags(), &[("--listen", &a.listen)])?;
    let rc = load_run_config(&a.config, &a.run.set, a.workers)?;
    let rt = runtime()?;
    let opts = Options {
        security,
        listen: a.listen,
        http_listen: a.http,
        run: a.run_url,
        cache_dir: a.cache_dir,
        events: true,
        resume: a.run.resume,
        stop_after: a.run.stop_after,
        flops_per_token: None,
        peak_flops: a.run.peak_flops,
    };
    let outcome = rt.block_on(async move {
        let running = start_coordinator(rc, opts).await?;
        let handle = running.handle.clone();
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch for SIGTERM")?;
        tokio::spawn(async move {
            if sigterm.recv().await.is_some() {
                tracing::warn!("SIGTERM: committing a last checkpoint, then stopping");
                let _ = handle.terminate().await;
            }
        });
        Ok::<_, anyhow::Error>(running.done.await?)
    })?;
    match outcome {
        Outcome::Done { .. } => Ok(()),
        Outcome::Terminated { steps } => anyhow::bail!(
            "stopped by SIGTERM after {steps} committed steps; a restart resumes from the last checkpoint"
        ),
        Outcome::Failed(why) => anyhow::bail!("run failed: {why}"),
        Outcome::Invalid(why) => Err(elf_shared::config::ConfigError::Invalid {
            path: "the run's config".into(),
            problems: vec![why],
        }
        .into()),
    }
}

/// Runs `elf worker` until the coordinator says the run is done.
pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .with_context(|| format!("--threads {n}: cannot start the compute threads"))?;
    }
    let id = match a.worker_id {
        Some(id) => id,
        None => default_worker_id(&a.collective)?,
    };
    let security = match Security::from_flags(&a.security.flags())? {
        Some(s) => s,
        None if elf_protocol::security::is_loopback(&a.collective) => Security::Insecure,
        None => {
            return Err(elf_protocol::security::SecurityError::Unauthenticated {
                flag: "--collective",
                addr: a.collective.clone(),
            }
            .into());
        }
    };
    let opts = WorkerOptions {
        security,
        coordinator: a.coordinator,
        worker_id: id.into(),
        device: a.device.clone(),
        collective_listen: a.collective,
        advertise: a.advertise,
        http_listen: a.http,
        connect_timeout: Duration::from_secs(a.connect_timeout_s),
        role: if a.role == "eval" {
            Role::Eval
        } else {
            Role::Train
        },
        reconnect_timeout: Duration::from_secs(a.reconnect_timeout_s),
    };
    match a.device.as_str() {
        "cpu" => trainer::run::<elf_model::backend::CpuTrain>(opts, Default::default()),
        #[cfg(feature = "cuda")]
        d if d.starts_with("cuda") => {
            let index = d
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            trainer::run::<elf_model::backend::CudaTrain>(
                opts,
                burn::backend::cuda::CudaDevice::new(index),
            )
        }
        other => anyhow::bail!(
            "--device {other}: not available in this build (cpu; cuda:N with --features cuda)"
        ),
    }
}
