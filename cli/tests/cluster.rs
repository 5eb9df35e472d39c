//! The cluster end to end: a real coordinator process and real worker processes on loopback.
//!
//! World-size tolerance: the 2- and 4-worker runs sum the same per-shard gradients in another
//! order, so they may differ from the 1-worker run by float round-off only. We require
//! per-step losses within 1e-5 relative and final parameters within 1e-4 of the largest
//! parameter magnitude (measured: ~1e-7 and ~1e-6 after 12 Muon steps).

use std::path::{Path, PathBuf};
use std::time::Duration;

use elf_e2e::{Proc, http_get};
use elf_model::weights::TensorFile;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// The tests start several processes each; on a 2-core machine they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn elf() -> &'static str {
    env!("CARGO_BIN_EXE_elf")
}

fn config() -> String {
    root().join("configs/tiny.yaml").display().to_string()
}

/// A coordinator and `n` workers training `steps` steps of the tiny config into `dir`.
struct Run {
    coordinator: Proc,
    workers: Vec<Proc>,
}

impl Run {
    fn start(dir: &Path, n: usize, steps: u64, extra: &[&str]) -> Self {
        Self::start_env(dir, n, steps, extra, &[], &|_| vec![])
    }

    /// As `start`, with environment variables for the coordinator and for worker `i`.
    fn start_env(
        dir: &Path,
        n: usize,
        steps: u64,
        extra: &[&str],
        coordinator_env: &[(&str, &str)],
        worker_env: &dyn Fn(usize) -> Vec<(&'static str, &'static str)>,
    ) -> Self {
        let d = dir.display().to_string();
        let cfg = config();
        let max = format!("train.max_steps={steps}");
        let nn = n.to_string();
        let mut args = vec![
            "coordinator",
            "--config",
            &cfg,
            "--run-dir",
            &d,
            "--workers",
            &nn,
            "--set",
            &max,
        ];
        args.extend_from_slice(extra);
        let mut coordinator = Proc::spawn("coordinator", elf(), &args, coordinator_env);
        let ready = coordinator.wait_event("ready", T);
        let url = format!("http://{}", ready["addr"].as_str().unwrap());
        let workers = (0..n)
            .map(|i| {
                Proc::spawn(
                    &format!("worker-{i}"),
                    elf(),
                    &[
                        "worker",
                        "--coordinator",
                        &url,
                        "--worker-id",
                        &format!("w{i}"),
                    ],
                    &[vec![("RAYON_NUM_THREADS", "1")], worker_env(i)].concat(),
                )
            })
            .collect();
        Self {
            coordinator,
            workers,
        }
    }

    fn finish(mut self) {
        for w in &mut self.workers {
            let s = w.wait_exit(T);
            assert!(
                s.success(),
                "{} failed\n{}{}",
                w.name,
                w.logs(),
                self.coordinator.logs()
            );
        }
        self.coordinator.expect_success(T);
    }
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let f = TensorFile::open(&dir.join("final.safetensors")).unwrap();
    f.names()
        .into_iter()
        .map(|n| {
            let shape = f.shape(&n).unwrap();
            let v = f.get_f32(&n, &shape).unwrap();
            (n, v)
        })
        .collect()
}

#[test]
fn one_two_and_four_workers_train_the_same_model() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let steps = 12;
    let mut results = vec![];
    for n in [1usize, 2, 4] {
        let dir = tmp.path().join(format!("w{n}"));
        Run::start(&dir, n, steps, &[]).finish();
        let train = lines(&dir.join("metrics/train.jsonl"));
        assert_eq!(train.len() as u64, steps, "one line per step");
        // Every replica's digest is equal at every step.
        let ranks: Vec<Vec<Value>> = (0..n)
            .map(|r| lines(&dir.join(format!("metrics/rank-{r}.jsonl"))))
            .collect();
        for s in 0..steps as usize {
            for r in &ranks {
                assert_eq!(
                    r[s]["param_digest"], train[s]["param_digest"],
                    "{n} workers, step {s}"
                );
            }
            assert_eq!(train[s]["world_size"], n);
        }
        results.push((n, train, params(&dir)));
    }
    let (_, base_train, base_params) = &results[0];
    let scale = base_params
        .iter()
        .flat_map(|(_, v)| v)
        .fold(0f32, |m, x| m.max(x.abs()));
    for (n, train, p) in &results[1..] {
        for (a, b) in train.iter().zip(base_train) {
            let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * y.abs(),
                "{n} workers, step {}: loss {x} vs {y}",
                a["step"]
            );
        }
        for ((name, a), (_, b)) in p.iter().zip(base_params) {
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= 1e-4 * scale,
                "{n} workers: {name} differs by {err} (scale {scale})"
            );
        }
    }
}

