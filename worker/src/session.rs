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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use elf_shared::config::{Config, ResolvedConfig};
use elf_shared::events;
use elf_shared::ids::{QuorumId, WorkerId};
use elf_shared::messages::{Admission, Leave, PROTOCOL_VERSION, Registration, Role};
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
    /// The host peers reach the collective at (default: the bound address; for an
    /// unspecified bind address, `POD_IP` from the environment when set).
    pub advertise: Option<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub http_listen: String,
    /// How the gRPC channel to the coordinator is authenticated.
    pub security: elf_protocol::security::Security,
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

/// Returns the collective address a worker registers: `advertise` (or `POD_IP` from the
/// environment for an unspecified bind address) with the bound port.
pub fn advertised_addr(
    bound: std::net::SocketAddr,
    advertise: Option<&str>,
    pod_ip: Option<&str>,
) -> String {
    let host = match (advertise, pod_ip) {
        (Some(h), _) => h.to_string(),
        (None, Some(ip)) if bound.ip().is_unspecified() => ip.to_string(),
        _ => return bound.to_string(),
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, bound.port()).to_string(),
        Err(_) => format!("{host}:{}", bound.port()),
    }
}

impl Session {
    /// Connects (for `connect_timeout`), registers and starts the heartbeats.
    ///
    /// # Errors
    /// An unreachable coordinator, a refused registration, a config that does not hash to what
    /// the coordinator announced, or a listen address that cannot be bound.
    pub fn open(
        opts: &WorkerOptions,
        connect_timeout: Duration,
        probes: &Probes,
    ) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = TcpListener::bind(&opts.collective_listen)
            .with_context(|| format!("--collective {}: cannot bind", opts.collective_listen))?;
        let pod_ip = std::env::var("POD_IP").ok().filter(|s| !s.is_empty());
        let collective_addr = advertised_addr(
            listener.local_addr()?,
            opts.advertise.as_deref(),
            pod_ip.as_deref(),
        );
        let mut client = rt.block_on(Client::connect(
            &opts.coordinator,
            connect_timeout,
            &opts.security,
        ))?;
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
        let metrics = probes.metrics.clone();
        probes.set_ready(true);
        events::emit(
            "ready",
            json!({"role": "worker", "worker_id": opts.worker_id.0, "collective": collective_addr, "http": probes.addr.to_string()}),
        );
        tracing::info!(worker_id = %opts.worker_id, config_hash = %admission.config_hash, "registered");
        let ring = RingWatch::default();
        rt.spawn(leave_on_sigterm(
            client.clone(),
            opts.worker_id.clone(),
            probes.terminating.clone(),
        ));
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

/// A location the run's config names that this worker cannot reach (a path on another
/// host's disk, say): the run cannot go on here as configured.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} {path} is not reachable from this worker ({why}); every process of a run must reach it: use an object-store URL (s3://, gs://, az://) or a folder every host mounts"
)]
pub struct Unreachable {
    /// Which setting (`data_path`, `the run location`, ...).
    pub what: &'static str,
    /// Its value.
    pub path: String,
    /// What this worker saw.
    pub why: String,
}

