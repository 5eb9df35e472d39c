//! Eval jobs on a worker: running one and reporting it (a failed job is reported, never
//! fatal), and the loop of a dedicated eval worker (`--role eval`), which runs the
//! coordinator's jobs until the run is done. Training never waits for it.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use elf_shared::ids::WorkerId;
use elf_shared::messages::{Directive, EvalJob, EvalOutcome, EvalReport};
use elf_store::Location;

use crate::session::Session;

/// Runs one eval job and reports it.
pub fn run_and_report<B: AutodiffBackend>(
    session: &mut Session,
    worker: &WorkerId,
    job: &EvalJob,
    run: &Location,
    device: &B::Device,
) {
    tracing::info!(step = job.step.0, checkpoint = %job.dir, "evaluating");
    let t0 = Instant::now();
    let outcome = match crate::eval::run_job::<B>(&job.dir, run, device) {
        Ok(results) => EvalOutcome::Scored(results),
        Err(e) => {
            tracing::warn!(step = job.step.0, error = %format!("{e:#}"), "eval job failed");
            EvalOutcome::Failed {
                error: format!("{e:#}"),
            }
        }
    };
    let report = EvalReport {
        worker: worker.clone(),
        step: job.step,
        seconds: t0.elapsed().as_secs_f64(),
        outcome,
    };
    if let Err(e) = session.rt.block_on(session.client.report_eval(report)) {
        tracing::warn!(error = %e, "could not report the eval job");
    }
}

/// Runs the coordinator's eval jobs until the run is done.
///
/// # Errors
/// A lost coordinator (the caller reconnects) or a stop.
pub fn eval_worker<B: AutodiffBackend>(
    session: &mut Session,
    worker: &WorkerId,
    device: &B::Device,
) -> anyhow::Result<()> {
    let run = Location::parse(&session.admission.run_url)?;
    loop {
        let d = session
            .rt
            .block_on(session.client.next_directive(worker, None))?;
        match d {
            Directive::Eval(job) => run_and_report::<B>(session, worker, &job, &run, device),
            Directive::Done { .. } => {
                tracing::info!("run complete; no eval job left");
                return Ok(());
            }
            Directive::Stop { reason } => {
                return Err(crate::trainer::Stopped(reason).into());
            }
            Directive::Wait { .. }
            | Directive::Train(_)
            | Directive::SendState { .. }
            | Directive::ReceiveState { .. } => {}
        }
    }
}
