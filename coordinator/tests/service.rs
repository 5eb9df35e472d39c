//! The coordinator in process, mini-redis style: the real gRPC server and HTTP endpoint on
//! `127.0.0.1:0`, driven by the generated client as workers would (no burn, no data: the run is
//! sized from a row count). Covers the driver (commits, manifests, the end of a run), resume
//! with its metrics truncation, `/status`, long-polls and refusals on the wire.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use elf_coordinator::{Options, Outcome, Running};
use elf_protocol::wire::coordinator_client::CoordinatorClient;
use elf_protocol::wire::{self, NextDirectiveRequest};
use elf_shared::config::{Config, ResolvedConfig};
use elf_shared::ids::{Step, WorkerId};
use elf_shared::manifest::{ShardEntry, TensorEntry, shard_file};
use elf_shared::messages::{
    Admission, Applied, Directive, PROTOCOL_VERSION, Registration, Role, ShardOutcome, ShardReport,
    StateIndex, StepOutcome, StepReport, StepTimings, TrainStep,
};
use elf_shared::run::RunFacts;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

const CONFIG: &str = "global_batch_size: 8
max_length: 4
train:
  max_steps: 6
  branch_shard_size: 2
cluster:
  workers: 2
  heartbeat_ms: 100
  heartbeat_timeout_ms: 5000
checkpoint:
  interval_steps: 3
  keep_last: 2
";

fn config(dir: &Path) -> ResolvedConfig {
    Config::from_yaml(CONFIG, "service.yaml", dir, &[]).unwrap()
}

async fn start(dir: &Path, stop_after: Option<u64>) -> Running {
    let rc = config(dir);
    let facts = RunFacts::derive(&rc.config, 64).unwrap();
    elf_coordinator::start(
        rc,
        facts,
        Options {
            listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            flops_per_token: None,
            peak_flops: None,
            run: dir.display().to_string(),
            cache_dir: None,
            security: Default::default(),
            events: false,
            resume: None,
            stop_after,
        },
    )
    .await
    .unwrap()
}

/// A fake worker: the generated client and the worker's id.
struct Worker {
    id: WorkerId,
    client: CoordinatorClient<Channel>,
}

impl Worker {
    async fn register(running: &Running, id: &str) -> (Self, Admission) {
        let mut client = CoordinatorClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .unwrap();
        let reg = Registration {
            worker: id.into(),
            device: "cpu".into(),
            collective_addr: format!("127.0.0.1:{}", 1000 + id.len()),
            role: Role::Train,
            protocol_version: PROTOCOL_VERSION,
        };
        let adm = client
            .register(wire::RegisterRequest::from(reg))
            .await
            .unwrap()
            .into_inner();
        let worker = Self {
            id: id.into(),
            client,
        };
        (worker, Admission::try_from(adm).unwrap())
    }

    async fn directive(&mut self, after: Option<u64>) -> Directive {
        let d = self
            .client
            .next_directive(NextDirectiveRequest {
                worker_id: self.id.0.clone(),
                after_step: after,
            })
            .await
            .unwrap()
            .into_inner();
        Directive::try_from(d).unwrap()
    }

    /// Long-polls until the directive is not a wait.
    async fn next(&mut self, after: Option<u64>) -> Directive {
        loop {
            match self.directive(after).await {
                Directive::Wait { .. } => {}
                d => return d,
            }
        }
    }

    async fn report(&mut self, t: &TrainStep) {
        let r = StepReport {
            worker: self.id.clone(),
            step: t.step,
            quorum: t.quorum,
            rank: t.rank,
            outcome: StepOutcome::Applied(Applied {
                loss: 1.0 / (1.0 + t.step.0 as f64),
                param_digest: digest_of(t.step.0),
                ..Applied::default()
            }),
            timings: StepTimings::default(),
        };
        self.client
            .report_step(wire::StepReport::from(r))
            .await
            .unwrap();
    }

    /// Writes this rank's shard into `dir` and reports it (rank 0 with the state's index).
    async fn save(&mut self, t: &TrainStep, dir: &str) {
        let bytes = shard_bytes(t.rank, t.step.0);
        let file = shard_file(t.rank, t.world_size);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(Path::new(dir).join(&file), &bytes).unwrap();
        let r = ShardReport {
            worker: self.id.clone(),
            step: t.step,
            quorum: t.quorum,
            rank: t.rank,
            world_size: t.world_size,
            outcome: ShardOutcome::Uploaded {
                entry: ShardEntry {
                    file,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    size: bytes.len() as u64,
                    start: t.rank as u64,
                    len: 1,
                },
                index: (t.rank == 0).then(|| StateIndex {
                    tensors: vec![TensorEntry {
                        name: "params/w".into(),
                        shape: vec![2],
                        offset: 0,
                    }],
                    numel: 2,
                    optimizer_count: t.step.count(),
                }),
            },
        };
        self.client
            .report_shard(wire::ShardReport::from(r))
            .await
            .unwrap();
    }
}

