//! The worker process: a [`Trainer`] drives a [`Replica`] through the coordinator's
//! directives. Its loop ([`Trainer::train`]) fits on one screen; each part it calls is a
//! component of its own: the session ([`crate::session`]), the step ([`crate::step`]), the
//! saver ([`crate::saver`]), eval jobs ([`crate::evaluator`]), state copies
//! ([`crate::transfer`]) and the end of a run ([`crate::outputs`]).
//!
//! When the coordinator is lost mid-run, [`run`] reconnects with backoff, registers again and
//! starts a new trainer from the checkpoint the (restarted) coordinator names: no state is
//! trusted across coordinators but the committed checkpoint.

use std::time::Duration;

use anyhow::bail;
use burn::tensor::backend::AutodiffBackend;
use elf_shared::ids::{Step, WorkerId};
use elf_shared::messages::{
    Directive, Leave, Role, StepOutcome, StepReport, TrainStep, TransferReport,
};
use elf_store::Location;

use crate::client::ClientError;
use crate::data::TrainData;
use crate::replica::{Replica, load_encoder};
use crate::saver::Saver;
use crate::session::{Probes, Session, WorkerOptions};
use crate::step::StepRunner;

/// One session's training worker.
#[derive(Debug)]
pub struct Trainer<B: AutodiffBackend> {
    session: Session,
    worker: WorkerId,
    replica: Replica<B>,
    data: TrainData,
    runner: StepRunner,
    saver: Saver,
    run: Location,
    device: B::Device,
}