/// Checks that this worker reaches what the config names: the run location and checkpoint
/// root (it reads back the marker the coordinator wrote there) and the datasets.
///
/// # Errors
/// The first location it cannot reach, or whose marker names another run.
pub fn check_reachable(a: &Admission, rc: &ResolvedConfig) -> Result<(), Unreachable> {
    use elf_store::Location;
    let marker = |what: &'static str, spec: &str| -> Result<(), Unreachable> {
        let fail = |why: String| Unreachable {
            what,
            path: spec.to_string(),
            why,
        };
        let loc = Location::parse(spec).map_err(|e| fail(e.to_string()))?;
        let bytes = loc
            .join("run.json")
            .read_all()
            .map_err(|e| fail(format!("cannot read the coordinator's run.json there: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("run.json: {e}")))?;
        if v["run_id"].as_str() != Some(a.run_id.as_str()) {
            return Err(fail(format!(
                "its run.json names run {}, not {}",
                v["run_id"], a.run_id
            )));
        }
        Ok(())
    };
    marker("the run location", &a.run_url)?;
    if !a.checkpoint_root.starts_with(&a.run_url) {
        marker("checkpoint.url", &a.checkpoint_root)?;
    }
    let c = &rc.config;
    for (what, p) in [
        ("data_path", &c.data_path),
        ("eval_data_path", &c.eval_data_path),
    ] {
        let Some(p) = p else { continue };
        let fail = |why: String| Unreachable {
            what,
            path: p.clone(),
            why,
        };
        let loc = Location::parse(p).map_err(|e| fail(e.to_string()))?;
        let found = loc.exists().map_err(|e| fail(e.to_string()))?
            || loc.is_dir().map_err(|e| fail(e.to_string()))?;
        if !found {
            return Err(fail("no such file or folder".into()));
        }
    }
    Ok(())
}

/// A worker process's HTTP endpoint, up for the whole process (across coordinator
/// sessions): `/healthz` (the process is alive; never tied to the coordinator), `/readyz`
/// (registered with a coordinator) and `/metrics`.
#[derive(Debug)]
pub struct Probes {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The worker's metrics (kept across sessions).
    pub metrics: Arc<WorkerMetrics>,
    ready: Arc<AtomicBool>,
    /// Turns true on SIGTERM: the worker leaves at the next step boundary.
    pub terminating: tokio::sync::watch::Receiver<bool>,
    _rt: tokio::runtime::Runtime,
}

impl Probes {
    /// Binds `listen` and serves on a thread of its own.
    ///
    /// # Errors
    /// An address that cannot be bound.
    pub fn start(listen: &str) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("elf-http")
            .enable_all()
            .build()?;
        let http = rt
            .block_on(tokio::net::TcpListener::bind(listen))
            .with_context(|| format!("--http {listen}: cannot bind"))?;
        let addr = http.local_addr()?;
        let metrics = Arc::new(WorkerMetrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let (m, r) = (metrics.clone(), ready.clone());
        rt.spawn(elf_protocol::http::serve(http, move |path| {
            let (m, r) = (m.clone(), r.clone());
            async move {
                match path.as_str() {
                    "/metrics" => (
                        200,
                        elf_protocol::http::PROMETHEUS,
                        elf_protocol::http::render(&m.registry),
                    ),
                    "/healthz" => (200, "text/plain", "ok\n".into()),
                    "/readyz" if r.load(Ordering::Relaxed) => {
                        (200, "text/plain", "registered\n".into())
                    }
                    "/readyz" => (503, "text/plain", "not registered\n".into()),
                    _ => (404, "text/plain", "not found\n".into()),
                }
            }
        }));
        let (term_tx, terminating) = tokio::sync::watch::channel(false);
        let mut sigterm = {
            let _guard = rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch for SIGTERM")?
        };
        rt.spawn(async move {
            if sigterm.recv().await.is_some() {
                tracing::warn!("SIGTERM: leaving the run at the next step boundary");
                let _ = term_tx.send(true);
            }
        });
        Ok(Self {
            addr,
            metrics,
            ready,
            terminating,
            _rt: rt,
        })
    }

    /// Returns true while registered with a coordinator.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Returns true once SIGTERM arrived.
    pub fn is_terminating(&self) -> bool {
        *self.terminating.borrow()
    }

    /// Marks the worker registered (ready) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// Tells the coordinator this worker leaves once SIGTERM arrives (it goes on with the step in
/// flight, if its peers were handed it, and is then told it is done).
async fn leave_on_sigterm(
    mut client: Client,
    worker: WorkerId,
    mut terminating: tokio::sync::watch::Receiver<bool>,
) {
    if terminating.wait_for(|t| *t).await.is_err() {
        return;
    }
    let leave = Leave {
        worker,
        error: None,
        invalid_config: false,
    };
    if let Err(e) = client.leave(leave).await {
        tracing::warn!(error = %e, "could not tell the coordinator this worker leaves");
    }
}

/// Heartbeats every `period` until the session's runtime stops.
async fn heartbeats(mut client: Client, worker: WorkerId, period: Duration, ring: RingWatch) {
    loop {
        tokio::time::sleep(period).await;
        match client.heartbeat(&worker).await {
            Ok(p) if !p.known => {
                // Evicted (a link was down, say): whatever ring it trains on went on without
                // it; the worker registers again as a standby.
                tracing::warn!("the coordinator no longer knows this worker; it registers again");
                ring.abort_if(|_| true);
            }
            Ok(p) => ring.abort_if(|q| p.aborts(q)),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::advertised_addr;

    #[test]
    fn the_registered_address_is_the_advertised_host_with_the_bound_port() {
        let any: std::net::SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(advertised_addr(lo, None, None), "127.0.0.1:4242");
        assert_eq!(advertised_addr(any, None, None), "0.0.0.0:7000");
        assert_eq!(
            advertised_addr(any, None, Some("10.0.0.7")),
            "10.0.0.7:7000"
        );
        // POD_IP stands in for an unspecified bind address only.
        assert_eq!(
            advertised_addr(lo, None, Some("10.0.0.7")),
            "127.0.0.1:4242"
        );
        assert_eq!(
            advertised_addr(any, Some("w1.elf"), Some("10.0.0.7")),
            "w1.elf:7000"
        );
        assert_eq!(
            advertised_addr(any, Some("fd00::5"), None),
            "[fd00::5]:7000"
        );
    }
}
