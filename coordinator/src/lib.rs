//! The ELF coordinator: owns decisions, never tensors. It admits workers, forms the quorum,
//! hands out steps with each rank's slice of the global batch, commits steps when every replica
//! agrees, commits checkpoints when every shard is in, schedules eval jobs, and serves
//! `/metrics` and `/status`.
//!
//! The decisions are one pure model ([`state::Model`]: `(now, input)` in, reply, reasons and
//! effects out); one driver task ([`driver`]) owns it and runs the effects; the gRPC service
//! ([`service`]) only decodes, asks the driver and encodes. It depends on `elf-shared`,
//! `elf-protocol` and `elf-store`, never on the data layer: the caller sizes the run
//! ([`elf_shared::run::RunFacts`]) from its dataset.
//!
//! # Layout
//! - [`state`]: the model and its sub-models (membership, steps, saves, evals, joins, finish).
//! - [`driver`]: the task that owns the model, wakes on inputs and deadlines, runs effects.
//! - [`service`]: the gRPC service.
//! - [`refusal`]: why a request is refused, and the one mapping to gRPC status codes.
//! - [`recorder`]: the metrics files (`metrics/*.jsonl`), on their own thread.
//! - [`storage`]: manifests, retention and eval results in the store, on their own thread.
//! - [`io_thread`]: the ordered IO thread both run on.
//! - [`metrics`]: Prometheus metrics.
//! - this file: [`start`], which finds where the run resumes, binds the listeners and starts
//!   the driver, the service and the HTTP endpoint.

pub mod board;
pub mod driver;
pub mod io_thread;
pub mod metrics;
pub mod recorder;
pub mod refusal;
pub mod run_folder;
pub mod service;
pub mod state;
pub mod storage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use elf_protocol::wire::coordinator_server::CoordinatorServer;
use elf_shared::config::ResolvedConfig;
use elf_shared::events;
use elf_shared::ids::Step;
use elf_shared::manifest::Manifest;
use elf_shared::messages::Admission;
use elf_shared::run::RunFacts;
use elf_store::{Location, checkpoints};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use driver::{Handle, Progress};
pub use state::Outcome;

use crate::driver::{Driver, RunInfo};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::run_folder::RunFolder;
use crate::state::{Model, Settings};

/// Per-process facts of a coordinator (never hyperparameters: those are in the config).
#[derive(Debug, Clone)]
pub struct Options {
    /// gRPC listen address (`127.0.0.1:0` picks a port; the `ready` event reports it).
    pub listen: String,
    /// HTTP listen address for `/metrics` and `/status`.
    pub http_listen: String,
    /// The run location: a URL (`s3://`, `gs://`, `az://`, `file://`) or a local path, where
    /// checkpoints (unless `checkpoint.url` says otherwise), metrics, final weights, samples
    /// and eval generations go, from whichever process makes them.
    pub run: String,
    /// Where a run on a store keeps its local copy of the metrics files (default: under the
    /// system temp folder); a cache the coordinator can lose.
    pub cache_dir: Option<PathBuf>,
    /// Emit JSON events on stdout.
    pub events: bool,
    /// Resume from this checkpoint folder (default: the newest valid one under the checkpoint
    /// root, if any).
    pub resume: Option<String>,
    /// How callers of the gRPC service are authenticated (TLS, token, roles).
    pub security: elf_protocol::security::Security,
    /// End this process's run after this many steps (the config's run length is unchanged, so
    /// a later process resumes it).
    pub stop_after: Option<u64>,
    /// Model FLOPs per training token (`elf_model::flops`), for the FLOP rate and MFU.
    pub flops_per_token: Option<f64>,
    /// Peak FLOP/s of one training worker's device, for MFU (`--peak-flops`).
    pub peak_flops: Option<f64>,
}

/// A started coordinator.
#[derive(Debug)]
pub struct Running {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The driver (for in-process callers and tests).
    pub handle: Handle,
    /// Progress updates.
    pub progress: watch::Receiver<Progress>,
    /// Resolves when the run is over and the server stopped.
    pub done: tokio::task::JoinHandle<Outcome>,
}

/// How long a finished run waits for its last checkpoint's shards and manifest.
const SAVE_HOLD: Duration = Duration::from_secs(60);
/// How long an ended run waits for every worker to hear its final directive.
const FAREWELL_HOLD: Duration = Duration::from_secs(10);

/// What [`prepare`] found and made.
struct Prepared {
    model: Model,
    recorder: Recorder,
    storage: storage::Context,
    admission: Admission,
    info: RunInfo,
    start: Step,
}

