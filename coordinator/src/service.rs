//! The gRPC service: decodes requests, calls [`crate::state`], encodes answers. `NextStep`
//! long-polls (bounded) so workers learn about a commit as soon as it happens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use elf_shared::proto::coordinator_server::Coordinator;
use elf_shared::proto::step_directive::Kind;
use elf_shared::proto::{
    EvalReport, HeartbeatRequest, HeartbeatResponse, NextStepRequest, RegisterRequest,
    RegisterResponse, ReportAck, ShardReport, StatusRequest, StatusResponse, StepDirective,
    StepReport, TransferReport,
};
use tonic::{Request, Response, Status};

use crate::Inner;

/// The answer to a report: accepted, or refused with the reason.
fn ack<T>(res: Result<T, crate::state::Refused>) -> ReportAck {
    match res {
        Ok(_) => ReportAck {
            accepted: true,
            reason: String::new(),
        },
        Err(e) => ReportAck {
            accepted: false,
            reason: e.0,
        },
    }
}

/// How long one `NextStep` call waits before answering WAIT.
const LONG_POLL: Duration = Duration::from_secs(5);

/// The coordinator's gRPC service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Shared state.
    pub inner: Arc<Inner>,
}

#[tonic::async_trait]
impl Coordinator for Service {
    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id))]
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = req.into_inner();
        let res = self
            .inner
            .state
            .lock()
            .expect("state lock")
            .register(Instant::now(), &r);
        match res {
            Ok(()) => {
                tracing::info!(device = %r.device, addr = %r.collective_addr, "worker registered");
                self.inner.notify.notify_waiters();
                Ok(Response::new(RegisterResponse {
                    config_yaml: self.inner.config_yaml.clone().into_bytes(),
                    config_hash: self.inner.config_hash.clone(),
                    run_dir: self.inner.run_dir.display().to_string(),
                    heartbeat_ms: self.inner.heartbeat_ms,
                    run_id: self.inner.run_id.clone(),
                    resume_from: self.inner.resume_from.clone().unwrap_or_default(),
                }))
            }
            Err(e) => {
                tracing::warn!(reason = %e, "registration refused");
                Err(Status::failed_precondition(e.0))
            }
        }
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let mut st = self.inner.state.lock().expect("state lock");
        let known = st.heartbeat(Instant::now(), &r.worker_id);
        Ok(Response::new(HeartbeatResponse {
            known,
            quorum_id: st.quorum_id(),
        }))
    }

    async fn next_step(
        &self,
        req: Request<NextStepRequest>,
    ) -> Result<Response<StepDirective>, Status> {
        let r = req.into_inner();
        let after = (!r.first).then_some(r.after_step);
        let deadline = Instant::now() + LONG_POLL;
        loop {
            // Register interest before reading the state so a commit in between is not missed.
            let notified = self.inner.notify.notified();
            let d = self
                .inner
                .state
                .lock()
                .expect("state lock")
                .directive(&r.worker_id, after);
            if d.kind != Kind::Wait as i32 || Instant::now() >= deadline {
                if d.kind == Kind::Done as i32 || d.kind == Kind::Stop as i32 {
                    self.inner
                        .finished
                        .lock()
                        .expect("finished lock")
                        .insert(r.worker_id.clone());
                }
                return Ok(Response::new(d));
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_step(&self, req: Request<StepReport>) -> Result<Response<ReportAck>, Status> {
        let r = req.into_inner();
        let res = self
            .inner
            .state
            .lock()
            .expect("state lock")
            .report(Instant::now(), r);
        if let Ok(Some(commit)) = &res {
            tracing::debug!(step = commit.step, "step committed");
            self.inner.on_commit(commit);
            self.inner.write_complete_saves();
        }
        self.inner.notify.notify_waiters();
        Ok(Response::new(ack(res)))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_shard(&self, req: Request<ShardReport>) -> Result<Response<ReportAck>, Status> {
        let failed = self
            .inner
            .state
            .lock()
            .expect("state lock")
            .report_shard(req.into_inner());
        if let Some(why) = failed {
            tracing::warn!(reason = %why, "checkpoint save failed; training continues");
            self.inner.metrics.checkpoint_failures.inc();
            self.inner
                .emit("checkpoint_failed", serde_json::json!({"reason": why}));
        }
        self.inner.write_complete_saves();
        self.inner.notify.notify_waiters();
        Ok(Response::new(ReportAck {
            accepted: true,
            reason: String::new(),
        }))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_eval(&self, req: Request<EvalReport>) -> Result<Response<ReportAck>, Status> {
        let r = req.into_inner();
        let res = self.inner.state.lock().expect("state lock").eval_job_of(&r);
        if let Ok(job) = &res {
            let (inner, job) = (self.inner.clone(), job.clone());
            // Manifest and metrics IO off the async runtime, before the job counts as done
            // (the run does not end with results unwritten).
            let r = tokio::task::spawn_blocking(move || {
                inner.record_eval(&job, &r);
                r
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            let _ = self.inner.state.lock().expect("state lock").report_eval(&r);
        }
        self.inner.notify.notify_waiters();
        Ok(Response::new(ack(res)))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_transfer(
        &self,
        req: Request<TransferReport>,
    ) -> Result<Response<ReportAck>, Status> {
        let r = req.into_inner();
        let res = self
            .inner
            .state
            .lock()
            .expect("state lock")
            .report_transfer(&r);
        if res.is_ok() && !r.error.is_empty() {
            tracing::warn!(error = %r.error, "state copy to a joining worker failed; it is dropped");
        }
        if let Ok(Some(q)) = &res {
            tracing::info!(quorum = q.id, world_size = q.ranks.len(), members = ?q.ranks, "worker joined");
            self.inner.emit(
                "joined",
                serde_json::json!({"worker_id": r.worker_id, "step": r.step, "world_size": q.ranks.len()}),
            );
        }
        self.inner.notify.notify_waiters();
        Ok(Response::new(ack(res)))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            json: self.inner.status().to_string(),
        }))
    }
}