#[test]
fn the_same_seed_twice_gives_bit_identical_metrics_files() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        Run::start(&tmp.path().join(name), 2, 6, &[]).finish();
    }
    for f in ["train.jsonl", "rank-0.jsonl", "rank-1.jsonl"] {
        let a = std::fs::read(tmp.path().join("a/metrics").join(f)).unwrap();
        let b = std::fs::read(tmp.path().join("b/metrics").join(f)).unwrap();
        assert!(!a.is_empty());
        assert_eq!(a, b, "{f} differs between identical runs");
    }
}

fn promtool(text: &str) {
    use std::io::Write;
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: .ci/run installs it");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool rejected:\n{}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn metrics_and_status_endpoints_are_valid_while_training() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut run = Run::start(tmp.path(), 2, 400, &[]);
    let http = run.coordinator.wait_event("ready", T)["http"]
        .as_str()
        .unwrap()
        .to_string();
    run.coordinator.wait_event("step", T);
    let worker_http = run.workers[0].wait_event("ready", T)["http"]
        .as_str()
        .unwrap()
        .to_string();
    let coord = http_get(&http, "/metrics");
    for name in [
        "elf_steps_committed_total",
        "elf_step_seconds",
        "elf_tokens_per_second",
        "elf_loss",
        "elf_quorum_size",
        "elf_heartbeat_age_seconds",
        "elf_allreduce_seconds",
        "elf_allreduce_bytes",
    ] {
        assert!(coord.contains(name), "{name} missing:\n{coord}");
    }
    promtool(&coord);
    let worker = http_get(&worker_http, "/metrics");
    assert!(
        worker.contains("elf_worker_allreduce_bytes_total")
            && worker.contains("elf_worker_step_seconds"),
        "{worker}"
    );
    promtool(&worker);
    let status: Value = serde_json::from_str(&http_get(&http, "/status")).unwrap();
    assert_eq!(status["phase"], "running");
    assert_eq!(status["quorum"]["world_size"], 2);
    assert_eq!(status["workers"].as_array().unwrap().len(), 2);
    assert!(status["step"].as_u64().unwrap() >= 1);
    assert!(status["last_losses"]["loss"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_worker_that_cannot_reach_the_coordinator_fails_with_one_line() {
    let _serial = serial();
    let mut w = Proc::spawn(
        "worker",
        elf(),
        &[
            "worker",
            "--coordinator",
            "http://127.0.0.1:9",
            "--connect-timeout-s",
            "1",
        ],
        &[],
    );
    assert!(!w.wait_exit(T).success());
    let e = w.error_lines();
    assert_eq!(e.len(), 1, "{}", w.logs());
    assert!(
        e[0].contains("cannot reach the coordinator at http://127.0.0.1:9"),
        "{}",
        e[0]
    );
}

#[test]
fn configs_the_coordinator_rejects_fail_with_one_line() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "max_length: 32\nglobal_batch_sise: 16\n").unwrap();
    let d = tmp.path().display().to_string();
    let mut c = Proc::spawn(
        "coordinator",
        elf(),
        &[
            "coordinator",
            "--config",
            bad.to_str().unwrap(),
            "--run-dir",
            &d,
        ],
        &[],
    );
    assert!(!c.wait_exit(T).success());
    let e = c.error_lines();
    assert!(
        e.len() == 1 && e[0].contains("bad.yaml") && e[0].contains("global_batch_sise"),
        "{e:?}"
    );
    let mut c = Proc::spawn(
        "coordinator",
        elf(),
        &[
            "coordinator",
            "--config",
            &config(),
            "--run-dir",
            &d,
            "--workers",
            "3",
        ],
        &[],
    );
    assert!(!c.wait_exit(T).success());
    let e = c.error_lines();
    assert!(
        e.len() == 1 && e[0].contains("3 workers cannot split global_batch_size 16"),
        "{e:?}"
    );
}

/// Fault-tolerance settings of the kill tests: 3 workers need a batch of 24 (whole shards of
/// 4 for 3 and for 2 ranks); failures are detected within 3 s.
const FT: [&str; 6] = [
    "--set",
    "global_batch_size=24",
    "--set",
    "cluster.heartbeat_timeout_ms=3000",
    "--set",
    "cluster.collective_timeout_ms=20000",
];

/// Kills (or freezes) worker 2 of 3 once step 8 committed; the survivors must commit a step
/// within 10 s and the run must end with the parameters of an uninterrupted run.
fn lose_a_worker(signal: &str) {
    let _serial = serial();
    let steps = 24;
    let reference = tempfile::tempdir().unwrap();
    let r = Run::start(reference.path(), 1, steps, &FT);
    r.finish();
    let tmp = tempfile::tempdir().unwrap();
    let mut run = Run::start(tmp.path(), 3, steps, &FT);
    loop {
        let e = run.coordinator.wait_next("step", T);
        if e["step"].as_u64().unwrap() >= 8 {
            break;
        }
    }
    let pid = run.workers[2].pid().to_string();
    let t0 = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let at_kill = run.coordinator.wait_next("step", T)["step"]
        .as_u64()
        .unwrap();
    // Steps already in flight may commit at once; wait for one the survivors did alone.
    let mut next = at_kill;
    while next <= at_kill + 1 {
        next = run.coordinator.wait_next("step", T)["step"]
            .as_u64()
            .unwrap();
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "survivors committed step {next} {took:?} after the kill\n{}",
        run.coordinator.logs()
    );
    let frozen = run.workers.pop().unwrap();
    for w in &mut run.workers {
        let s = w.wait_exit(T);
        assert!(
            s.success(),
            "{} failed\n{}{}",
            w.name,
            w.logs(),
            run.coordinator.logs()
        );
    }
    run.coordinator.expect_success(T);
    drop(frozen); // SIGKILL, also for the frozen one
    let train = lines(&tmp.path().join("metrics/train.jsonl"));
    assert_eq!(train.len() as u64, steps, "every step committed once");
    assert_eq!(train[0]["world_size"], 3);
    assert_eq!(train[steps as usize - 1]["world_size"], 2);
    assert_same_run(tmp.path(), reference.path(), &format!("kill {signal}"));
}

#[test]
fn a_killed_worker_is_dropped_and_the_run_ends_as_an_uninterrupted_one() {
    lose_a_worker("-KILL");
}

#[test]
fn a_frozen_worker_is_evicted_and_the_run_ends_as_an_uninterrupted_one() {
    lose_a_worker("-STOP");
}

fn train(dir: &Path, workers: usize, extra: &[&str]) -> std::process::Output {
    train_env(dir, workers, extra, &[])
}

fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (
        lines(&a.join("metrics/train.jsonl")),
        lines(&b.join("metrics/train.jsonl")),
    );
    assert_eq!(ta.len(), tb.len(), "{what}: steps");
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!(x["step"], y["step"]);
        let (p, q) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!(
            (p - q).abs() <= 1e-5 * q.abs(),
            "{what}: step {} loss {p} vs {q}",
            x["step"]
        );
    }
    let (pa, pb) = (params(a), params(b));
    let scale = pb
        .iter()
        .flat_map(|(_, v)| v)
        .fold(0f32, |m, x| m.max(x.abs()));
    for ((name, x), (_, y)) in pa.iter().zip(&pb) {
        let err = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err <= 1e-4 * scale, "{what}: {name} differs by {err}");
    }
}

