//! The worker's side of the coordinator connection: connect with backoff, typed calls in
//! domain types, and the one mapping from a gRPC `Status` to a [`ClientError`] that tells a
//! lost coordinator (retriable: reconnect and register again) from a refusal or a server error
//! (fatal: the worker stops).

use std::time::{Duration, Instant};

use elf_protocol::DecodeError;
use elf_protocol::security::Security;
use elf_protocol::wire::coordinator_client::CoordinatorClient;
use elf_protocol::wire::{self, HeartbeatRequest, NextDirectiveRequest};
use elf_shared::ids::{Step, WorkerId};
use elf_shared::messages::{
    Admission, Directive, EvalReport, Leave, Pulse, Registration, ShardReport, StepReport,
    TransferReport,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A failed call to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made before the timeout.
    #[error("cannot reach the coordinator at {url} within {secs} s: {source}")]
    Unreachable {
        /// The coordinator's URL.
        url: String,
        /// The timeout.
        secs: u64,
        /// The last connect error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection broke, or the coordinator is (for now) unavailable: retriable.
    #[error("coordinator {url}: connection lost: {}", status.message())]
    Lost {
        /// The coordinator's URL.
        url: String,
        /// What the transport said.
        #[source]
        status: Status,
    },
    /// The coordinator refused the request (a protocol mismatch, a stale report, a failed
    /// run): fatal.
    #[error("coordinator {url} refused: {}", status.message())]
    Refused {
        /// The coordinator's URL.
        url: String,
        /// Its answer.
        #[source]
        status: Status,
    },
    /// The coordinator failed to answer (an internal or unknown server error): fatal, not a
    /// lost connection.
    #[error("coordinator {url}: server error ({:?}): {}", status.code(), status.message())]
    Server {
        /// The coordinator's URL.
        url: String,
        /// Its answer.
        #[source]
        status: Status,
    },
    /// The coordinator does not know this worker (it was evicted while its link was down, or
    /// the coordinator restarted): retriable, by registering again (as a standby).
    #[error("coordinator {url} no longer knows this worker: {}", status.message())]
    Forgotten {
        /// The coordinator's URL.
        url: String,
        /// Its answer.
        #[source]
        status: Status,
    },
    /// The coordinator refused to admit this worker (a protocol mismatch, an address peers
    /// cannot reach, a failed run): a restart would be refused again.
    #[error("coordinator {url} refused to admit this worker: {}", status.message())]
    NotAdmitted {
        /// The coordinator's URL.
        url: String,
        /// Its answer.
        #[source]
        status: Status,
    },
    /// The coordinator URL or the security setting cannot be used.
    #[error("coordinator {url}: {message}")]
    Config {
        /// The coordinator's URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The coordinator's answer does not decode.
    #[error("coordinator {url}: {source}")]
    Decode {
        /// The coordinator's URL.
        url: String,
        /// What is wrong with the answer.
        #[source]
        source: DecodeError,
    },
}

impl ClientError {
    /// True when reconnecting (and registering again) may help.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Lost { .. } | Self::Forgotten { .. })
    }

    /// True when the coordinator refused to admit this worker, or its URL or security
    /// setting cannot be used (exit code 3: a restart fails the same way).
    pub fn is_not_admitted(&self) -> bool {
        matches!(self, Self::NotAdmitted { .. } | Self::Config { .. })
    }
}

/// Maps a `Status` from a call to `url` to the worker's error: a status the transport made
/// (it carries the transport error as its source) or an `Unavailable`, `DeadlineExceeded` or
/// `Cancelled` is a lost coordinator; the coordinator's own refusals (`FailedPrecondition`,
/// `InvalidArgument`, ...) are [`ClientError::Refused`], except `NotFound` (an unknown
/// worker: [`ClientError::Forgotten`]); anything else the server answered is
/// [`ClientError::Server`].
pub fn from_status(url: &str, status: Status) -> ClientError {
    let url = url.to_string();
    let from_transport = std::error::Error::source(&status).is_some();
    match status.code() {
        _ if from_transport => ClientError::Lost { url, status },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            ClientError::Lost { url, status }
        }
        Code::NotFound => ClientError::Forgotten { url, status },
        Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Aborted => ClientError::Refused { url, status },
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss | Code::ResourceExhausted => {
            ClientError::Server { url, status }
        }
    }
}

/// A connection to the coordinator, speaking domain types.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    inner: CoordinatorClient<Channel>,
    /// `Bearer <join token>`, sent with every call in token mode.
    token: Option<MetadataValue<Ascii>>,
}

/// Wraps `m` in a request carrying the join token, if any.
fn authed<T>(token: &Option<MetadataValue<Ascii>>, m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if let Some(t) = token {
        r.metadata_mut()
            .insert(elf_protocol::security::AUTHORIZATION, t.clone());
    }
    r
}

