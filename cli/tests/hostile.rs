//! Bad input end to end (issue #15's probes): a non-finite config value, a non-finite step, a
//! manifest changed after it was written, and a worker's own error reaching the top. Each one
//! names the key, step, file or row, exits non-zero where the run cannot go on, and leaves
//! every committed checkpoint in place.

use std::path::Path;
use std::process::{Command, Output};

use elf_e2e::{Elf, assert_same_run, serial};
use elf_shared::manifest::Manifest;

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

/// `elf train` of the tiny config (12 steps, checkpoints every 4) that may fail.
fn train(dir: &Path, workers: usize, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let (d, w) = (dir.display().to_string(), workers.to_string());
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
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    ELF.run_train(&args, &env)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn verify(root: &Path) -> Output {
    Command::new(ELF.0)
        .args(["checkpoint", "verify", root.to_str().unwrap()])
        .output()
        .unwrap()
}

fn committed_steps(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.path()
                .join("manifest.json")
                .exists()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_non_finite_or_out_of_range_config_value_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (set, says) in [
        ("lr=.nan", "lr: must be a finite number, got .nan"),
        ("lr=.inf", "lr: must be a finite number, got .inf"),
        ("lr=1e300", "lr must be in (0, 1], got 1e300"),
    ] {
        let o = train(tmp.path(), 1, &["--set", set], &[]);
        assert_eq!(o.status.code(), Some(3), "{set}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{set}: {}", stderr(&o));
    }
    assert!(
        !tmp.path().join("checkpoints").exists(),
        "nothing ran on a refused config"
    );
}

#[test]
fn a_non_finite_step_is_never_applied_or_committed_and_fails_the_run_unless_skipping_is_asked() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nan");
    let o = train(&dir, 2, &[], &[("ELF_FAILPOINT_NONFINITE", "6")]);
    let log = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(
        log.contains("run failed: step 6: the gradient norm is NaN; nothing was applied"),
        "{log}"
    );
    // Step 3's checkpoint is the last: step 7's would hold a state after the bad step.
    assert_eq!(
        committed_steps(&dir.join("checkpoints")),
        ["step-000000003"]
    );
    assert!(verify(&dir.join("checkpoints")).status.success());
    // Asked to skip one: the run completes, the step's batch dropped, the state finite.
    let dir = tmp.path().join("skip");
    let o = train(
        &dir,
        2,
        &["--set", "train.skip_nonfinite=1"],
        &[("ELF_FAILPOINT_NONFINITE", "6")],
    );
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("step 6 skipped: the gradient norm is NaN"),
        "{log}"
    );
    let v = verify(&dir.join("checkpoints"));
    assert!(v.status.success(), "{}", stderr(&v));
}

#[test]
fn a_manifest_changed_after_it_was_written_is_refused_and_the_previous_step_is_used() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ELF.train(&whole, 2, &[]);
    let dir = tmp.path().join("edited");
    ELF.train(&dir, 2, &["--stop-after", "8"]);
    let path = dir.join("checkpoints/step-000000007/manifest.json");
    let pristine = std::fs::read_to_string(&path).unwrap();
    // One digit of a tensor offset, as an editor would change it.
    let mut v: serde_json::Value = serde_json::from_str(&pristine).unwrap();
    let off = v["tensors"][3]["offset"].as_u64().unwrap();
    v["tensors"][3]["offset"] = (off + 1).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let o = verify(&dir.join("checkpoints"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("step-000000007/manifest.json")
            && stderr(&o).contains("manifest_sha256"),
        "{}",
        stderr(&o)
    );
    // A forger who recomputes the hash: 10^15 elements is refused before any allocation.
    let mut m: Manifest = serde_json::from_str(&pristine).unwrap();
    m.numel = 1_000_000_000_000_000;
    m.manifest_sha256 = m.own_hash();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let o = verify(&dir.join("checkpoints"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("numel"), "{}", stderr(&o));
    // The run resumes from step 3, and nothing committed was deleted or replaced.
    let o = ELF.train(&dir, 2, &[]);
    let log = stderr(&o);
    assert!(
        log.contains("skipping a corrupt checkpoint") && log.contains("step=3"),
        "{log}"
    );
    assert_same_run(&dir, &whole, "resumed past an edited manifest");
}

#[test]
fn a_workers_own_error_reaches_the_top_naming_the_row() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.parquet");
    let script = "import pyarrow as pa, pyarrow.parquet as pq, sys\n\
rows = [[(7 * i + j) % 500 + 5 for j in range(12)] for i in range(64)]\n\
rows[40][3] = -4\n\
pq.write_table(pa.table({'input_ids': pa.array(rows, type=pa.list_(pa.int64()))}), sys.argv[1])\n";
    let py = Command::new("python3")
        .args(["-c", script, data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let set = format!("data_path={}", data.display());
    let o = train(&tmp.path().join("run"), 2, &["--set", &set], &[]);
    let log = stderr(&o);
    assert!(!o.status.success(), "{log}");
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains("run failed: worker")
            && last.contains("bad.parquet")
            && last.contains("row 40: input_ids has a negative or non-integer id"),
        "the last line must carry the worker's own error:\n{log}"
    );
    assert!(!last.contains("missed heartbeats"), "{last}");
}