/// Runs a worker until the coordinator says the run is done, reconnecting to a coordinator
/// lost mid-run for `reconnect_timeout`.
///
/// # Errors
/// An unreachable coordinator, a refused registration, a config that does not hash to what the
/// coordinator sent, a failed step, or a stop from the coordinator.
pub fn run<B: AutodiffBackend>(opts: WorkerOptions, device: B::Device) -> anyhow::Result<()> {
    let probes = Probes::start(&opts.http_listen)?;
    let mut timeout = opts.connect_timeout;
    // Since when no session registered: a coordinator that answers connections but never
    // admits this worker (a TLS handshake it fails, say) is given up on like an unreachable one.
    let mut unregistered_since = std::time::Instant::now();
    let mut window = opts.connect_timeout;
    loop {
        match session::<B>(&opts, device.clone(), timeout, &probes) {
            Err(e)
                if probes.is_terminating()
                    && e.downcast_ref::<ClientError>()
                        .is_some_and(ClientError::is_retriable) =>
            {
                tracing::warn!(error = %e, "SIGTERM and the coordinator is gone: exiting");
                return Ok(());
            }
            Err(e)
                if e.downcast_ref::<ClientError>()
                    .is_some_and(ClientError::is_retriable) =>
            {
                if probes.is_ready() {
                    unregistered_since = std::time::Instant::now();
                    window = opts.reconnect_timeout;
                } else if unregistered_since.elapsed() > window {
                    return Err(e.context(format!(
                        "not admitted by the coordinator within {} s",
                        window.as_secs()
                    )));
                }
                probes.set_ready(false);
                tracing::warn!(error = %e, "lost the coordinator; reconnecting");
                timeout = opts.reconnect_timeout;
                std::thread::sleep(Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

fn session<B: AutodiffBackend>(
    opts: &WorkerOptions,
    device: B::Device,
    connect_timeout: Duration,
    probes: &Probes,
) -> anyhow::Result<()> {
    let mut session = Session::open(opts, connect_timeout, probes)?;
    if let Err(e) = crate::session::check_reachable(&session.admission, &session.rc) {
        report_failure(&mut session, &opts.worker_id, &e.to_string(), true);
        return Err(e.into());
    }
    if opts.role == Role::Eval {
        let r = crate::evaluator::eval_worker::<B>(&mut session, &opts.worker_id, &device);
        return reported(&mut session, &opts.worker_id, r);
    }
    Trainer::<B>::new(session, opts.worker_id.clone(), device)?.train()
}

/// Reports `r`'s error to the coordinator before returning it, unless it is about the
/// coordinator itself (lost, or it refused or stopped this worker: it knows).
fn reported(session: &mut Session, worker: &WorkerId, r: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = &r
        && e.downcast_ref::<ClientError>().is_none()
        && e.downcast_ref::<Stopped>().is_none()
    {
        report_failure(session, worker, &format!("{e:#}"), false);
    }
    r
}

/// The coordinator stopped this worker (it knows why).
#[derive(Debug, thiserror::Error)]
#[error("stopped by the coordinator: {0}")]
pub struct Stopped(pub(crate) String);

/// How long a failing worker tries to tell the coordinator its error before it exits.
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Tells the coordinator this worker failed with `error` (best effort, bounded: the worker
/// exits with the error either way).
fn report_failure(session: &mut Session, worker: &WorkerId, error: &str, invalid_config: bool) {
    let leave = Leave {
        worker: worker.clone(),
        error: Some(error.to_string()),
        invalid_config,
    };
    let mut client = session.client.clone();
    let sent = session
        .rt
        .block_on(async { tokio::time::timeout(REPORT_TIMEOUT, client.leave(leave)).await });
    if !matches!(sent, Ok(Ok(()))) {
        tracing::warn!("could not report this worker's error to the coordinator");
    }
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Builds the replica of the session's config (from the checkpoint the coordinator names,
    /// if any), its data, step runner and saver.
    ///
    /// # Errors
    /// Unreadable data, encoder or checkpoint.
    pub fn new(mut session: Session, worker: WorkerId, device: B::Device) -> anyhow::Result<Self> {
        let rc = session.rc.clone();
        let c = &rc.config;
        let built = (|| -> anyhow::Result<(TrainData, Replica<B>)> {
            let data = TrainData::open(&rc)?;
            let encoder = load_encoder::<B::InnerBackend>(&rc, &device)?;
            let mut replica = Replica::<B>::new(c.clone(), encoder, data.vocab, device.clone());
            if let Some(url) = &session.admission.resume_from {
                let dir = Location::parse(url)?;
                let m = elf_store::checkpoints::read_manifest(&dir)?;
                replica.load(&dir, &m)?;
                tracing::info!(checkpoint = %url, step = m.step, written_by = m.world_size, "state loaded");
            }
            Ok((data, replica))
        })();
        let (data, replica) = match built {
            Ok(b) => b,
            Err(e) => return Err(reported(&mut session, &worker, Err(e)).unwrap_err()),
        };
        let share = replica
            .state_numel()
            .div_ceil(c.cluster.workers.max(1) as u64) as usize;
        let saver = Saver::new(
            c.checkpoint.interval_steps > 0 || c.checkpoint.save_final,
            share,
            session.client.clone(),
            session.rt.handle().clone(),
            worker.clone(),
            c.checkpoint.upload_retries,
        );
        Ok(Self {
            runner: StepRunner::new(c, session.ring.clone()),
            run: Location::parse(&session.admission.run_url)?,
            session,
            worker,
            replica,
            data,
            saver,
            device,
        })
    }

    /// The directive loop: ask, do, report, until the run is done.
    ///
    /// # Errors
    /// A lost coordinator (the caller reconnects), a refused report, a failed step, a stop.
    pub fn train(mut self) -> anyhow::Result<()> {
        let r = self.directives();
        reported(&mut self.session, &self.worker, r)
    }

    fn directives(&mut self) -> anyhow::Result<()> {
        let mut after: Option<Step> = None;
        loop {
            let d = self
                .session
                .rt
                .block_on(self.session.client.next_directive(&self.worker, after))?;
            match d {
                Directive::Wait { .. } => {}
                Directive::Train(t) => {
                    if self.train_step(&t)? {
                        after = Some(t.step);
                    }
                }
                Directive::Eval(job) => crate::evaluator::run_and_report::<B>(
                    &mut self.session,
                    &self.worker,
                    &job,
                    &self.run,
                    &self.device,
                ),
                Directive::SendState { step, to, key } => {
                    let (tensors, data) = self.replica.snapshot();
                    let count = self.replica.optimizer.count;
                    let timeout = self.runner.timeout();
                    let sent = crate::peer_auth::key(&key)
                        .map_err(|e| {
                            crate::transfer::TransferError::Setup(std::io::Error::other(e))
                        })
                        .and_then(|k| {
                            crate::transfer::send(&to, step.0, &k, &tensors, &data, count, timeout)
                        });
                    self.report_transfer(step, true, sent.err().map(|e| e.to_string()))?;
                }
                Directive::ReceiveState {
                    step,
                    from,
                    key,
                    param_digest,
                } => {
                    if self.receive_state(step, &from, &key, &param_digest)? {
                        after = step.previous();
                    }
                }
                Directive::Done {
                    steps,
                    write_outputs,
                } => {
                    tracing::info!(steps, "run complete");
                    self.saver.wait();
                    if write_outputs {
                        crate::outputs::write_final(
                            &self.replica,
                            &self.data,
                            &self.run,
                            &self.device,
                        )?;
                    }
                    return Ok(());
                }
                Directive::Stop { reason } => return Err(Stopped(reason).into()),
            }
        }
    }

    /// Trains, saves and reports step `t`; returns whether it was applied.
    fn train_step(&mut self, t: &TrainStep) -> anyhow::Result<bool> {
        elf_shared::failpoint::delay("step");
        let listener = &self.session.listener;
        let (outcome, timings) = self.runner.run(t, &mut self.replica, &self.data, listener);
        let applied = matches!(outcome, StepOutcome::Applied(_));
        if applied {
            if let Some(dir) = &t.save_to {
                let metrics = &self.session.metrics;
                self.saver.save(&self.replica, t, dir, metrics);
            }
            let tokens = t.rows.len() * self.replica.config.max_length;
            self.session.metrics.on_step(t.step.0, &timings, tokens);
        }
        let failure = match &outcome {
            StepOutcome::Failed { error } => Some(error.clone()),
            _ => None,
        };
        let report = StepReport {
            worker: self.worker.clone(),
            step: t.step,
            quorum: t.quorum,
            rank: t.rank,
            outcome,
            timings,
        };
        self.session
            .rt
            .block_on(self.session.client.report_step(report))?;
        if let Some(error) = failure {
            bail!("step {} failed: {error}", t.step);
        }
        Ok(applied)
    }

    /// Loads the state a donor sends for `step`, which must hash to `digest` (when known);
    /// returns whether it was loaded.
    fn receive_state(
        &mut self,
        step: Step,
        from: &str,
        key: &str,
        digest: &str,
    ) -> anyhow::Result<bool> {
        let timeout = self.runner.timeout();
        let index = self.replica.snapshot_range(0, 0, Vec::new()).0;
        let received = crate::peer_auth::key(key)
            .map_err(|e| crate::transfer::TransferError::Setup(std::io::Error::other(e)))
            .and_then(|k| {
                crate::transfer::receive(&self.session.listener, step.0, &k, &index, timeout)
            });
        let error = match received {
            Ok(st) => match self.replica.restore(&index, &st.data, st.optimizer_count) {
                Err(e) => Some(e.to_string()),
                Ok(()) if !digest.is_empty() && self.replica.param_digest() != digest => {
                    Some(format!(
                        "the state copied from {from} hashes to {} but the run's step {} is {digest}",
                        self.replica.param_digest(),
                        step.0.saturating_sub(1)
                    ))
                }
                Ok(()) => None,
            },
            Err(e) => Some(e.to_string()),
        };
        let ok = error.is_none();
        if ok {
            tracing::info!(step = step.0, donor = %from, "state copied");
            // The ring belonged to the state this worker no longer holds.
            self.runner.forget_ring();
        }
        self.report_transfer(step, false, error)?;
        Ok(ok)
    }

    fn report_transfer(
        &mut self,
        step: Step,
        sender: bool,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(e) = &error {
            tracing::warn!(step = step.0, sender, error = %e, "state copy failed");
        }
        let report = TransferReport {
            worker: self.worker.clone(),
            step,
            sender,
            error,
        };
        match self
            .session
            .rt
            .block_on(self.session.client.report_transfer(report))
        {
            Err(e) if !e.is_retriable() => {
                tracing::warn!(error = %e, "the state copy report was refused");
                Ok(())
            }
            r => Ok(r?),
        }
    }
}