/// The config's `resume` (the reference's key): a checkpoint folder, or a run folder or
/// checkpoint root resolved to its newest valid checkpoint, as the reference resolves a path
/// without `checkpoint_` to the latest inside. A path that does not exist starts the run
/// afresh with a warning, as the reference does (its XSum config names its own output folder
/// before the first run); one that exists without a valid checkpoint is an error.
fn reference_resume(spec: &str) -> anyhow::Result<Option<(Location, Manifest)>> {
    let at = || format!("resume: {spec}");
    let loc = Location::parse(spec).with_context(at)?;
    if loc.join("manifest.json").exists().with_context(at)? {
        let m = checkpoints::read_manifest(&loc).with_context(at)?;
        checkpoints::verify(&loc, &m).with_context(at)?;
        return Ok(Some((loc, m)));
    }
    for root in [loc.join("checkpoints"), loc.clone()] {
        if let Some(found) = checkpoints::newest_valid(&root).with_context(at)? {
            return Ok(Some(found));
        }
    }
    if loc.is_dir().with_context(at)? {
        anyhow::bail!(
            "{}: holds no valid checkpoint (nor does its checkpoints/ folder)",
            at()
        );
    }
    tracing::warn!(
        resume = spec,
        "resume: nothing there yet; starting from scratch, as the reference does"
    );
    Ok(None)
}

/// Finds the checkpoint to resume, checks it belongs to this run, prepares the run folder and
/// builds the model (blocking IO; run off the async runtime).
fn prepare(rc: ResolvedConfig, facts: RunFacts, opts: &Options) -> anyhow::Result<Prepared> {
    let c = &rc.config;
    let hash = c.hash().0;
    let run_id = format!("elf-{}", &hash[..12]);
    let folder = RunFolder::open(&opts.run, opts.cache_dir.as_deref(), &run_id)?;
    let root_spec = c
        .checkpoint
        .url
        .clone()
        .unwrap_or_else(|| folder.run.join("checkpoints").display());
    let root = Location::parse(&root_spec)?;
    let from_config = match (&opts.resume, &c.resume) {
        (None, Some(spec)) => reference_resume(spec)?,
        _ => None,
    };
    let resume = match (&opts.resume, from_config) {
        (Some(url), _) => {
            let dir = Location::parse(url)?;
            let m = checkpoints::read_manifest(&dir)?;
            checkpoints::verify(&dir, &m)?;
            Some((dir, m))
        }
        (None, Some(found)) => Some(found),
        (None, None) => checkpoints::newest_valid(&root)
            .with_context(|| format!("{root_spec}: cannot tell which checkpoint to resume"))?,
    };
    if let Some((dir, m)) = &resume {
        c.check_resumable(&m.config_yaml, &dir.display())?;
        tracing::info!(checkpoint = %dir.display(), step = m.step, world_size = m.world_size, "resuming");
    }
    let start = Step(resume.as_ref().map_or(0, |(_, m)| m.next_step));
    let admission_resume = resume.as_ref().map(|(d, _)| d.display());
    let yaml = c.to_yaml();
    folder
        .fetch_metrics()
        .with_context(|| format!("{}: cannot restore the metrics files", folder.run.display()))?;
    folder.put("config.yaml", yaml.as_bytes())?;
    // Workers read the marker back to prove they reach the run location (and the checkpoint
    // root, when the config puts it elsewhere).
    let marker = serde_json::to_vec(&json!({"run_id": run_id, "config_hash": hash}))?;
    folder.put(run_folder::MARKER, &marker)?;
    if c.checkpoint.url.is_some() {
        root.join(run_folder::MARKER)
            .put(marker.clone())
            .with_context(|| format!("checkpoint.url {root_spec}: cannot write"))?;
    }
    let recorder = Recorder::open(folder.clone(), start.0, hash.clone())?;
    let settings = Settings {
        heartbeat_timeout: Duration::from_millis(c.cluster.heartbeat_timeout_ms),
        save_interval: c.checkpoint.interval_steps,
        save_final: c.checkpoint.save_final,
        checkpoint_root: root.display(),
        stop_after: opts.stop_after,
        eval_every: c.eval.every_checkpoints,
        eval_at_end: c.eval.at_end,
        eval_inline: c.eval.on_training_workers,
        save_hold: SAVE_HOLD,
        farewell_hold: FAREWELL_HOLD,
        spans_hosts: !elf_protocol::security::is_loopback(&opts.listen),
        secret: {
            let mut b = [0u8; 32];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)
                .context("cannot read /dev/urandom")?;
            hex::encode(b)
        },
        skip_nonfinite: c.train.skip_nonfinite,
        run: facts,
    };
    Ok(Prepared {
        model: Model::new(settings.clone(), start),
        recorder,
        storage: storage::Context {
            root: root.clone(),
            keep_last: c.checkpoint.keep_last,
            config_yaml: yaml.clone(),
            config_hash: hash.clone(),
            seed: c.seed,
            folder: folder.clone(),
        },
        admission: Admission {
            config_yaml: yaml,
            config_hash: hash.clone(),
            run_url: folder.run.display(),
            checkpoint_root: root_spec.clone(),
            heartbeat: Duration::from_millis(c.cluster.heartbeat_ms),
            run_id: run_id.clone(),
            resume_from: admission_resume.clone(),
        },
        info: RunInfo {
            run_id,
            config_hash: hash,
            tokens_per_step: settings.run.tokens_per_step as f64,
            events: opts.events,
            log_freq: c.log_freq,
            facts: board::Facts {
                run: board::RunView {
                    location: folder.run.display(),
                    model: match &c.model_dims {
                        Some(d) => format!(
                            "{} (hidden {}, depth {}, heads {})",
                            c.model, d.hidden, d.depth, d.heads
                        ),
                        None => c.model.clone(),
                    },
                    resumed_from: admission_resume.clone(),
                    start_step: start.0,
                    started_unix: 0.0,
                    version: env!("CARGO_PKG_VERSION"),
                },
                samples_per_step: c.global_batch_size as u64,
                tokens_per_step: settings.run.tokens_per_step,
                flops_per_token: opts.flops_per_token,
                peak_flops: opts.peak_flops,
            },
        },
        start,
    })
}

