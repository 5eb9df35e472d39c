//! The `elf` binary end to end: configs, model tools, data preparation and single-process
//! training, each run as a real process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use elf_model::weights::{HostTensor, TensorFile, write_safetensors};
use serde_json::Value;

fn root() -> PathBuf {
    elf_e2e::repo_root()
}

fn elf(args: &[&str]) -> Output {
    elf_e2e::run_in_repo(env!("CARGO_BIN_EXE_elf"), args)
}

use elf_e2e::{err_line, ok};

mod common;

#[test]
fn model_params_counts_presets_from_built_modules() {
    assert_eq!(
        ok(&elf(&["model", "params", "--model", "ELF-B"])).trim(),
        "104579940"
    );
    let e = err_line(&elf(&["model", "params", "--model", "ELF-X"]));
    assert!(e.contains("ELF-X"), "{e}");
}

#[test]
fn every_shipped_config_validates_and_round_trips() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        let p = entry.unwrap().path();
        if !matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            continue;
        }
        let out = ok(&elf(&["config", "check", p.to_str().unwrap()]));
        let hash = out
            .lines()
            .last()
            .unwrap()
            .trim_start_matches("# config hash: ")
            .to_string();
        // The printed YAML is the resolved config: it must load again to the same hash.
        let dir = tempfile::tempdir().unwrap();
        let again = dir.path().join("resolved.yaml");
        std::fs::write(&again, &out).unwrap();
        let out2 = ok(&elf(&["config", "check", again.to_str().unwrap()]));
        assert_eq!(
            out2.lines()
                .last()
                .unwrap()
                .trim_start_matches("# config hash: "),
            hash,
            "{}",
            p.display()
        );
        n += 1;
    }
    assert!(n >= 7, "{n} configs");
}

/// The config `deploy/` ships in its ConfigMap loads and validates, with its data on the store.
#[test]
fn the_deployed_config_is_valid() {
    let out = ok(&elf(&["config", "check", "deploy/k8s/common/config.yaml"]));
    assert!(out.contains("data_path: s3://"), "{out}");
}

#[test]
fn paper_configs_carry_the_spec_values() {
    let out = ok(&elf(&["config", "check", "configs/train_owt_ELF-B.yml"]));
    for needle in [
        "max_length: 1024",
        "latent_std: 0.2",
        "denoiser_p_mean: -1.5",
        "decoder_noise_scale: 5.0",
        "warmup_epochs: 0.5",
        "warmup_steps: -1",
        "sde_gamma: 1.5",
        "seed: 42",
    ] {
        assert!(out.contains(needle), "{needle} missing in\n{out}");
    }
    // The reference keys that cannot apply are reported, and the hash stays the last line.
    for needle in [
        "# no effect here: use_wandb (",
        "# no effect here: wandb_run_name (",
    ] {
        assert!(out.contains(needle), "{needle} missing in\n{out}");
    }
    assert!(
        out.lines().last().unwrap().starts_with("# config hash: "),
        "{out}"
    );
    let out = ok(&elf(&["config", "check", "configs/train_de-en_ELF-B.yml"]));
    assert!(
        out.contains("pad_token: eos")
            && out.contains("max_input_length: 64")
            && out.contains("label_drop_prob: 0.1")
    );
}

#[test]
fn typos_and_bad_values_fail_with_one_line_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("typo.yaml");
    std::fs::write(&p, "max_length: 64\ndecoder_porb: 0.2\n").unwrap();
    let e = err_line(&elf(&["config", "check", p.to_str().unwrap()]));
    assert!(e.contains("typo.yaml") && e.contains("decoder_porb"), "{e}");
    std::fs::write(&p, "max_length: [1, 2]\n").unwrap();
    let e = err_line(&elf(&["config", "check", p.to_str().unwrap()]));
    assert!(e.contains("typo.yaml") && e.contains("max_length"), "{e}");
    let e = err_line(&elf(&[
        "config",
        "check",
        "configs/tiny.yaml",
        "--set",
        "nope=1",
    ]));
    assert!(e.contains("--set") || e.contains("nope"), "{e}");
    std::fs::write(&p, "max_length: 64\n  bad: [indent\n").unwrap();
    let e = err_line(&elf(&["config", "check", p.to_str().unwrap()]));
    assert!(e.contains("typo.yaml"), "{e}");
}