/// The state after step `step`: `params/w` = [step, step].
fn state_of(step: u64) -> [f32; 2] {
    [step as f32; 2]
}

/// The parameter digest the workers report after `step`.
fn digest_of(step: u64) -> String {
    let bytes: Vec<u8> = state_of(step)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    hex::encode(Sha256::digest(&bytes))
}

/// Rank `rank`'s shard (of two) of the state after `step`: the piece `params/w@rank:rank+1`.
fn shard_bytes(rank: u32, step: u64) -> Vec<u8> {
    let v = state_of(step)[rank as usize].to_le_bytes();
    let mut json = serde_json::to_vec(&serde_json::json!({
        format!("params/w@{rank}:{}", rank + 1): {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    }))
    .unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(v);
    out
}

/// Trains steps until both workers are told the run is done; returns the steps trained.
async fn train(a: &mut Worker, b: &mut Worker, mut after: Option<u64>) -> Vec<u64> {
    let mut trained = vec![];
    loop {
        let (da, db) = tokio::join!(a.next(after), b.next(after));
        match (da, db) {
            (Directive::Train(ta), Directive::Train(tb)) => {
                assert_eq!((ta.step, ta.rank, tb.rank), (tb.step, 0, 1));
                for (w, t) in [(&mut *a, &ta), (&mut *b, &tb)] {
                    if let Some(dir) = &t.save_to {
                        w.save(t, dir).await;
                    }
                    w.report(t).await;
                }
                trained.push(ta.step.0);
                after = Some(ta.step.0);
            }
            (
                Directive::Done {
                    write_outputs: wa, ..
                },
                Directive::Done {
                    write_outputs: wb, ..
                },
            ) => {
                assert!(wa && !wb, "rank 0 writes the run's outputs");
                return trained;
            }
            other => panic!("{other:?}"),
        }
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn steps_of(path: PathBuf) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_commits_steps_and_checkpoints_and_reports_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let running = start(tmp.path(), None).await;
    let (mut a, adm) = Worker::register(&running, "a").await;
    assert_eq!(adm.heartbeat, Duration::from_millis(100));
    assert_eq!(adm.resume_from, None);
    assert_eq!(adm.config_hash, config(tmp.path()).config.hash().0);
    let status: serde_json::Value =
        serde_json::from_str(&get(running.http_addr, "/status")).unwrap();
    assert_eq!(status["phase"], "forming");
    assert_eq!(status["workers"].as_array().unwrap().len(), 1);
    let (mut b, _) = Worker::register(&running, "b").await;
    let status: serde_json::Value =
        serde_json::from_str(&get(running.http_addr, "/status")).unwrap();
    assert_eq!(
        (
            status["phase"].as_str(),
            status["quorum"]["world_size"].as_u64()
        ),
        (Some("running"), Some(2))
    );
    assert_eq!(status["run_id"], adm.run_id);
    let metrics = get(running.http_addr, "/metrics");
    assert!(metrics.contains("elf_quorum_size 2"), "{metrics}");
    assert_eq!(train(&mut a, &mut b, None).await, [0, 1, 2, 3, 4, 5]);
    assert_eq!(running.done.await.unwrap(), Outcome::Done { steps: 6 });
    // The driver recorded every commit and committed both checkpoints, in order.
    assert_eq!(
        steps_of(tmp.path().join("metrics/train.jsonl")),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(steps_of(tmp.path().join("metrics/rank-1.jsonl")).len(), 6);
    let ckpt = tmp.path().join("checkpoints");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("step-000000005/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        (m["step"].as_u64(), m["world_size"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(m["metrics"]["param_digest"], digest_of(5));
    assert_eq!(m["param_digest"], digest_of(5));
    assert_eq!(m["optimizer_count"], 6);
    assert!(ckpt.join("step-000000002/manifest.json").exists());
    assert_eq!(
        std::fs::read_to_string(ckpt.join("latest")).unwrap(),
        "step-000000005"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_starts_after_its_checkpoint_and_drops_the_metrics_it_trains_again() {
    let tmp = tempfile::tempdir().unwrap();
    let first = start(tmp.path(), Some(3)).await;
    let (mut a, _) = Worker::register(&first, "a").await;
    let (mut b, _) = Worker::register(&first, "b").await;
    assert_eq!(train(&mut a, &mut b, None).await, [0, 1, 2]);
    assert_eq!(first.done.await.unwrap(), Outcome::Done { steps: 3 });
    // A later process had trained further before it died: its lines are stale.
    let path = tmp.path().join("metrics/train.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    for s in 3..9 {
        writeln!(f, "{{\"step\":{s}}}").unwrap();
    }
    drop(f);
    let second = start(tmp.path(), None).await;
    assert_eq!(
        steps_of(path.clone()),
        [0, 1, 2],
        "steps 3.. are trained again"
    );
    let (mut a, adm) = Worker::register(&second, "a").await;
    assert!(
        adm.resume_from
            .as_deref()
            .is_some_and(|d| d.ends_with("checkpoints/step-000000002")),
        "{adm:?}"
    );
    let (mut b, _) = Worker::register(&second, "b").await;
    assert_eq!(train(&mut a, &mut b, None).await, [3, 4, 5]);
    assert_eq!(second.done.await.unwrap(), Outcome::Done { steps: 6 });
    assert_eq!(steps_of(path), [0, 1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_as_soon_as_the_step_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let running = start(tmp.path(), None).await;
    let (mut a, _) = Worker::register(&running, "a").await;
    let (mut b, _) = Worker::register(&running, "b").await;
    let (Directive::Train(ta), Directive::Train(tb)) = (a.next(None).await, b.next(None).await)
    else {
        panic!("not handed step 0")
    };
    a.report(&ta).await;
    let waiting = tokio::spawn(async move {
        let t0 = Instant::now();
        let d = a.directive(Some(0)).await;
        (d, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.report(&tb).await;
    let (d, took) = waiting.await.unwrap();
    assert!(
        matches!(&d, Directive::Train(t) if t.step == Step(1)),
        "{d:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the long-poll took {took:?} (its bound is 5 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_worker_with_their_status_code() {
    let tmp = tempfile::tempdir().unwrap();
    let running = start(tmp.path(), None).await;
    let mut client = CoordinatorClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    let mut req = wire::RegisterRequest::from(Registration {
        worker: "old".into(),
        device: "cpu".into(),
        collective_addr: "127.0.0.1:1".into(),
        role: Role::Train,
        protocol_version: 1,
    });
    let e = client.register(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "worker old speaks protocol 1, the coordinator speaks 2"
    );
    req.protocol_version = PROTOCOL_VERSION;
    req.role = 0;
    let e = client.register(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "malformed request: RegisterRequest: role is missing"
    );
    let e = client
        .report_step(wire::StepReport {
            worker_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // A client that never registered reports a shard: refused, and counted in /status.
    let forged = ShardReport {
        worker: "intruder".into(),
        step: Step(0),
        quorum: elf_shared::ids::QuorumId(1),
        rank: 0,
        world_size: 1,
        outcome: ShardOutcome::Failed {
            error: "anything".into(),
        },
    };
    let e = client
        .report_shard(wire::ShardReport::from(forged))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("worker intruder"), "{e:?}");
    let st = client
        .status(wire::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.refused_reports, 1);
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_long_polls_do_not_wake_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let running = start(tmp.path(), None).await;
    let (mut a, _) = Worker::register(&running, "a").await;
    let (mut b, _) = Worker::register(&running, "b").await;
    // c is a standby (the run has two workers and 8 does not split three ways).
    let (mut c, _) = Worker::register(&running, "c").await;
    let (Directive::Train(ta), Directive::Train(_tb)) = (a.next(None).await, b.next(None).await)
    else {
        panic!("not handed step 0")
    };
    a.report(&ta).await;
    // a waits for b's report, c for a place in the quorum: both long-poll for 2 s.
    let t0 = cpu_seconds();
    let (da, dc) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(2), a.directive(Some(0))),
        tokio::time::timeout(Duration::from_secs(2), c.directive(None)),
    );
    assert!(da.is_err() && dc.is_err(), "both were still waiting");
    let used = cpu_seconds() - t0;
    assert!(
        used < 0.5,
        "two waiting long-polls used {used:.2} CPU seconds in 2 s"
    );
}