/// Finds where the run resumes, binds the listeners and starts serving.
///
/// # Errors
/// A checkpoint that cannot be read or belongs to another config, an unwritable run folder,
/// or a listen address that cannot be bound.
pub async fn start(rc: ResolvedConfig, facts: RunFacts, opts: Options) -> anyhow::Result<Running> {
    let o = opts.clone();
    // Resume discovery may block on object-store IO, which must not run on the runtime.
    let p = tokio::task::spawn_blocking(move || prepare(rc, facts, &o)).await??;
    let grpc = TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", opts.listen))?;
    let http = TcpListener::bind(&opts.http_listen)
        .await
        .with_context(|| format!("--http {}: cannot bind", opts.http_listen))?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    let settings = p.model.settings().clone();
    tracing::info!(%grpc_addr, %http_addr, workers = settings.run.world_size, total_steps = settings.run.total_steps, "coordinator ready");
    if opts.events {
        events::emit(
            "ready",
            json!({"role": "coordinator", "addr": grpc_addr.to_string(), "http": http_addr.to_string(), "run_id": p.info.run_id,
                   "resumed_from": p.admission.resume_from, "start_step": p.start.0}),
        );
    }
    let metrics = Arc::new(Metrics::new());
    let (driver, handle, progress) =
        Driver::new(p.model, p.info, p.recorder, p.storage, metrics.clone())?;
    tokio::spawn(serve_http(http, handle.clone(), metrics));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = service::Service {
        driver: handle.clone(),
        admission: p.admission,
        security: opts.security.clone(),
    };
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(elf_protocol::GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(elf_protocol::GRPC_KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(elf_protocol::GRPC_KEEPALIVE_INTERVAL));
    if let Some(tls) = opts.security.server_tls() {
        builder = builder
            .tls_config(tls)
            .context("--tls-dir: the server certificate or key cannot be used")?;
    }
    // The standard gRPC health service (`grpc.health.v1.Health`), for probes and load
    // balancers: SERVING while the run goes on.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<service::Service>>()
        .await;
    let server = tokio::spawn(async move {
        builder
            .add_service(health_service)
            .add_service(
                CoordinatorServer::new(svc)
                    .max_decoding_message_size(elf_protocol::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(elf_protocol::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
    });
    let done = tokio::spawn(async move {
        let outcome = driver.run().await;
        health
            .set_not_serving::<CoordinatorServer<service::Service>>()
            .await;
        let _ = stop_tx.send(());
        // A graceful shutdown waits for every client connection to close; a frozen worker's
        // never does, so the wait is bounded.
        let abort = server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .is_err()
        {
            tracing::warn!("a client kept its connection open; closing the server anyway");
            abort.abort();
        }
        outcome
    });
    Ok(Running {
        grpc_addr,
        http_addr,
        handle,
        progress,
        done,
    })
}

/// The status page: one self-contained HTML file (inline script and style, no external
/// asset) that polls `/status` once a second.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// Serves `/` (the status page), `/healthz` (the process is alive), `/readyz` (the driver
/// answers: the coordinator serves), `/metrics` and `/status` (the driver's status document).
/// Nothing here changes anything.
async fn serve_http(listener: TcpListener, handle: Handle, metrics: Arc<Metrics>) {
    elf_protocol::http::serve(listener, move |path| {
        let (handle, metrics) = (handle.clone(), metrics.clone());
        async move {
            match path.as_str() {
                "/healthz" => return (200, "text/plain", "ok\n".into()),
                "/" | "/index.html" => {
                    return (200, "text/html; charset=utf-8", STATUS_PAGE.to_string());
                }
                "/status" => {
                    // The driver copies its state into the document; serialising it happens
                    // here, off the driver.
                    return match handle.page().await {
                        Ok(p) => (
                            200,
                            "application/json",
                            serde_json::to_string(&p).expect("status serialises"),
                        ),
                        Err(e) => (503, "text/plain", format!("{e}\n")),
                    };
                }
                _ => {}
            }
            let status = match handle.status().await {
                Ok(s) => s,
                Err(e) => return (503, "text/plain", format!("{e}\n")),
            };
            match path.as_str() {
                "/metrics" => {
                    metrics.refresh(&status);
                    (
                        200,
                        elf_protocol::http::PROMETHEUS,
                        elf_protocol::http::render(&metrics.registry),
                    )
                }
                "/readyz" => (200, "text/plain", format!("serving: {}\n", status.phase)),
                _ => (404, "text/plain", "not found\n".into()),
            }
        }
    })
    .await
}
