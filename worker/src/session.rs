//! A worker's session with one coordinator: connect, register, check the shipped config
//! against its hash, serve `/metrics`, and heartbeat in the background. A session lasts until
//! the run ends or the coordinator is lost; a new coordinator means a new session.
//!
//! # Heartbeats and the ring
//! The training loop blocks in the collective; heartbeats run beside it on the session's
//! runtime. Each heartbeat answer names the current quorum and whether its collective is
//! broken; when the ring this worker trains on belongs to an older quorum, or to a broken one,
//! the heartbeat task aborts it ([`RingWatch`]), so a survivor blocked on a frozen peer learns
//! at once instead of at the collective timeout.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use elf_shared::config::{Config, ResolvedConfig};
use elf_shared::events;
use elf_shared::ids::{QuorumId, WorkerId};
use elf_shared::messages::{Admission, PROTOCOL_VERSION, Registration, Role};
use serde_json::json;

use crate::client::Client;
use crate::collective::Aborter;
use crate::metrics::WorkerMetrics;

/// Per-process facts of a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Coordinator URL (`http://host:port`).
    pub coordinator: String,
    /// Stable identity.
    pub worker_id: WorkerId,
    /// Device name reported to the coordinator.
    pub device: String,
    /// Where the collective listens (`127.0.0.1:0` picks a port).
    pub collective_listen: String,
    /// Where `/metrics` listens.
    pub http_listen: String,
    /// How long to keep trying to reach the coordinator at start.
    pub connect_timeout: Duration,
    /// Train, or eval for a dedicated eval worker (runs the coordinator's eval jobs only).
    pub role: Role,
    /// How long to keep trying to reach a coordinator that went away mid-run.
    pub reconnect_timeout: Duration,
}

/// The ring a worker trains on, for the heartbeat task to abort.
#[derive(Debug, Clone, Default)]
pub struct RingWatch(Arc<Mutex<Option<(QuorumId, Aborter)>>>);

impl RingWatch {
    /// Records the ring of quorum `q` (`None`: no ring).
    pub fn set(&self, ring: Option<(QuorumId, Aborter)>) {
        *self.0.lock().expect("ring lock") = ring;
    }

    fn abort_if(&self, aborts: impl Fn(QuorumId) -> bool) {
        let w = self.0.lock().expect("ring lock");
        if let Some((q, aborter)) = w.as_ref()
            && aborts(*q)
        {
            tracing::warn!(
                quorum = q.0,
                "the quorum changed or broke; aborting the ring"
            );
            aborter.abort();
        }
    }
}

/// A registered worker's connection to its coordinator.
#[derive(Debug)]
pub struct Session {
    /// The runtime the coordinator calls (and the heartbeats, `/metrics`) run on.
    pub rt: tokio::runtime::Runtime,
    /// The coordinator.
    pub client: Client,
    /// What registration returned.
    pub admission: Admission,
    /// The config every worker trains with (shipped by the coordinator).
    pub rc: ResolvedConfig,
    /// The collective's listener (bound before registering; its address was registered).
    pub listener: TcpListener,
    /// The ring the heartbeats may abort.
    pub ring: RingWatch,
    /// This worker's metrics.
    pub metrics: Arc<WorkerMetrics>,
}

impl Session {
    /// Connects (for `connect_timeout`), registers and starts the heartbeats.
    ///
    /// # Errors
    /// An unreachable coordinator, a refused registration, a config that does not hash to what
    /// the coordinator announced, or a listen address that cannot be bound.
    pub fn open(opts: &WorkerOptions, connect_timeout: Duration) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = TcpListener::bind(&opts.collective_listen)
            .with_context(|| format!("--collective {}: cannot bind", opts.collective_listen))?;
        let collective_addr = listener.local_addr()?.to_string();
        let mut client = rt.block_on(Client::connect(&opts.coordinator, connect_timeout))?;
        let admission = rt.block_on(client.register(Registration {
            worker: opts.worker_id.clone(),
            device: opts.device.clone(),
            collective_addr: collective_addr.clone(),
            role: opts.role,
            protocol_version: PROTOCOL_VERSION,
        }))?;
        let rc = Config::from_yaml(
            &admission.config_yaml,
            "config from the coordinator",
            std::path::Path::new("."),
            &[],
        )?;
        if rc.config.hash().0 != admission.config_hash {
            anyhow::bail!(
                "the config from the coordinator hashes to {} but was announced as {}",
                rc.config.hash(),
                admission.config_hash
            );
        }
        let metrics = Arc::new(WorkerMetrics::new());
        let http = rt
            .block_on(tokio::net::TcpListener::bind(&opts.http_listen))
            .with_context(|| format!("--http {}: cannot bind", opts.http_listen))?;
        let http_addr = http.local_addr()?;
        let m = metrics.clone();
        rt.spawn(elf_protocol::http::serve(http, move |path| {
            let m = m.clone();
            async move {
                match path.as_str() {
                    "/metrics" => (
                        200,
                        elf_protocol::http::PROMETHEUS,
                        elf_protocol::http::render(&m.registry),
                    ),
                    _ => (404, "text/plain", "not found\n".into()),
                }
            }
        }));
        events::emit(
            "ready",
            json!({"role": "worker", "worker_id": opts.worker_id.0, "collective": collective_addr, "http": http_addr.to_string()}),
        );
        tracing::info!(worker_id = %opts.worker_id, config_hash = %admission.config_hash, "registered");
        let ring = RingWatch::default();
        rt.spawn(heartbeats(
            client.clone(),
            opts.worker_id.clone(),
            admission.heartbeat,
            ring.clone(),
        ));
        Ok(Self {
            rt,
            client,
            admission,
            rc,
            listener,
            ring,
            metrics,
        })
    }
}

/// Heartbeats every `period` until the session's runtime stops.
async fn heartbeats(mut client: Client, worker: WorkerId, period: Duration, ring: RingWatch) {
    loop {
        tokio::time::sleep(period).await;
        match client.heartbeat(&worker).await {
            Ok(p) if !p.known => tracing::warn!("the coordinator no longer knows this worker"),
            Ok(p) => ring.abort_if(|q| p.aborts(q)),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
