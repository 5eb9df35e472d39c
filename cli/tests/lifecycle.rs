//! What orchestrators rely on: health and readiness endpoints, SIGTERM on a worker (it leaves
//! at a step boundary and exits 0 while the others go on) and on the coordinator (it commits a
//! last checkpoint; a restart resumes from it), and the exit codes.

use elf_e2e::{Elf, FT, T, assert_same_run, http_get, lines, serial};

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

fn sigterm(pid: u32) {
    let s = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn a_worker_sent_sigterm_leaves_at_a_step_boundary_and_the_run_goes_on_without_a_redo() {
    let _serial = serial();
    let steps = 16;
    let reference = tempfile::tempdir().unwrap();
    ELF.cluster(reference.path(), 1, steps, &FT).finish();
    let tmp = tempfile::tempdir().unwrap();
    let mut run = ELF.cluster(tmp.path(), 3, steps, &FT);
    let (_, http) = run.addresses();
    assert_eq!(http_get(&http, "/healthz"), "ok\n");
    let worker_http = run.workers[2].wait_event("ready", T)["http"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(http_get(&worker_http, "/healthz"), "ok\n");
    assert_eq!(http_get(&worker_http, "/readyz"), "registered\n");
    loop {
        if run.coordinator.wait_next("step", T)["step"]
            .as_u64()
            .unwrap()
            >= 4
        {
            break;
        }
    }
    assert!(http_get(&http, "/readyz").starts_with("serving: running"));
    sigterm(run.workers[2].pid());
    let s = run.workers[2].wait_exit(T);
    assert!(s.success(), "{s:?}\n{}", run.workers[2].logs());
    for w in &mut run.workers[..2] {
        assert!(w.wait_exit(T).success(), "{}", w.logs());
    }
    assert!(run.coordinator.wait_exit(T).success());
    let logs = run.coordinator.logs();
    assert!(
        logs.contains("worker w2 leaves after step") || logs.contains("worker w2 left the run"),
        "{logs}"
    );
    let train = lines(&tmp.path().join("metrics/train.jsonl"));
    assert_eq!(train.len() as u64, steps, "every step committed once");
    assert_eq!(train[0]["world_size"], 3);
    assert_eq!(train[steps as usize - 1]["world_size"], 2);
    assert!(!logs.contains("is redone"), "{logs}");
    assert_same_run(tmp.path(), reference.path(), "worker SIGTERM");
}

#[test]
fn a_coordinator_sent_sigterm_commits_a_checkpoint_and_a_restart_resumes_from_it() {
    let _serial = serial();
    let steps = 20u64;
    let reference = tempfile::tempdir().unwrap();
    ELF.cluster(reference.path(), 2, steps, &[]).finish();
    let tmp = tempfile::tempdir().unwrap();
    let mut run = ELF.cluster(tmp.path(), 2, steps, &[]);
    let addr = run.coordinator.wait_event("ready", T)["addr"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        if run.coordinator.wait_next("step", T)["step"]
            .as_u64()
            .unwrap()
            >= 5
        {
            break;
        }
    }
    sigterm(run.coordinator.pid());
    let stopped = run.coordinator.wait_next("terminated", T)["steps"]
        .as_u64()
        .unwrap();
    let s = run.coordinator.wait_exit(T);
    assert_eq!(s.code(), Some(1), "{}", run.coordinator.logs());
    assert!(
        run.coordinator.logs().contains("stopped by SIGTERM"),
        "{}",
        run.coordinator.logs()
    );
    let latest = std::fs::read_to_string(tmp.path().join("checkpoints/latest")).unwrap();
    assert_eq!(
        latest.trim(),
        elf_shared_step_dir(stopped - 1),
        "the last checkpoint is of the last committed step"
    );
    let max = format!("train.max_steps={steps}");
    let mut again = ELF.coordinator(
        "coordinator-2",
        tmp.path(),
        &["--workers", "2", "--listen", &addr, "--set", &max],
        &[],
    );
    let ready = again.wait_event("ready", T);
    assert_eq!(ready["start_step"].as_u64(), Some(stopped), "{ready}");
    for w in &mut run.workers {
        let s = w.wait_exit(T);
        assert!(
            s.success(),
            "{} failed\n{}{}",
            w.name,
            w.logs(),
            again.logs()
        );
    }
    again.expect_success(T);
    assert_same_run(tmp.path(), reference.path(), "coordinator SIGTERM");
}

fn elf_shared_step_dir(step: u64) -> String {
    format!("step-{step:09}")
}