#[test]
fn resuming_at_another_world_size_continues_the_same_run() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    train(&whole, 2, &[]);
    for workers in [1usize, 4] {
        let dir = tmp.path().join(format!("resumed-{workers}"));
        train(&dir, 2, &["--stop-after", "8"]);
        assert_eq!(lines(&dir.join("metrics/train.jsonl")).len(), 8);
        let o = train(&dir, workers, &[]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("resuming"),
            "did not resume"
        );
        assert_same_run(&dir, &whole, &format!("2 workers, then {workers}"));
        let last = lines(&dir.join("metrics/train.jsonl")).pop().unwrap();
        assert_eq!(last["world_size"], workers);
    }
}

#[test]
fn a_corrupt_shard_is_refused_and_the_previous_checkpoint_is_used() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    train(&whole, 2, &[]);
    let dir = tmp.path().join("cut");
    train(&dir, 2, &["--stop-after", "8"]);
    let shard = dir.join("checkpoints/step-000000007/shard-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let v = std::process::Command::new(elf())
        .args([
            "checkpoint",
            "verify",
            dir.join("checkpoints").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!v.status.success());
    let e = String::from_utf8_lossy(&v.stderr);
    assert!(
        e.contains("shard-00001-of-00002.safetensors") && e.contains("hash mismatch"),
        "{e}"
    );
    let o = train(&dir, 2, &[]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("skipping a corrupt checkpoint")
            && log.contains("shard-00001-of-00002.safetensors"),
        "{log}"
    );
    assert!(
        log.contains("step=3"),
        "must resume from the previous committed step:\n{log}"
    );
    assert_same_run(&dir, &whole, "resumed past a corrupt shard");
}

#[test]
fn checkpoint_files_load_in_numpy_through_safetensors() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    train(tmp.path(), 1, &["--stop-after", "4"]);
    let shard = tmp
        .path()
        .join("checkpoints/step-000000003/shard-00000-of-00001.safetensors");
    let script = "import sys; from safetensors.numpy import load_file; t = load_file(sys.argv[1]); \
                  print(t['params/blocks_0/attn/qkv/kernel'].shape, len(t))";
    let o = std::process::Command::new("python3")
        .args(["-c", script, shard.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("(32, 96)"), "{out}");
    let m = std::process::Command::new(elf())
        .args([
            "checkpoint",
            "inspect",
            tmp.path().join("checkpoints").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let manifest: Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(manifest["step"], 3);
    assert_eq!(manifest["next_step"], 4);
    assert_eq!(manifest["world_size"], 1);
}

/// moto's S3 server on loopback, stopped on drop.
struct S3 {
    child: std::process::Child,
    port: u16,
}

impl S3 {
    fn start(port: u16) -> Self {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/s3_server.py");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (installed by scripts/test.sh)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("moto did not start: {line:?}"));
        Self { child, port }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn stop(mut self) -> u16 {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn train_env(
    dir: &Path,
    workers: usize,
    extra: &[&str],
    env: &[(&'static str, String)],
) -> std::process::Output {
    let d = dir.display().to_string();
    let w = workers.to_string();
    let mut args = vec![
        "train",
        "--config",
        "configs/tiny.yaml",
        "--run-dir",
        &d,
        "--workers",
        &w,
        "--set",
        "checkpoint.interval_steps=4",
        "--set",
        "train.max_steps=12",
    ];
    args.extend_from_slice(extra);
    let mut cmd = std::process::Command::new(elf());
    cmd.args(&args).current_dir(root()).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "elf train {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn checkpoints_on_s3_commit_list_and_resume_at_another_world_size() {
    let _serial = serial();
    let s3 = S3::start(0);
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    train(&whole, 2, &[]);
    let dir = tmp.path().join("s3run");
    let url = "checkpoint.url=s3://elf-test/runs/one";
    train_env(&dir, 2, &["--set", url, "--stop-after", "8"], &env);
    let mut ls = std::process::Command::new(elf());
    ls.args(["checkpoint", "ls", "s3://elf-test/runs/one"]);
    for (k, v) in &env {
        ls.env(k, v);
    }
    let o = ls.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("step-000000003")
            && out.contains("step-000000007")
            && out.contains("(latest)"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !dir.join("checkpoints").exists(),
        "checkpoints must go to the store, not the run dir"
    );
    let o = train_env(&dir, 1, &["--set", url], &env);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"));
    assert_same_run(&dir, &whole, "S3 checkpoints, 2 workers then 1");
}

#[test]
fn a_storage_outage_fails_saves_without_stopping_training() {
    let _serial = serial();
    let s3 = S3::start(0);
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display().to_string();
    let cfg = config();
    let args = [
        "coordinator",
        "--config",
        &cfg,
        "--run-dir",
        &d,
        "--workers",
        "1",
        "--set",
        "train.max_steps=60",
        "--set",
        "checkpoint.interval_steps=2",
        "--set",
        "checkpoint.url=s3://elf-test/outage",
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut coordinator = Proc::spawn("coordinator", elf(), &args, &env_ref);
    let url = format!(
        "http://{}",
        coordinator.wait_event("ready", T)["addr"].as_str().unwrap()
    );
    let mut w_env = env_ref.clone();
    w_env.push(("RAYON_NUM_THREADS", "1"));
    let mut worker = Proc::spawn(
        "worker",
        elf(),
        &["worker", "--coordinator", &url, "--worker-id", "w0"],
        &w_env,
    );
    coordinator.wait_next("checkpoint", T);
    let port = s3.stop();
    // Saves fail and are reported; training goes on.
    let failed = coordinator.wait_next("checkpoint_failed", T);
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("could not save step"),
        "{failed}"
    );
    let during = coordinator.wait_next("step", T)["step"].as_u64().unwrap();
    let s3 = S3::start(port);
    // A save started after the store is back commits (one caught mid-retry by the outage may
    // commit late, which is fine), and the run completes.
    loop {
        let step = coordinator.wait_next("checkpoint", T)["step"]
            .as_u64()
            .unwrap();
        if step > during {
            break;
        }
    }
    worker.expect_success(T);
    coordinator.expect_success(T);
    let m = std::process::Command::new(elf())
        .args(["checkpoint", "verify", "s3://elf-test/outage"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    drop(s3);
}

fn eval_settings(gpt2: &str) -> Vec<String> {
    [
        "checkpoint.interval_steps=5",
        "eval.every_checkpoints=2",
        "eval.at_end=true",
        "eval.num_samples=3",
        &format!("eval.gpt2={gpt2}"),
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.to_string()])
    .collect()
}

/// Eval jobs: every second committed checkpoint and the last one, on a dedicated eval worker
/// (training never runs them) and, without one, on rank 0 between steps; both write the same
/// results into the manifests, `metrics/eval.jsonl`, `/status` and Prometheus.
#[test]
fn eval_jobs_run_on_an_eval_worker_or_between_steps_and_land_in_the_manifests() {
    let _serial = serial();
    let gpt2 = root()
        .join("model/tests/fixtures/gpt2")
        .display()
        .to_string();
    let settings = eval_settings(&gpt2);
    // A dedicated eval worker; jobs never fall back to the training workers.
    let a = tempfile::tempdir().unwrap();
    let mut extra: Vec<&str> = settings.iter().map(String::as_str).collect();
    extra.extend(["--set", "eval.on_training_workers=false"]);
    let mut run = Run::start(a.path(), 1, 20, &extra);
    let ready = run.coordinator.wait_event("ready", T);
    let (url, http) = (
        format!("http://{}", ready["addr"].as_str().unwrap()),
        ready["http"].as_str().unwrap().to_string(),
    );
    let mut eval_worker = Proc::spawn(
        "eval-worker",
        elf(),
        &[
            "worker",
            "--coordinator",
            &url,
            "--worker-id",
            "e0",
            "--role",
            "eval",
        ],
        &[("RAYON_NUM_THREADS", "1")],
    );
    let first = run.coordinator.wait_event("eval", T);
    assert_eq!(
        first["step"], 9,
        "every second checkpoint: steps 4, 9, 14, 19 -> 9, 19"
    );
    let status: Value = serde_json::from_str(&http_get(&http, "/status")).unwrap();
    assert_eq!(status["last_eval"]["step"], 9, "{status}");
    let metrics = http_get(&http, "/metrics");
    assert!(
        metrics.contains("elf_eval_value{metric=\"ppl\""),
        "{metrics}"
    );
    assert!(metrics.contains("elf_eval_jobs_total 1"), "{metrics}");
    promtool(&metrics);
    let s = eval_worker.wait_exit(T);
    assert!(s.success(), "eval worker failed\n{}", eval_worker.logs());
    // The eval worker hears DONE only after training is over.
    assert!(
        !run_logs_mention(&run, "evaluating"),
        "the training worker ran an eval job"
    );
    run.finish();
    let evals = lines(&a.path().join("metrics/eval.jsonl"));
    assert_eq!(
        evals
            .iter()
            .map(|e| e["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [9, 19]
    );
    for e in &evals {
        let step = e["step"].as_u64().unwrap();
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(
                a.path()
                    .join(format!("checkpoints/step-{step:09}/manifest.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(m["eval"]["results"], e["results"], "step {step}");
        assert_eq!(m["eval"]["worker"], "e0");
        for r in e["results"].as_array().unwrap() {
            assert!(r["ppl"].as_f64().unwrap() > 1.0, "{r}");
            assert_eq!(r["samples"], 3);
        }
    }
    let m14: Value = serde_json::from_str(
        &std::fs::read_to_string(a.path().join("checkpoints/step-000000014/manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(m14["eval"].is_null(), "step 14 is not evaluated");
    // No eval worker: rank 0 evaluates between steps, with the same results.
    let b = tempfile::tempdir().unwrap();
    let d = b.path().display().to_string();
    let mut args = vec![
        "train",
        "--config",
        "configs/tiny.yaml",
        "--run-dir",
        &d,
        "--workers",
        "1",
    ];
    args.extend(settings.iter().map(String::as_str));
    let o = std::process::Command::new(elf())
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines(&b.path().join("metrics/eval.jsonl")), evals);
    let log = std::fs::read_to_string(b.path().join("logs/worker-0.log")).unwrap();
    assert!(log.contains("evaluating"), "{log}");
}

fn run_logs_mention(run: &Run, what: &str) -> bool {
    run.workers.iter().any(|w| w.logs().contains(what))
}

/// The coordinator is killed after a checkpoint committed and restarted on the same address:
/// it resumes from the object store, the workers reconnect, register again, load that
/// checkpoint and finish the run with the parameters of an uninterrupted one.
#[test]
fn a_restarted_coordinator_resumes_and_the_workers_reconnect() {
    let _serial = serial();
    let steps = 20u64;
    let extra = ["--set", "checkpoint.interval_steps=4"];
    let reference = tempfile::tempdir().unwrap();
    Run::start(reference.path(), 2, steps, &extra).finish();
    let tmp = tempfile::tempdir().unwrap();
    let mut run = Run::start(tmp.path(), 2, steps, &extra);
    let addr = run.coordinator.wait_event("ready", T)["addr"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        if run.coordinator.wait_next("checkpoint", T)["step"]
            .as_u64()
            .unwrap()
            >= 7
        {
            break;
        }
    }
    run.coordinator.kill();
    let d = tmp.path().display().to_string();
    let max = format!("train.max_steps={steps}");
    let mut again = Proc::spawn(
        "coordinator-2",
        elf(),
        &[
            "coordinator",
            "--config",
            &config(),
            "--run-dir",
            &d,
            "--workers",
            "2",
            "--listen",
            &addr,
            "--set",
            &max,
            "--set",
            "checkpoint.interval_steps=4",
        ],
        &[],
    );
    let ready = again.wait_event("ready", T);
    assert!(
        ready["resumed_from"]
            .as_str()
            .is_some_and(|s| s.contains("step-")),
        "{ready}"
    );
    for w in &mut run.workers {
        let s = w.wait_exit(T);
        assert!(
            s.success(),
            "{} failed\n{}{}",
            w.name,
            w.logs(),
            again.logs()
        );
        assert!(
            w.logs().contains("lost the coordinator; reconnecting"),
            "{}",
            w.logs()
        );
    }
    again.expect_success(T);
    assert_same_run(tmp.path(), reference.path(), "coordinator restart");
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + T;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The coordinator dies between a checkpoint's shards and its manifest: that step was never
/// committed; `latest` still names the previous one, and a resumed run starts from it.
#[test]
fn a_coordinator_killed_before_the_manifest_leaves_the_previous_checkpoint_latest() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("checkpoints");
    let mut run = Run::start_env(
        tmp.path(),
        1,
        40,
        &["--set", "checkpoint.interval_steps=4"],
        &[("ELF_FAILPOINT_MANIFEST_DELAY_MS", "1500")],
        &|_| vec![],
    );
    assert_eq!(run.coordinator.wait_next("checkpoint", T)["step"], 3);
    let shard7 = ckpt.join("step-000000007/shard-00000-of-00001.safetensors");
    wait_for("the shard of step 7", || shard7.exists());
    run.coordinator.kill();
    run.workers[0].kill();
    assert!(!ckpt.join("step-000000007/manifest.json").exists());
    assert_eq!(
        std::fs::read_to_string(ckpt.join("latest")).unwrap().trim(),
        "step-000000003"
    );
    let d = tmp.path().display().to_string();
    let mut again = Proc::spawn(
        "coordinator-2",
        elf(),
        &[
            "coordinator",
            "--config",
            &config(),
            "--run-dir",
            &d,
            "--workers",
            "1",
            "--set",
            "train.max_steps=40",
            "--set",
            "checkpoint.interval_steps=4",
        ],
        &[],
    );
    let ready = again.wait_event("ready", T);
    assert_eq!(ready["start_step"], 4, "{ready}");
    assert!(
        ready["resumed_from"]
            .as_str()
            .unwrap()
            .ends_with("step-000000003"),
        "{ready}"
    );
}

/// A rank killed while it uploads its shard: that checkpoint never commits (no manifest), the
/// survivors go on in a smaller quorum, later checkpoints commit, and the run ends as an
/// uninterrupted one.
#[test]
fn a_rank_killed_mid_upload_never_commits_that_checkpoint() {
    let _serial = serial();
    let steps = 24;
    let mut extra = FT.to_vec();
    extra.extend(["--set", "checkpoint.interval_steps=4"]);
    let reference = tempfile::tempdir().unwrap();
    Run::start(reference.path(), 1, steps, &extra).finish();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("checkpoints");
    let mut run = Run::start_env(tmp.path(), 3, steps, &extra, &[], &|i| {
        if i == 2 {
            vec![("ELF_FAILPOINT_UPLOAD_DELAY_MS", "60000")]
        } else {
            vec![]
        }
    });
    let s0 = ckpt.join("step-000000003/shard-00000-of-00003.safetensors");
    wait_for("rank 0's shard of step 3", || s0.exists());
    run.workers[2].kill();
    let done = run.coordinator.wait_next("checkpoint", T)["step"]
        .as_u64()
        .unwrap();
    assert!(done > 3, "a later checkpoint commits (got {done})");
    run.workers.pop();
    run.finish();
    assert!(
        !ckpt.join("step-000000003/manifest.json").exists(),
        "the checkpoint rank 2 never finished must not be committed"
    );
    assert_same_run(tmp.path(), reference.path(), "rank killed mid-upload");
}

/// A worker started while 2 train joins at a step boundary: rank 0 copies its state to it
/// directly, the quorum grows to 3, and the run ends as an uninterrupted one.
#[test]
fn a_worker_joining_mid_run_gets_a_peers_state_and_enters_the_quorum() {
    let _serial = serial();
    let steps = 24;
    let reference = tempfile::tempdir().unwrap();
    Run::start(reference.path(), 1, steps, &FT).finish();
    let tmp = tempfile::tempdir().unwrap();
    let mut run = Run::start(tmp.path(), 2, steps, &FT);
    let url = format!(
        "http://{}",
        run.coordinator.wait_event("ready", T)["addr"]
            .as_str()
            .unwrap()
    );
    loop {
        if run.coordinator.wait_next("step", T)["step"]
            .as_u64()
            .unwrap()
            >= 6
        {
            break;
        }
    }
    run.workers.push(Proc::spawn(
        "worker-2",
        elf(),
        &["worker", "--coordinator", &url, "--worker-id", "w2"],
        &[("RAYON_NUM_THREADS", "1")],
    ));
    let joined = run.coordinator.wait_next("joined", T);
    assert_eq!(
        (joined["worker_id"].as_str(), joined["world_size"].as_u64()),
        (Some("w2"), Some(3))
    );
    run.finish();
    let train = lines(&tmp.path().join("metrics/train.jsonl"));
    assert_eq!(train.len() as u64, steps);
    assert_eq!(train[0]["world_size"], 2);
    assert_eq!(train[steps as usize - 1]["world_size"], 3);
    assert_same_run(tmp.path(), reference.path(), "a worker joined");
}
