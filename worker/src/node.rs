//! The worker process: registers with the coordinator, trains the steps it is given and
//! reports them.
//!
//! The loop is one screen: ask for the next directive; for a TRAIN directive build this rank's
//! micro-batches from the rows it names, compute gradients, all-reduce them over the ring,
//! apply clip/optimiser/EMA with the directive's learning rate, and report the loss parts and
//! the parameter digest. The process talks gRPC through a small tokio runtime; tensors stay on
//! the calling thread.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use elf_shared::config::Config;
use elf_shared::events;
use elf_shared::proto::coordinator_client::CoordinatorClient;
use elf_shared::proto::step_directive::Kind;
use elf_shared::proto::{
    EvalReport, HeartbeatRequest, NextStepRequest, PROTOCOL_VERSION, RegisterRequest,
    StepDirective, StepReport, TransferReport,
};
use prometheus::{Gauge, IntCounter, IntGauge, Registry};
use serde_json::json;
use tonic::transport::Channel;

use crate::batch;
use crate::checkpoint::write_shard;
use crate::collective::{Collective, Ring, Single};
use crate::generate::{generate, sweep};
use crate::setup::{DataSetup, load_encoder};
use crate::trainer::Trainer;
use elf_data::source::Location;
use elf_shared::manifest::{TensorEntry, shard_file, shard_range};
use elf_shared::proto::ShardReport;

/// Per-process facts of a worker.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Coordinator URL (`http://host:port`).
    pub coordinator: String,
    /// Stable identity.
    pub worker_id: String,
    /// Device name reported to the coordinator.
    pub device: String,
    /// Where the collective listens (`127.0.0.1:0` picks a port).
    pub collective_listen: String,
    /// Where `/metrics` listens.
    pub http_listen: String,
    /// How long to keep trying to reach the coordinator.
    pub connect_timeout: Duration,
    /// `train`, or `eval` for a dedicated eval worker (runs the coordinator's eval jobs only).
    pub role: String,
    /// How long to keep trying to reach a coordinator that went away mid-run.
    pub reconnect_timeout: Duration,
}

struct WorkerMetrics {
    registry: Registry,
    step: IntGauge,
    step_seconds: Gauge,
    compute_seconds: Gauge,
    allreduce_seconds: Gauge,
    allreduce_bytes: IntCounter,
    tokens_per_second: Gauge,
    checkpoint_wait_seconds: Gauge,
}

impl WorkerMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let g = |n: &str, h: &str| {
            let m = Gauge::new(n, h).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let step = IntGauge::new("elf_worker_step", "Last step this worker finished.")
            .expect("valid metric");
        registry
            .register(Box::new(step.clone()))
            .expect("unique metric");
        let allreduce_bytes = IntCounter::new(
            "elf_worker_allreduce_bytes_total",
            "Bytes this worker sent through all-reduces.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(allreduce_bytes.clone()))
            .expect("unique metric");
        Self {
            step,
            allreduce_bytes,
            step_seconds: g(
                "elf_worker_step_seconds",
                "Wall-clock seconds of the last step on this worker.",
            ),
            compute_seconds: g(
                "elf_worker_compute_seconds",
                "Seconds of forward/backward in the last step.",
            ),
            allreduce_seconds: g(
                "elf_worker_allreduce_seconds",
                "Seconds of gradient all-reduce in the last step.",
            ),
            tokens_per_second: g(
                "elf_worker_tokens_per_second",
                "Tokens this worker trained per second in the last step.",
            ),
            checkpoint_wait_seconds: g(
                "elf_worker_checkpoint_wait_seconds",
                "Seconds the last save waited for the previous upload of this rank.",
            ),
            registry,
        }
    }
}

/// The coordinator went away mid-session (its connection broke): the worker reconnects,
/// registers again and continues from the checkpoint the (restarted) coordinator names.
#[derive(Debug, thiserror::Error)]
#[error("coordinator {url}: {message}")]
pub struct CoordinatorLost {
    url: String,
    message: String,
}

