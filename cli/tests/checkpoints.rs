//! Checkpoints end to end: resuming at another world size, a corrupt shard, the files in
//! numpy, checkpoints on a real S3 endpoint (moto on loopback), and a storage outage.

use elf_e2e::{Elf, S3, T, assert_same_run, lines, serial};
use serde_json::Value;

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

#[test]
fn resuming_at_another_world_size_continues_the_same_run() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ELF.train(&whole, 2, &[]);
    for workers in [1usize, 4] {
        let dir = tmp.path().join(format!("resumed-{workers}"));
        ELF.train(&dir, 2, &["--stop-after", "8"]);
        assert_eq!(lines(&dir.join("metrics/train.jsonl")).len(), 8);
        let o = ELF.train(&dir, workers, &[]);
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
    ELF.train(&whole, 2, &[]);
    let dir = tmp.path().join("cut");
    ELF.train(&dir, 2, &["--stop-after", "8"]);
    let shard = dir.join("checkpoints/step-000000007/shard-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let v = std::process::Command::new(ELF.0)
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
    let o = ELF.train(&dir, 2, &[]);
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
    ELF.train(tmp.path(), 1, &["--stop-after", "4"]);
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
    let m = std::process::Command::new(ELF.0)
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

#[test]
fn checkpoints_on_s3_commit_list_and_resume_at_another_world_size() {
    let _serial = serial();
    let s3 = S3::start(0);
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ELF.train(&whole, 2, &[]);
    let dir = tmp.path().join("s3run");
    let url = "checkpoint.url=s3://elf-test/runs/one";
    ELF.train_env(&dir, 2, &["--set", url, "--stop-after", "8"], &env);
    let mut ls = std::process::Command::new(ELF.0);
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
    let o = ELF.train_env(&dir, 1, &["--set", url], &env);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"));
    assert_same_run(&dir, &whole, "S3 checkpoints, 2 workers then 1");
}

#[test]
fn a_storage_outage_fails_saves_without_stopping_training() {
    let _serial = serial();
    let s3 = S3::start(0);
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let args = [
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
    let mut coordinator = ELF.coordinator("coordinator", tmp.path(), &args, &env_ref);
    let url = format!(
        "http://{}",
        coordinator.wait_event("ready", T)["addr"].as_str().unwrap()
    );
    let mut w_env = env_ref.clone();
    w_env.push(("RAYON_NUM_THREADS", "1"));
    let mut worker = ELF.worker("worker", &url, "w0", &w_env);
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
    let m = std::process::Command::new(ELF.0)
        .args(["checkpoint", "verify", "s3://elf-test/outage"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    drop(s3);
}
