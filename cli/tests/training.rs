//! Training as a cluster, end to end: a real coordinator process and real worker processes on
//! loopback. World-size tolerance: see `elf_e2e::assert_same_run`.

use elf_e2e::{Elf, Proc, T, http_get, lines, params, promtool, serial};
use serde_json::Value;

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

#[test]
fn one_two_and_four_workers_train_the_same_model() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let steps = 12;
    let mut results = vec![];
    for n in [1usize, 2, 4] {
        let dir = tmp.path().join(format!("w{n}"));
        ELF.cluster(&dir, n, steps, &[]).finish();
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
        ELF.cluster(&tmp.path().join(name), 2, 6, &[]).finish();
    }
    for f in ["train.jsonl", "rank-0.jsonl", "rank-1.jsonl"] {
        let a = std::fs::read(tmp.path().join("a/metrics").join(f)).unwrap();
        let b = std::fs::read(tmp.path().join("b/metrics").join(f)).unwrap();
        assert!(!a.is_empty());
        assert_eq!(a, b, "{f} differs between identical runs");
    }
}

#[test]
fn metrics_and_status_endpoints_are_valid_while_training() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut run = ELF.cluster(tmp.path(), 2, 400, &[]);
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
        ELF.0,
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
        ELF.0,
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
    let mut c = ELF.coordinator("coordinator", tmp.path(), &["--workers", "3"], &[]);
    assert!(!c.wait_exit(T).success());
    let e = c.error_lines();
    assert!(
        e.len() == 1 && e[0].contains("3 workers cannot split global_batch_size 16"),
        "{e:?}"
    );
}