fn rpc_error(url: &str, e: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    // Our coordinator answers its own refusals with FAILED_PRECONDITION and the like; these
    // codes come from the transport (connection refused, reset, closed mid-call).
    if matches!(
        e.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) {
        return CoordinatorLost {
            url: url.to_string(),
            message: e.message().to_string(),
        }
        .into();
    }
    anyhow::anyhow!("coordinator {url}: {}", e.message())
}

/// Runs a worker until the coordinator says the run is done. When the coordinator is lost
/// mid-run the worker reconnects with backoff (for `reconnect_timeout`), registers again and
/// loads the checkpoint the restarted coordinator resumes from; no state is trusted across
/// coordinators but the committed checkpoint.
///
/// # Errors
/// An unreachable coordinator, a refused registration, a config that does not hash to what the
/// coordinator sent, a failed step or a STOP from the coordinator.
pub fn run<B: AutodiffBackend>(opts: NodeOptions, device: B::Device) -> anyhow::Result<()> {
    let mut timeout = opts.connect_timeout;
    loop {
        match session::<B>(&opts, device.clone(), timeout) {
            Err(e) if e.downcast_ref::<CoordinatorLost>().is_some() => {
                tracing::warn!(error = %e, "lost the coordinator; reconnecting");
                timeout = opts.reconnect_timeout;
                std::thread::sleep(Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

fn session<B: AutodiffBackend>(
    opts: &NodeOptions,
    device: B::Device,
    connect_timeout: Duration,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = TcpListener::bind(&opts.collective_listen)
        .with_context(|| format!("--collective {}: cannot bind", opts.collective_listen))?;
    let collective_addr = listener.local_addr()?.to_string();
    let url = opts.coordinator.clone();
    let mut client = rt.block_on(connect(&url, connect_timeout))?;
    let reg = rt
        .block_on(client.register(RegisterRequest {
            worker_id: opts.worker_id.clone(),
            device: opts.device.clone(),
            collective_addr: collective_addr.clone(),
            role: opts.role.clone(),
            protocol_version: PROTOCOL_VERSION,
        }))
        .map_err(|e| rpc_error(&url, e))?
        .into_inner();
    let yaml = String::from_utf8(reg.config_yaml)
        .context("the coordinator sent a config that is not UTF-8")?;
    let rc = Config::from_yaml(
        &yaml,
        "config from the coordinator",
        std::path::Path::new("."),
        &[],
    )?;
    if rc.config.hash().0 != reg.config_hash {
        bail!(
            "the config from the coordinator hashes to {} but was announced as {}",
            rc.config.hash(),
            reg.config_hash
        );
    }
    let c = rc.config.clone();
    let metrics = Arc::new(WorkerMetrics::new());
    let http = rt
        .block_on(tokio::net::TcpListener::bind(&opts.http_listen))
        .with_context(|| format!("--http {}: cannot bind", opts.http_listen))?;
    let http_addr = http.local_addr()?;
    let m = metrics.clone();
    rt.spawn(elf_shared::http::serve(http, move |path| {
        let m = m.clone();
        async move {
            match path.as_str() {
                "/metrics" => (
                    200,
                    elf_shared::http::PROMETHEUS,
                    elf_shared::http::render(&m.registry),
                ),
                _ => (404, "text/plain", "not found\n".into()),
            }
        }
    }));
    events::emit(
        "ready",
        json!({"role": "worker", "worker_id": opts.worker_id, "collective": collective_addr, "http": http_addr.to_string()}),
    );
    tracing::info!(worker_id = %opts.worker_id, config_hash = %reg.config_hash, "registered");

    // Heartbeats run beside the (blocking) training loop. When the coordinator has re-formed
    // the quorum (a peer was lost), the heartbeat aborts this worker's ring of the old one.
    let live_ring: Arc<std::sync::Mutex<Option<(u64, crate::collective::Aborter)>>> =
        Arc::default();
    let watched = live_ring.clone();
    let mut hb = client.clone();
    let (id, period) = (
        opts.worker_id.clone(),
        Duration::from_millis(reg.heartbeat_ms.max(1) as u64),
    );
    rt.spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            match hb
                .heartbeat(HeartbeatRequest {
                    worker_id: id.clone(),
                    step: 0,
                })
                .await
            {
                Ok(r) if !r.get_ref().known => {
                    tracing::warn!("the coordinator no longer knows this worker")
                }
                Ok(r) => {
                    let q = r.get_ref().quorum_id;
                    let w = watched.lock().expect("ring lock");
                    if let Some((mine, aborter)) = w.as_ref()
                        && q > *mine
                    {
                        tracing::warn!(old = *mine, new = q, "quorum re-formed; aborting the ring");
                        aborter.abort();
                    }
                }
                Err(e) => tracing::warn!(error = %e.message(), "heartbeat failed"),
            }
        }
    });

    if opts.role == "eval" {
        return eval_loop::<B>(&rt, client, opts, &PathBuf::from(&reg.run_dir), &device);
    }
    let ds = DataSetup::open(&rc)?;
    let encoder = load_encoder::<B::InnerBackend>(&rc, &device)?;
    let mut tr = Trainer::<B>::new(c.clone(), encoder, ds.vocab, device.clone());
    if !reg.resume_from.is_empty() {
        let dir = Location::parse(&reg.resume_from)?;
        let m = elf_data::checkpoints::read_manifest(&dir)?;
        let state = crate::checkpoint::read_state(&dir, &m)?;
        tr.restore(&m.tensors, &state, m.optimizer_count)?;
        tracing::info!(checkpoint = %reg.resume_from, step = m.step, written_by = m.world_size, "state loaded");
    }
    let run_dir = PathBuf::from(&reg.run_dir);
    // The upload thread hands the host buffer back for the next save. Before the first save,
    // a thread touches every page of a buffer the size of this rank's share, so that the first
    // snapshot does not pay for page faults inside the step loop either.
    let mut upload: Option<std::thread::JoinHandle<Vec<f32>>> =
        (c.checkpoint.interval_steps > 0 || c.checkpoint.save_final).then(|| {
            let n = tr.state_numel().div_ceil(c.cluster.workers.max(1) as u64) as usize;
            std::thread::spawn(move || {
                let mut v = vec![0.0f32; n];
                for page in v.chunks_mut(1024) {
                    page[0] = 1.0;
                }
                v
            })
        });
    let timeout = Duration::from_millis(c.cluster.collective_timeout_ms);
    let bucket = c.cluster.bucket_mib << 20;
    let micro = c.train.micro_batch_size.unwrap_or(c.global_batch_size);
    let n_shards = (c.global_batch_size / c.train.branch_shard_size) as u64;
    let mut ring: Option<(u64, Box<dyn Collective>)> = None;
    let mut after: Option<u64> = None;
    let mut last_rank = 0;
    loop {
        let d: StepDirective = rt
            .block_on(client.next_step(NextStepRequest {
                worker_id: opts.worker_id.clone(),
                after_step: after.unwrap_or(0),
                first: after.is_none(),
            }))
            .map_err(|e| rpc_error(&url, e))?
            .into_inner();
        match Kind::try_from(d.kind).unwrap_or(Kind::Wait) {
            Kind::Wait => continue,
            Kind::Stop => bail!("stopped by the coordinator: {}", d.reason),
            Kind::Done => {
                tracing::info!(steps = d.step, "run complete");
                if let Some(h) = upload.take() {
                    let _ = h.join();
                }
                if last_rank == 0 {
                    let params = elf_model::weights::named_host_params::<B::InnerBackend, _>(
                        &burn::module::AutodiffModule::valid(&tr.model),
                    );
                    elf_model::weights::write_safetensors(
                        &run_dir.join("final.safetensors"),
                        &params,
                    )?;
                    write_samples(&tr, &ds, &c, &run_dir, &device)?;
                }
                return Ok(());
            }
            Kind::Eval => {
                // Between two steps: no rank holds step work, the others wait.
                eval_and_report::<B>(&rt, &mut client, &opts.worker_id, &d, &run_dir, &device);
                continue;
            }
            Kind::SendState | Kind::ReceiveState => {
                let sender = d.kind == Kind::SendState as i32;
                let peer = d.peers.first().cloned().unwrap_or_default();
                let result = if sender {
                    let (tensors, data) = tr.snapshot();
                    crate::transfer::send(
                        &peer,
                        d.step,
                        &tensors,
                        &data,
                        tr.optimizer.count,
                        timeout,
                    )
                } else {
                    crate::transfer::receive(&listener, d.step, timeout).and_then(|st| {
                        tr.restore(&st.tensors, &st.data, st.optimizer_count)
                            .map_err(|e| e.to_string())
                    })
                };
                let mut report = TransferReport {
                    worker_id: opts.worker_id.clone(),
                    step: d.step,
                    sender,
                    ..Default::default()
                };
                match result {
                    Ok(()) => {
                        tracing::info!(step = d.step, sender, %peer, "state copied");
                        if !sender {
                            after = d.step.checked_sub(1);
                            ring = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(step = d.step, sender, %peer, error = %e, "state copy failed");
                        report.error = e;
                    }
                }
                rt.block_on(client.report_transfer(report))
                    .map_err(|e| rpc_error(&url, e))?;
                continue;
            }
            Kind::Train => {}
        }
        let t0 = Instant::now();
        let mut report = StepReport {
            worker_id: opts.worker_id.clone(),
            step: d.step,
            quorum_id: d.quorum_id,
            rank: d.rank,
            ..Default::default()
        };
        if ring.as_ref().is_none_or(|(q, _)| *q != d.quorum_id) {
            ring = None;
            let coll: Box<dyn Collective> = if d.world_size == 1 {
                Box::new(Single)
            } else {
                match Ring::connect(
                    &listener,
                    &d.peers,
                    d.rank as usize,
                    d.quorum_id,
                    timeout,
                    bucket,
                ) {
                    Ok(r) => {
                        *live_ring.lock().expect("ring lock") = Some((d.quorum_id, r.aborter()));
                        Box::new(r)
                    }
                    Err(e) => {
                        // A peer of this quorum is gone: the coordinator re-forms the quorum.
                        tracing::warn!(step = d.step, error = %e.0, "cannot form the ring; waiting for a new quorum");
                        report.error = e.0;
                        report.collective_failed = true;
                        rt.block_on(client.report_step(report))
                            .map_err(|e| rpc_error(&url, e))?;
                        continue;
                    }
                }
            };
            ring = Some((d.quorum_id, coll));
        }
        let coll = &mut ring.as_mut().expect("set above").1;
        let slice: Vec<(u64, u64)> = d
            .rows
            .iter()
            .enumerate()
            .map(|(i, &r)| (d.first_position + i as u64, r))
            .collect();
        let mbs = batch::build(
            &c,
            ds.data.as_ref(),
            &ds.collator,
            d.step,
            &slice,
            n_shards,
            c.encoder.d_model,
            micro,
        )?;
        let (mut grads, parts) = tr.gradients(&mbs);
        let compute = t0.elapsed().as_secs_f64();
        let reduced = coll.all_reduce_sum(&mut grads).and_then(|t| {
            let mut v = [parts.loss, parts.ce, parts.l2];
            coll.all_reduce_sum_f64(&mut v)?;
            Ok((t, v))
        });
        let (traffic, [loss, ce, l2]) = match reduced {
            Ok(x) => x,
            Err(e) => {
                // Nothing was applied: the state is the one before this step. Drop the ring,
                // report, and redo the step in whatever quorum the coordinator forms next.
                tracing::warn!(step = d.step, error = %e.0, "all-reduce failed; waiting for a new quorum");
                ring = None;
                report.error = e.0.clone();
                report.collective_failed = true;
                rt.block_on(client.report_step(report))
                    .map_err(|e| rpc_error(&url, e))?;
                continue;
            }
        };
        let applied = tr.apply(grads, d.lr);
        if d.save {
            // The step loop pays for the host snapshot only; the upload runs beside the next
            // steps. At most one upload is in flight per rank: when the previous one is still
            // running (a store slower than the save interval) the loop waits for it rather
            // than drop a checkpoint, so every rank saves the same steps.
            let t_wait = Instant::now();
            let buf = upload
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default();
            let waited = t_wait.elapsed().as_secs_f64();
            metrics.checkpoint_wait_seconds.set(waited);
            if waited > 1.0 {
                tracing::warn!(
                    step = d.step,
                    waited_seconds = waited,
                    "waited for the previous checkpoint upload (the store is slower than checkpoint.interval_steps)"
                );
            }
            let n = tr.state_numel();
            let (a, b) = shard_range(n, d.rank as u64, d.world_size as u64);
            let (tensors, data) = tr.snapshot_range(a, b, buf);
            let job = SaveJob {
                dir: d.checkpoint_dir.clone(),
                worker_id: opts.worker_id.clone(),
                step: d.step,
                rank: d.rank,
                world: d.world_size,
                retries: c.checkpoint.upload_retries,
                optimizer_count: tr.optimizer.count,
            };
            let (client, handle) = (client.clone(), rt.handle().clone());
            upload = Some(std::thread::spawn(move || {
                job.run(tensors, data, client, handle)
            }));
        }
        let totals = crate::trainer::LossParts { loss, ce, l2 };
        let (ce_loss, l2_loss) = totals.rescaled(c.decoder_prob);
        report.loss = loss;
        report.ce_loss = ce_loss;
        report.l2_loss = l2_loss;
        report.grad_norm = applied.grad_norm;
        report.param_digest = tr.param_digest();
        report.compute_seconds = compute;
        report.allreduce_seconds = traffic.seconds;
        report.allreduce_bytes = traffic.bytes_sent;
        report.step_seconds = t0.elapsed().as_secs_f64();
        metrics.step.set(d.step as i64);
        metrics.step_seconds.set(report.step_seconds);
        metrics.compute_seconds.set(compute);
        metrics.allreduce_seconds.set(traffic.seconds);
        metrics.allreduce_bytes.inc_by(traffic.bytes_sent);
        metrics
            .tokens_per_second
            .set((slice.len() * c.max_length) as f64 / report.step_seconds.max(1e-9));
        let ack = rt
            .block_on(client.report_step(report))
            .map_err(|e| rpc_error(&url, e))?
            .into_inner();
        if !ack.accepted {
            bail!(
                "the coordinator refused the report of step {}: {}",
                d.step,
                ack.reason
            );
        }
        last_rank = d.rank;
        after = Some(d.step);
    }
}

/// One rank's shard of a checkpoint, uploaded in the background.
struct SaveJob {
    dir: String,
    worker_id: String,
    step: u64,
    rank: u32,
    world: u32,
    retries: usize,
    optimizer_count: u64,
}

impl SaveJob {
    fn run(
        self,
        tensors: Vec<TensorEntry>,
        data: Vec<f32>,
        mut client: CoordinatorClient<Channel>,
        rt: tokio::runtime::Handle,
    ) -> Vec<f32> {
        let n = tensors.last().map_or(0, |t| t.offset + t.numel());
        let (a, b) = shard_range(n, self.rank as u64, self.world as u64);
        let file = shard_file(self.rank, self.world);
        let mut report = ShardReport {
            worker_id: self.worker_id,
            step: self.step,
            rank: self.rank,
            world_size: self.world,
            numel: n,
            optimizer_count: self.optimizer_count,
            ..Default::default()
        };
        elf_shared::failpoint::delay("upload");
        let result = Location::parse(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|dir| {
                write_shard(&dir, &file, &tensors, &data, a, b, self.retries).map_err(|e| e.0)
            });
        match result {
            Ok(entry) => {
                report.file = entry.file;
                report.sha256 = entry.sha256;
                report.size = entry.size;
                report.start = entry.start;
                report.len = entry.len;
                if self.rank == 0 {
                    report.tensors_json =
                        serde_json::to_string(&tensors).expect("index serialises");
                }
            }
            Err(e) => {
                tracing::warn!(step = self.step, error = %e, "checkpoint shard not saved");
                report.error = e;
            }
        }
        if let Err(e) = rt.block_on(client.report_shard(report)) {
            tracing::warn!(error = %e.message(), "could not report the checkpoint shard");
        }
        data
    }
}

/// Runs one eval job and reports it; a failed job is reported, never fatal.
fn eval_and_report<B: AutodiffBackend>(
    rt: &tokio::runtime::Runtime,
    client: &mut CoordinatorClient<Channel>,
    worker_id: &str,
    d: &StepDirective,
    run_dir: &std::path::Path,
    device: &B::Device,
) {
    tracing::info!(step = d.step, checkpoint = %d.checkpoint_dir, "evaluating");
    let t0 = Instant::now();
    let mut report = EvalReport {
        worker_id: worker_id.to_string(),
        step: d.step,
        ..Default::default()
    };
    match crate::eval::run_job::<B>(&d.checkpoint_dir, run_dir, device) {
        Ok(results) => {
            report.results_json = serde_json::to_string(&results).expect("results serialise");
        }
        Err(e) => {
            tracing::warn!(step = d.step, error = %e, "eval job failed");
            report.error = format!("{e:#}");
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    if let Err(e) = rt.block_on(client.report_eval(report)) {
        tracing::warn!(error = %e.message(), "could not report the eval job");
    }
}

/// A dedicated eval worker: runs the coordinator's eval jobs until the run is done. Training
/// never waits for it.
fn eval_loop<B: AutodiffBackend>(
    rt: &tokio::runtime::Runtime,
    mut client: CoordinatorClient<Channel>,
    opts: &NodeOptions,
    run_dir: &std::path::Path,
    device: &B::Device,
) -> anyhow::Result<()> {
    let url = &opts.coordinator;
    loop {
        let d: StepDirective = rt
            .block_on(client.next_step(NextStepRequest {
                worker_id: opts.worker_id.clone(),
                after_step: 0,
                first: true,
            }))
            .map_err(|e| rpc_error(url, e))?
            .into_inner();
        match Kind::try_from(d.kind).unwrap_or(Kind::Wait) {
            Kind::Eval => {
                eval_and_report::<B>(rt, &mut client, &opts.worker_id, &d, run_dir, device);
            }
            Kind::Done => {
                tracing::info!("run complete; no eval job left");
                return Ok(());
            }
            Kind::Stop => bail!("stopped by the coordinator: {}", d.reason),
            Kind::Wait | Kind::Train | Kind::SendState | Kind::ReceiveState => {}
        }
    }
}

async fn connect(url: &str, timeout: Duration) -> anyhow::Result<CoordinatorClient<Channel>> {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(100);
    loop {
        match CoordinatorClient::connect(url.to_string()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, "coordinator not reachable yet, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => bail!(
                "cannot reach the coordinator at {url} within {} s: {e}",
                timeout.as_secs()
            ),
        }
    }
}

/// Generates the end-of-run samples from the EMA weights and writes them to the run folder.
fn write_samples<B: AutodiffBackend>(
    tr: &Trainer<B>,
    ds: &DataSetup,
    c: &Config,
    run_dir: &std::path::Path,
    device: &B::Device,
) -> anyhow::Result<()> {
    let n = c.train.final_samples;
    if n == 0 {
        return Ok(());
    }
    let mut spec = sweep(&c.sampling_configs[0])[0];
    spec.steps = c.train.final_sample_steps;
    let prompts: Option<Vec<_>> = if ds.data.is_conditional() {
        Some(
            (0..n as u64)
                .map(|i| ds.data.row(i))
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    };
    let tokens = generate(
        &tr.ema,
        &tr.encoder,
        c,
        &ds.collator,
        prompts.as_deref(),
        n,
        &spec,
        (c.seed, 0),
        device,
    )
    .map_err(anyhow::Error::msg)?;
    let mut text = format!(
        "samples ({:?}, {} steps, EMA weights):\n",
        spec.method, spec.steps
    );
    for (i, t) in tokens.iter().enumerate() {
        let out = ds.tokenizer.decode(t);
        match &prompts {
            Some(p) => text.push_str(&format!(
                "[{i}] {} => {out}\n",
                p[i].input.clone().unwrap_or_default()
            )),
            None => text.push_str(&format!("[{i}] {out}\n")),
        }
    }
    std::fs::write(run_dir.join("samples.txt"), text)
        .with_context(|| format!("{}: cannot write samples.txt", run_dir.display()))?;
    Ok(())
}