impl Client {
    /// Connects to `url`, retrying with backoff for `timeout`.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] after `timeout`.
    pub async fn connect(
        url: &str,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let bad = |message: String| ClientError::Config {
            url: url.to_string(),
            message,
        };
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| bad(e.to_string()))?
            .http2_keep_alive_interval(elf_protocol::GRPC_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(elf_protocol::GRPC_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let host = endpoint.uri().host().unwrap_or_default().to_string();
        if let Some(tls) = security.client_tls(&host) {
            if !url.starts_with("https://") {
                return Err(bad(format!(
                    "--security {} uses TLS: the coordinator URL must start with https://",
                    security.name()
                )));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        } else if security.token().is_some()
            && !elf_protocol::security::is_loopback(&format!("{host}:0"))
        {
            return Err(bad(
                "--security token beyond loopback needs TLS (--tls-dir with the run's ca.crt)"
                    .into(),
            ));
        }
        let token = match security.token() {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| bad("the join token is not printable ASCII".into()))?,
            ),
            None => None,
        };
        let deadline = Instant::now() + timeout;
        let mut wait = Duration::from_millis(100);
        loop {
            match endpoint.connect().await {
                Ok(channel) => {
                    return Ok(Self {
                        url: url.to_string(),
                        inner: CoordinatorClient::new(channel)
                            .max_decoding_message_size(elf_protocol::MAX_MESSAGE_BYTES)
                            .max_encoding_message_size(elf_protocol::MAX_MESSAGE_BYTES),
                        token,
                    });
                }
                Err(e) if Instant::now() + wait < deadline => {
                    tracing::warn!(error = %e, "coordinator not reachable yet, retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(source) => {
                    return Err(ClientError::Unreachable {
                        url: url.to_string(),
                        secs: timeout.as_secs(),
                        source,
                    });
                }
            }
        }
    }

    /// Returns the coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn status(&self, s: Status) -> ClientError {
        from_status(&self.url, s)
    }

    fn decode(&self, source: DecodeError) -> ClientError {
        ClientError::Decode {
            url: self.url.clone(),
            source,
        }
    }

    /// Registers; returns what the worker needs to train.
    ///
    /// # Errors
    /// As [`from_status`], or an answer that does not decode.
    pub async fn register(&mut self, r: Registration) -> Result<Admission, ClientError> {
        let resp = self
            .inner
            .register(authed(&self.token, wire::RegisterRequest::from(r)))
            .await
            .map_err(|s| match self.status(s) {
                ClientError::Refused { url, status } => ClientError::NotAdmitted { url, status },
                e => e,
            })?;
        Admission::try_from(resp.into_inner()).map_err(|e| self.decode(e))
    }

    /// Proves liveness.
    ///
    /// # Errors
    /// As [`from_status`].
    pub async fn heartbeat(&mut self, w: &WorkerId) -> Result<Pulse, ClientError> {
        let resp = self
            .inner
            .heartbeat(authed(
                &self.token,
                HeartbeatRequest {
                    worker_id: w.0.clone(),
                },
            ))
            .await
            .map_err(|s| self.status(s))?;
        Ok(resp.into_inner().into())
    }

    /// Waits (bounded) for what to do after applying `after`.
    ///
    /// # Errors
    /// As [`from_status`], or a directive that does not decode.
    pub async fn next_directive(
        &mut self,
        w: &WorkerId,
        after: Option<Step>,
    ) -> Result<Directive, ClientError> {
        let resp = self
            .inner
            .next_directive(authed(
                &self.token,
                NextDirectiveRequest {
                    worker_id: w.0.clone(),
                    after_step: after.map(|s| s.0),
                },
            ))
            .await
            .map_err(|s| self.status(s))?;
        Directive::try_from(resp.into_inner()).map_err(|e| self.decode(e))
    }

    /// Reports a step.
    ///
    /// # Errors
    /// As [`from_status`].
    pub async fn report_step(&mut self, r: StepReport) -> Result<(), ClientError> {
        self.inner
            .report_step(authed(&self.token, wire::StepReport::from(r)))
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    /// Reports a checkpoint shard.
    ///
    /// # Errors
    /// As [`from_status`].
    pub async fn report_shard(&mut self, r: ShardReport) -> Result<(), ClientError> {
        self.inner
            .report_shard(authed(&self.token, wire::ShardReport::from(r)))
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    /// Reports an eval job.
    ///
    /// # Errors
    /// As [`from_status`].
    pub async fn report_eval(&mut self, r: EvalReport) -> Result<(), ClientError> {
        self.inner
            .report_eval(authed(&self.token, wire::EvalReport::from(r)))
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    /// Reports one side of a state copy.
    ///
    /// # Errors
    /// As [`from_status`].
    pub async fn report_transfer(&mut self, r: TransferReport) -> Result<(), ClientError> {
        self.inner
            .report_transfer(authed(&self.token, wire::TransferReport::from(r)))
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    /// Leaves the run: gracefully at the next step boundary, or with this worker's error.
    ///
    /// # Errors
    /// As [`from_status`].
    pub async fn leave(&mut self, l: Leave) -> Result<(), ClientError> {
        self.inner
            .leave(authed(&self.token, wire::LeaveRequest::from(l)))
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_lost_refused_or_server_errors() {
        let url = "http://127.0.0.1:1";
        let kind = |s: Status| match from_status(url, s) {
            ClientError::Lost { .. } => "lost",
            ClientError::Refused { .. } => "refused",
            ClientError::Server { .. } => "server",
            _ => "other",
        };
        // What the coordinator answers for its refusals (elf_coordinator::refusal).
        assert_eq!(kind(Status::failed_precondition("stale report")), "refused");
        assert_eq!(
            kind(Status::invalid_argument("malformed request")),
            "refused"
        );
        // The coordinator shutting down, or a transport that gave up.
        assert_eq!(kind(Status::unavailable("the run is over")), "lost");
        assert_eq!(kind(Status::deadline_exceeded("slow")), "lost");
        // An error the server itself answered is not a lost coordinator...
        assert_eq!(kind(Status::unknown("panicked")), "server");
        assert_eq!(kind(Status::internal("bug")), "server");
        // ...but the same codes made by the transport from a broken connection are.
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(kind(broken), "lost");
        let e = from_status(url, Status::failed_precondition("stale report from w0"));
        assert!(!e.is_retriable());
        assert_eq!(
            e.to_string(),
            "coordinator http://127.0.0.1:1 refused: stale report from w0"
        );
    }
}
