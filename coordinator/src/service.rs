//! The gRPC service: decodes a request into the model's input, hands it to the driver, awaits
//! the reply and encodes it. Nothing is decided here. `NextDirective` long-polls (bounded):
//! while the answer is "wait", it asks again each time the model changes.

use std::time::Duration;

use elf_protocol::security::{self, CertRole, Security};
use elf_protocol::wire;
use elf_protocol::wire::coordinator_server::Coordinator;
use elf_shared::ids::{Step, WorkerId};
use elf_shared::messages::{Admission, Directive, Registration};
use tonic::{Request, Response, Status};

use crate::driver::Handle;
use crate::refusal::Refusal;
use crate::state::{Input, Reply};

/// How long one `NextDirective` call waits before answering `Wait`.
const LONG_POLL: Duration = Duration::from_secs(5);

/// The coordinator's gRPC service.
#[derive(Debug, Clone)]
pub struct Service {
    /// The driver.
    pub driver: Handle,
    /// What every admitted worker receives.
    pub admission: Admission,
    /// How callers are authenticated.
    pub security: Security,
}

/// Who may make a call: the roles a client certificate may carry for it (mutual TLS).
const WORKERS: &[CertRole] = &[CertRole::Train, CertRole::Eval];
const ANYONE: &[CertRole] = &[CertRole::Train, CertRole::Eval, CertRole::Admin];

impl Service {
    /// Checks the caller's credentials for a call named `call` that `roles` may make: the
    /// join token in token mode, the client certificate's role in mutual-TLS mode.
    fn authorize<T>(&self, req: &Request<T>, call: &str, roles: &[CertRole]) -> Result<(), Status> {
        if let Some(token) = self.security.token() {
            let header = req
                .metadata()
                .get(security::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !security::token_matches(token, header) {
                return Err(Status::unauthenticated(format!(
                    "{call}: missing or wrong join token"
                )));
            }
        }
        if self.security.is_mtls() {
            let role = req
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|c| security::cert_role(c)));
            match role {
                None => {
                    return Err(Status::permission_denied(format!(
                        "{call}: the client certificate carries no role (subject OU train, eval or admin)"
                    )));
                }
                Some(r) if !roles.contains(&r) => {
                    return Err(Status::permission_denied(format!(
                        "{call}: a client certificate of role {r:?} may not make this call"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn decode<W, D>(w: W) -> Result<D, Status>
where
    D: TryFrom<W, Error = elf_protocol::DecodeError>,
{
    D::try_from(w).map_err(|e| Status::from(Refusal::from(e)))
}

impl Service {
    async fn call(&self, input: Input) -> Result<Reply, Status> {
        match self.driver.call(input).await? {
            Reply::Refused(r) => Err(r.into()),
            r => Ok(r),
        }
    }

    async fn report(&self, input: Input) -> Result<Response<wire::Ack>, Status> {
        self.call(input).await?;
        Ok(Response::new(wire::Ack {}))
    }
}

fn unexpected(r: Reply) -> Status {
    Status::internal(format!("the coordinator answered {r:?}"))
}

#[tonic::async_trait]
impl Coordinator for Service {
    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id))]
    async fn register(
        &self,
        req: Request<wire::RegisterRequest>,
    ) -> Result<Response<wire::RegisterResponse>, Status> {
        let wants = match wire::Role::try_from(req.get_ref().role) {
            Ok(wire::Role::Eval) => &[CertRole::Eval][..],
            _ => &[CertRole::Train][..],
        };
        self.authorize(&req, "Register", wants)?;
        let r: Registration = decode(req.into_inner())?;
        match self.call(Input::Register(r)).await {
            Ok(Reply::Admitted { load_checkpoint }) => {
                let mut admission = self.admission.clone();
                if !load_checkpoint {
                    // A standby receives a live peer's state; the run's start checkpoint is
                    // stale for it (and retention may have deleted it).
                    admission.resume_from = None;
                }
                Ok(Response::new(admission.into()))
            }
            Ok(r) => Err(unexpected(r)),
            Err(e) => {
                tracing::warn!(reason = %e.message(), "registration refused");
                Err(e)
            }
        }
    }

    async fn heartbeat(
        &self,
        req: Request<wire::HeartbeatRequest>,
    ) -> Result<Response<wire::HeartbeatResponse>, Status> {
        self.authorize(&req, "heartbeat", WORKERS)?;
        let w = WorkerId(req.into_inner().worker_id);
        match self.call(Input::Heartbeat(w)).await? {
            Reply::Pulse(p) => Ok(Response::new(p.into())),
            r => Err(unexpected(r)),
        }
    }

    async fn next_directive(
        &self,
        req: Request<wire::NextDirectiveRequest>,
    ) -> Result<Response<wire::Directive>, Status> {
        self.authorize(&req, "next_directive", WORKERS)?;
        let r = req.into_inner();
        let (worker, after) = (WorkerId(r.worker_id), r.after_step.map(Step));
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        let mut changes = self.driver.changes();
        loop {
            // Mark the current version seen before asking, so a change in between wakes us.
            changes.borrow_and_update();
            let input = Input::NextDirective {
                worker: worker.clone(),
                after,
            };
            let d = match self.call(input).await? {
                Reply::Directive(d) => d,
                r => return Err(unexpected(r)),
            };
            if !matches!(d, Directive::Wait { .. }) || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(d.into()));
            }
            tokio::select! {
                c = changes.changed() => if c.is_err() { return Err(Refusal::Closed.into()) },
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_step(
        &self,
        req: Request<wire::StepReport>,
    ) -> Result<Response<wire::Ack>, Status> {
        self.authorize(&req, "report_step", WORKERS)?;
        self.report(Input::ReportStep(decode(req.into_inner())?))
            .await
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_shard(
        &self,
        req: Request<wire::ShardReport>,
    ) -> Result<Response<wire::Ack>, Status> {
        self.authorize(&req, "report_shard", WORKERS)?;
        self.report(Input::ReportShard(decode(req.into_inner())?))
            .await
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_eval(
        &self,
        req: Request<wire::EvalReport>,
    ) -> Result<Response<wire::Ack>, Status> {
        self.authorize(&req, "report_eval", WORKERS)?;
        self.report(Input::ReportEval(decode(req.into_inner())?))
            .await
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, step = req.get_ref().step))]
    async fn report_transfer(
        &self,
        req: Request<wire::TransferReport>,
    ) -> Result<Response<wire::Ack>, Status> {
        self.authorize(&req, "report_transfer", WORKERS)?;
        self.report(Input::ReportTransfer(req.into_inner().into()))
            .await
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id))]
    async fn leave(&self, req: Request<wire::LeaveRequest>) -> Result<Response<wire::Ack>, Status> {
        self.authorize(&req, "leave", WORKERS)?;
        self.report(Input::Leave(req.into_inner().into())).await
    }

    async fn status(
        &self,
        req: Request<wire::StatusRequest>,
    ) -> Result<Response<wire::RunStatus>, Status> {
        self.authorize(&req, "status", ANYONE)?;
        Ok(Response::new(self.driver.status().await?.into()))
    }
}