#[test]
fn overrides_change_the_resolved_config_and_its_hash() {
    let a = ok(&elf(&["config", "check", "configs/tiny.yaml"]));
    let b = ok(&elf(&[
        "config",
        "check",
        "configs/tiny.yaml",
        "--set",
        "seed=7",
        "--set",
        "train.max_steps=3",
    ]));
    assert!(b.contains("seed: 7") && b.contains("max_steps: 3"));
    assert_ne!(a.lines().last(), b.lines().last());
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics/train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tiny_training_learns_prints_samples_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let d = dir.path().join(name);
        let out = ok(&elf(&[
            "train",
            "--config",
            "configs/tiny.yaml",
            "--run-dir",
            d.to_str().unwrap(),
            "--set",
            "train.max_steps=60",
        ]));
        (d, out)
    };
    let (a, out) = run("a");
    assert!(
        out.contains("samples (") && out.contains("[0]") && out.contains("[1]"),
        "{out}"
    );
    let m = metrics(&a);
    assert_eq!(m.len(), 60);
    let mean =
        |r: &[Value]| r.iter().map(|x| x["loss"].as_f64().unwrap()).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&m[..10]), mean(&m[50..]));
    assert!(
        last < 0.85 * first,
        "loss did not fall: first 10 steps {first}, last 10 {last}"
    );
    // Same seed, same result: every loss bit-identical.
    let (b, _) = run("b");
    let losses = |d: &Path| {
        metrics(d)
            .iter()
            .map(|x| x["loss"].as_f64().unwrap().to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&a), losses(&b));
    assert!(
        std::fs::read_to_string(a.join("config.yaml"))
            .unwrap()
            .contains("max_steps: 60")
    );
}

/// The reference's keys on a real run: `save_freq: 1` on a 2-epoch run commits a checkpoint
/// at each epoch's end (not only the final one), `output_dir` is the run folder when
/// `--run-dir` is not given, and `log_freq` sets the logged training window.
#[test]
fn reference_save_freq_output_dir_and_log_freq_take_effect_on_a_run() {
    let dir = tempfile::tempdir().unwrap();
    // 32 rows at a global batch of 16: two steps per epoch.
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, common::corpus_rows(32)).unwrap();
    let out_dir = dir.path().join("outputs/elf-tiny");
    // At info, for the window lines.
    let o = Command::new(env!("CARGO_BIN_EXE_elf"))
        .current_dir(root())
        .env("RUST_LOG", "info")
        .env("ELF_LOG_FORMAT", "json")
        .args([
            "train",
            "--config",
            "configs/tiny.yaml",
            "--set",
            &format!("data_path={}", data.display()),
            "--set",
            "train.max_steps=none",
            "--set",
            "epochs=2",
            "--set",
            "save_freq=1",
            "--set",
            "log_freq=2",
            "--set",
            &format!("output_dir={}", out_dir.display()),
        ])
        .output()
        .unwrap();
    ok(&o);
    let ckpts = out_dir.join("checkpoints");
    let steps: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-") && ckpts.join(n).join("manifest.json").exists())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(steps, ["step-000000001", "step-000000003"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let windows: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "train window")
        .collect();
    let at: Vec<u64> = windows
        .iter()
        .map(|w| w["fields"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(at, [2, 4], "one window per log_freq = 2 steps:\n{stderr}");
    assert_eq!(windows[1]["fields"]["epoch"], "2.000");
}

#[test]
fn training_on_a_missing_dataset_fails_with_one_line() {
    let e = err_line(&elf(&[
        "train",
        "--config",
        "configs/tiny.yaml",
        "--run-dir",
        "/tmp/elf-nowhere",
        "--set",
        "data_path=/nope/data.jsonl",
    ]));
    assert!(e.contains("/nope/data.jsonl"), "{e}");
}

#[test]
fn model_forward_reproduces_the_reference_outputs() {
    let fx = root().join("model/tests/fixtures");
    let g = TensorFile::open(&fx.join("golden.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let take = |name: &str| {
        let shape = g.shape(name).unwrap();
        HostTensor {
            data: g.get_f32(name, &shape).unwrap(),
            shape,
        }
    };
    let params: BTreeMap<String, HostTensor> = g
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("params/").map(|k| (k.to_string(), take(&n))))
        .collect();
    let mut inputs = BTreeMap::new();
    for (k, n) in [
        ("u", "fwd/u"),
        ("t", "fwd/t"),
        ("w", "fwd/w"),
        ("input_ids", "batch/ids"),
        ("attention_mask", "batch/enc_mask"),
    ] {
        inputs.insert(k.to_string(), take(n));
    }
    let (pp, ip, op) = (
        dir.path().join("p.safetensors"),
        dir.path().join("i.safetensors"),
        dir.path().join("o.safetensors"),
    );
    write_safetensors(&pp, &params).unwrap();
    write_safetensors(&ip, &inputs).unwrap();
    let t5 = fx.join("t5_encoder.safetensors");
    ok(&elf(&[
        "model",
        "forward",
        "--params",
        pp.to_str().unwrap(),
        "--inputs",
        ip.to_str().unwrap(),
        "--out",
        op.to_str().unwrap(),
        "--t5",
        t5.to_str().unwrap(),
    ]));
    let o = TensorFile::open(&op).unwrap();
    for (ours, reference) in [
        ("x_denoise", "fwd/x_denoise"),
        ("x_decode", "fwd/x_decode"),
        ("logits", "fwd/logits"),
        ("latent", "t5/latent"),
    ] {
        let r = take(reference);
        let a = o.get_f32(ours, &r.shape).unwrap();
        let scale = r.data.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = a
            .iter()
            .zip(&r.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err / scale <= 1e-4, "{ours}: {err} vs {scale}");
    }
}

#[test]
fn data_prepare_writes_hf_shards_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prep");
    let input = root().join("data/text/validation.jsonl");
    let args = [
        "data",
        "prepare",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rows-per-shard",
        "200",
    ];
    let first = ok(&elf(&args));
    assert!(
        first.contains("500 rows into 3 shards (0 resumed)"),
        "{first}"
    );
    let shard1 = out.join("data-00001-of-00003.arrow");
    let bytes = std::fs::read(&shard1).unwrap();
    std::fs::remove_file(&shard1).unwrap();
    let second = ok(&elf(&args));
    assert!(second.contains("(2 resumed)"), "{second}");
    assert_eq!(
        std::fs::read(&shard1).unwrap(),
        bytes,
        "a resumed shard must be identical"
    );
    // HF datasets reads it, with the ids our tokenizer gives.
    let script = "import datasets,json,sys; d=datasets.load_from_disk(sys.argv[1]); print(json.dumps([len(d), d[0]['input_ids'], d[499]['input_ids']]))";
    let py = Command::new("python3")
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let v: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(v[0], 500);
    let tok = elf_dataset::tokenizer::TextTokenizer::t5();
    let lines: Vec<Value> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids = |x: &Value| {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&v[1]), tok.encode(lines[0]["text"].as_str().unwrap()));
    assert_eq!(ids(&v[2]), tok.encode(lines[499]["text"].as_str().unwrap()));
    // Other settings in the same folder are refused rather than mixed.
    let e = err_line(&elf(&[
        "data",
        "prepare",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rows-per-shard",
        "100",
    ]));
    assert!(e.contains("prepare.json"), "{e}");
}
