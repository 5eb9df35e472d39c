//! Loading, overriding, validating and hashing configs.

use super::*;
use std::path::PathBuf;

fn parse(text: &str) -> Result<ResolvedConfig, ConfigError> {
    Config::from_yaml(text, "test.yaml", Path::new("."), &[])
}

#[test]
fn empty_yaml_gives_reference_defaults() {
    let c = parse("").unwrap().config;
    assert_eq!(c, Config::default());
    assert_eq!(c.max_length, 128);
    assert!((c.peak_lr() - 5e-5 * 2.0).abs() < 1e-12);
}

#[test]
fn unknown_key_is_an_error_naming_key_and_file() {
    let e = parse("max_lenght: 12\n").unwrap_err().to_string();
    assert!(e.contains("test.yaml"), "{e}");
    assert!(e.contains("max_lenght"), "{e}");
}

#[test]
fn wrong_type_is_an_error_naming_key() {
    let e = parse("max_length: twelve\n").unwrap_err().to_string();
    assert!(e.contains("max_length"), "{e}");
    let e = parse("train:\n  max_steps: x\n").unwrap_err().to_string();
    assert!(e.contains("max_steps"), "{e}");
}

#[test]
fn overrides_apply_and_reach_sections() {
    let r = Config::from_yaml(
        "max_length: 64\n",
        "t.yaml",
        Path::new("."),
        &[
            "max_length=32".into(),
            "train.max_steps=7".into(),
            "lr=none".into(),
        ],
    )
    .unwrap();
    assert_eq!(r.config.max_length, 32);
    assert_eq!(r.config.train.max_steps, Some(7));
    let e = Config::from_yaml("", "t.yaml", Path::new("."), &["nope=1".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn invariants_are_all_reported() {
    let e = parse("max_length: 8\nmax_input_length: 9\ndecoder_prob: 2\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_input_length") && e.contains("decoder_prob"),
        "{e}"
    );
}

#[test]
fn hash_changes_with_content_and_round_trips() {
    let a = parse("seed: 1\n").unwrap().config;
    let b = parse("seed: 2\n").unwrap().config;
    assert_ne!(a.hash(), b.hash());
    let again = parse(&a.to_yaml()).unwrap().config;
    assert_eq!(again, a);
    assert_eq!(again.hash(), a.hash());
}

#[test]
fn peak_lr_follows_reference_rule() {
    let c = parse("blr: 0.001\nglobal_batch_size: 512\n")
        .unwrap()
        .config;
    assert!((c.peak_lr() - 0.002).abs() < 1e-12);
}

#[test]
fn a_checkpoint_resumes_at_any_world_size_but_not_with_another_model() {
    let base = parse(
        "seed: 1
",
    )
    .unwrap()
    .config;
    let wider = Config::from_yaml(
        "seed: 1
",
        "t",
        Path::new("."),
        &["cluster.workers=4".into()],
    )
    .unwrap()
    .config;
    assert_ne!(
        base.hash(),
        wider.hash(),
        "the world size is part of the hashed config"
    );
    assert_eq!(base.training_hash(), wider.training_hash());
    wider
        .check_resumable(&base.to_yaml(), "ckpt/step-000000003")
        .unwrap();
    let other = parse(
        "seed: 2
",
    )
    .unwrap()
    .config;
    let e = other
        .check_resumable(&base.to_yaml(), "ckpt/step-000000003")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("ckpt/step-000000003: invalid config: written by config")
            && e.contains(&base.hash().0),
        "{e}"
    );
}

fn over(text: &str, ov: &str) -> Result<ResolvedConfig, ConfigError> {
    Config::from_yaml(text, "test.yaml", Path::new("."), &[ov.to_string()])
}

#[test]
fn non_finite_numbers_are_refused_naming_the_key() {
    for (v, shown) in [
        (".nan", ".nan"),
        (".inf", ".inf"),
        ("-.inf", "-.inf"),
        (".NaN", ".nan"),
    ] {
        let e = parse(&format!("lr: {v}\n")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("test.yaml: lr: must be a finite number, got {shown}")
        );
        let e = over("", &format!("lr={v}")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("--set: lr: must be a finite number, got {shown}")
        );
    }
    let e = parse("sampling_configs:\n  - cfgs: [1.0, .nan]\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "test.yaml: sampling_configs[0].cfgs[1]: must be a finite number, got .nan"
    );
    let e = parse("model_dims: {hidden: 64, depth: 2, heads: 2, mlp_ratio: -.inf}\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "test.yaml: model_dims.mlp_ratio: must be a finite number, got -.inf"
    );
    let e = over("", "train.warmup=.inf").unwrap_err().to_string();
    assert_eq!(e, "--set: train.warmup: must be a finite number, got .inf");
    let e = over("", "sampling_configs=[{sde_gamma: .nan}]")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--set: sampling_configs[0].sde_gamma: must be a finite number, got .nan"
    );
}

#[test]
fn out_of_range_floats_are_refused_naming_the_key() {
    let e = over("", "lr=1e300").unwrap_err().to_string();
    assert_eq!(
        e,
        "test.yaml: invalid config: lr must be in (0, 1], got 1e300"
    );
    for (yaml, key) in [
        ("lr: 0\n", "lr must be in (0, 1]"),
        ("lr: -0.1\n", "lr must be in (0, 1]"),
        ("blr: 2\n", "blr must be in (0, 1]"),
        (
            "blr: 0.5\nglobal_batch_size: 1024\n",
            "(the peak lr, as lr is unset) must be in (0, 1], got 2.0",
        ),
        ("ema_decay1: 1.5\n", "ema_decay1 must be in [0, 1), got 1.5"),
        ("proj_dropout: 1\n", "proj_dropout must be in [0, 1)"),
        ("weight_decay: -1\n", "weight_decay must be >= 0, got -1.0"),
        ("adam_b2: 1\n", "adam_b2 must be in [0, 1)"),
        ("warmup_epochs: -2\n", "warmup_epochs must be >= 0"),
        ("min_lr: 3\n", "min_lr must be in [0, 1]"),
        ("t_eps: 0\n", "t_eps must be in (0, 1]"),
        (
            "sampling_configs: [{sde_gamma: -1}]\n",
            "sampling_configs[0].sde_gamma must be >= 0",
        ),
        (
            "model_dims: {hidden: 64, depth: 2, heads: 2, mlp_ratio: 0}\n",
            "model_dims.mlp_ratio must be > 0",
        ),
    ] {
        let e = parse(yaml).unwrap_err().to_string();
        assert!(
            e.starts_with("test.yaml: invalid config: ") && e.contains(key),
            "{yaml}: {e}"
        );
    }
}

#[test]
fn numbers_load_as_before() {
    let c = parse("lr: 3e-4\nema_decay1: 0\nlatent_std: 1\nadam_b1: 0.5\nwarmup_epochs: 2\n")
        .unwrap()
        .config;
    assert_eq!(c.lr, Some(3e-4));
    assert_eq!((c.ema_decay1, c.latent_std, c.adam_b1), (0.0, 1.0, 0.5));
    assert_eq!(c.warmup_epochs, Some(2.0));
    assert_eq!(parse("lr: 1\n").unwrap().config.peak_lr(), 1.0);
    assert_eq!(parse("lr: null\n").unwrap().config.lr, None);
    assert_eq!(over("lr: 0.1\n", "lr=none").unwrap().config.lr, None);
    // Enums, sections left empty (their defaults) and wrong enum values.
    let c = parse("optimizer: adamw\ntrain:\npad_token: eos\n")
        .unwrap()
        .config;
    assert_eq!((c.optimizer, c.pad_id()), (OptimizerKind::Adamw, 1));
    assert_eq!(c.train, TrainSection::default());
    let e = parse("optimizer: sgd\n").unwrap_err().to_string();
    assert!(
        e.starts_with("test.yaml: optimizer: unknown variant `sgd`"),
        "{e}"
    );
    let e = parse("train:\n  micro_batch_size: 1.5\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("test.yaml: train.micro_batch_size: invalid type"),
        "{e}"
    );
    let e = parse("sampling_configs: [{sde_gama: 1}]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("test.yaml: sampling_configs[0].sde_gama: unknown field `sde_gama`"),
        "{e}"
    );
}

#[test]
fn deep_nesting_is_refused_fast() {
    let block: String = (0..1000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    let cases = [
        "[".repeat(100_000),
        format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
        "{a: ".repeat(100_000),
        "- ".repeat(100_000),
        block,
        // Brackets inside strings, comments and block scalars hide nothing.
        format!("a: \"]]]\"\nb: {}", "{a: \"}\", b: ".repeat(50_000)),
        format!("a: |\n  [ \"\nb: {}", "{a: ".repeat(100_000)),
        format!("a: foo\n  \"bar\nb: {}", "{a: ".repeat(100_000)),
        format!("a: [x, 'y # ]]]',\n  {}", "[".repeat(100_000)),
    ];
    for text in &cases {
        let t = std::time::Instant::now();
        let e = parse(text).unwrap_err().to_string();
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        assert!(
            e.starts_with("test.yaml: line ")
                && e.ends_with(": YAML nesting deeper than 64 levels"),
            "{e}"
        );
    }
    let e = over("", &format!("sampling_configs={}", "[".repeat(100_000)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--set: sampling_configs: line 1: YAML nesting deeper than 64 levels"
    );
    let e = over("", &format!("{}=1", ["a"; 100].join(".")))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--set: a...: key nests 100 levels, deeper than 64");
    // 64 levels are fine as far as nesting goes.
    let ok = format!("x: {}{}", "[".repeat(63), "]".repeat(63));
    assert!(!parse(&ok).unwrap_err().to_string().contains("nesting"));
}

#[test]
fn oversized_configs_are_refused_naming_the_size() {
    let big = format!("seed: 1\n{}", "# padding\n".repeat(210_000));
    let e = parse(&big).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "test.yaml: config is {} bytes, over the 1048576-byte (1 MiB) limit",
            big.len()
        )
    );
    let path = std::env::temp_dir().join(format!("elf-config-big-{}.yaml", std::process::id()));
    std::fs::write(&path, "#".repeat(2 << 20)).unwrap();
    let e = Config::load(&path, &[]).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        e,
        format!(
            "{}: config is 2097152 bytes, over the 1048576-byte (1 MiB) limit",
            path.display()
        )
    );
    let e = over("", &format!("seed={}", "1".repeat(2 << 20)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--set: override is 2097157 bytes, over the 1048576-byte (1 MiB) limit"
    );
}

/// The YAML files of the repository: run configs, the fuzz corpus's run configs (whose
/// sampling paths are relative to `configs/`) and sampling files.
fn repo_yaml() -> [Vec<PathBuf>; 3] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let list = |dir: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        v.sort();
        v
    };
    let (fuzz_sampling, fuzz): (Vec<PathBuf>, Vec<PathBuf>) = list("fuzz/corpus/config")
        .into_iter()
        .partition(|p| p.to_string_lossy().ends_with("sampling_configs.yml"));
    let mut configs = list("configs");
    configs.push(root.join("deploy/k8s/common/config.yaml"));
    let mut sampling = list("configs/sampling_configs");
    sampling.extend(fuzz_sampling);
    sampling.push(root.join("deploy/k8s/common/uncond_sampling_configs.yml"));
    [configs, fuzz, sampling]
}

#[test]
fn every_repository_config_loads() {
    let [configs, fuzz, sampling] = repo_yaml();
    assert!(
        configs.len() >= 8 && fuzz.len() >= 8,
        "{configs:?} {fuzz:?}"
    );
    for p in &configs {
        Config::load(p, &[]).unwrap_or_else(|e| panic!("{e}"));
    }
    let configs_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for p in &fuzz {
        let text = std::fs::read_to_string(p).unwrap();
        Config::from_yaml(&text, &p.display().to_string(), &configs_dir, &[])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for p in &sampling {
        load_sampling_configs(p).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn value_depth(v: &serde_yaml_ng::Value) -> usize {
    use serde_yaml_ng::Value;
    match v {
        Value::Sequence(s) => 1 + s.iter().map(value_depth).max().unwrap_or(0),
        Value::Mapping(m) => {
            1 + m
                .iter()
                .map(|(k, v)| value_depth(k).max(value_depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(t) => value_depth(&t.value),
        _ => 0,
    }
}

#[test]
fn the_nesting_scan_agrees_with_the_parser() {
    let mut texts: Vec<String> = repo_yaml()
        .iter()
        .flatten()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    texts.push(Config::default().to_yaml());
    for t in [
        "a: \"x: [[[[\"\nb: 1\n",
        "a: [ \"]]]\", {b: '}}''{{'}, [c] ]\n",
        "a: |\n  [ \"\n  {{{\nb: [1]\n",
        "a: >-\n  text [\n   more {\n\nb: {}\n",
        "a: foo\n  \"bar [\nb: {c: d}\n",
        "- - - x\n",
        "a:\n- b:\n  - c: [1]\n- d\ne: 2\n",
        "? [a, b]\n: c\n",
        "a: !!str \"[[\"\nb: &x [1]\nc: *x\n",
        "a: b # [[[\n",
        "{a: [b, {c: d}]}\n",
        "\"key\": [1]\n",
        "a: [1,\n  2, [3,\n 4]]\n",
        "a: x\"y [z\n",
        "a: 'it''s [ # not a comment'\nb:\n  c:\n    d: [{e: \"\\\" ]\"}]\n",
        "- a: 1\n  b:\n  - [x]\n- c\n",
        "a:\n  - b\n  - c:\n    - d\n",
    ] {
        texts.push(t.to_string());
    }
    // A flow collection that is a block mapping's key is counted before the mapping is known
    // to start (libyaml inserts it afterwards): one level short, at the key only.
    assert_eq!(limits::depth("[a, b]: c\n"), 1);
    for t in &texts {
        let v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(t).unwrap_or_else(|e| panic!("{e}: {t}"));
        assert_eq!(limits::depth(t), value_depth(&v), "{t}");
    }
}

#[test]
fn skip_nonfinite_is_a_train_key_outside_the_training_hash() {
    let base = parse("seed: 1\n").unwrap().config;
    assert_eq!(base.train.skip_nonfinite, 0);
    let lenient = over("seed: 1\n", "train.skip_nonfinite=3").unwrap().config;
    assert_eq!(lenient.train.skip_nonfinite, 3);
    assert_ne!(base.hash(), lenient.hash());
    assert_eq!(base.training_hash(), lenient.training_hash());
    lenient.check_resumable(&base.to_yaml(), "ckpt").unwrap();
    assert_eq!(parse(&lenient.to_yaml()).unwrap().config, lenient);
    let e = parse("train:\n  skip_nonfinite: -1\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("test.yaml: train.skip_nonfinite: invalid value"),
        "{e}"
    );
}

#[test]
fn the_reference_batch_fallbacks_derive_the_global_batch() {
    let r = Config::from_yaml(
        "global_batch_size: -1\nbatch_size: 8\n",
        "t.yaml",
        Path::new("."),
        &[
            "cluster.workers=4".into(),
            "train.branch_shard_size=8".into(),
        ],
    )
    .unwrap();
    assert_eq!(
        (r.config.global_batch_size, r.config.batch_size),
        (32, Some(8))
    );
    let c = parse("global_batch_size: null\nbatch_size: 16\n")
        .unwrap()
        .config;
    assert_eq!(c.global_batch_size, 16);
    let c = parse("batch_size: -1\n").unwrap().config;
    assert_eq!((c.batch_size, c.global_batch_size), (None, 512));
    let e = parse("global_batch_size: -1\n").unwrap_err().to_string();
    assert_eq!(
        e,
        "test.yaml: global_batch_size: -1/null needs a per-worker batch_size to derive it from"
    );
    // Set beside global_batch_size, batch_size does nothing, and says so.
    let r = parse("global_batch_size: 64\nbatch_size: 8\n").unwrap();
    assert_eq!(r.inert_keys().len(), 1);
    assert!(r.inert_keys()[0].starts_with("batch_size (global_batch_size 64 is set"));
}

#[test]
fn encoder_model_name_chooses_the_encoder_shape() {
    let e = |t: &str| parse(t).unwrap().config.encoder;
    let small = e("encoder_model_name: t5-small\n");
    assert_eq!(small, EncoderDims::default());
    let base = e("encoder_model_name: t5-base\n");
    assert_eq!(
        (
            base.d_model,
            base.d_kv,
            base.num_heads,
            base.d_ff,
            base.num_layers
        ),
        (768, 64, 12, 3072, 12)
    );
    let large = e("encoder_model_name: google-t5/t5-large\n");
    assert_eq!(
        (large.d_model, large.num_heads, large.num_layers),
        (1024, 16, 24)
    );
    // An explicit section is the shape.
    let own = e("encoder_model_name: t5-base\nencoder:\n  d_model: 32\n");
    assert_eq!(own.d_model, 32);
    let err = parse("encoder_model_name: google/t5-v1_1-small\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("gated-GELU feed-forward"), "{err}");
    let err = parse("encoder_model_name: bert-base\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder_model_name: unknown encoder \"bert-base\""),
        "{err}"
    );
}

#[test]
fn architectures_this_build_lacks_are_refused_naming_the_key() {
    for (yaml, key) in [
        (
            "num_self_cond_cfg_tokens: 0\n",
            "num_self_cond_cfg_tokens: 0",
        ),
        ("num_model_mode_tokens: 0\n", "num_model_mode_tokens: 0"),
        ("proj_dropout: 0.1\n", "proj_dropout: 0.1 is not applied"),
    ] {
        let e = parse(yaml).unwrap_err().to_string();
        assert!(e.contains(key), "{yaml}: {e}");
    }
    // self_cond_prob: 0 is a valid config (no sample self-conditions).
    assert_eq!(
        parse("self_cond_prob: 0\n").unwrap().config.self_cond_prob,
        0.0
    );
}

#[test]
fn reference_keys_that_cannot_apply_are_listed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let r = Config::load(&dir.join("train_owt_ELF-B.yml"), &[]).unwrap();
    let inert = r.inert_keys();
    let names: Vec<&str> = inert.iter().map(|k| k.split(' ').next().unwrap()).collect();
    // hf_repo_id: null and resume: null are inert everywhere and not listed.
    assert_eq!(
        names,
        ["use_wandb", "wandb_project", "wandb_run_name"],
        "{inert:?}"
    );
    assert!(r.sets("output_dir") && r.sets("save_freq") && !r.sets("eval"));
    let r = parse("hf_repo_id: me/run\nnum_workers: 4\nattn_dropout: 0.1\n").unwrap();
    let names: Vec<String> = r
        .inert_keys()
        .iter()
        .map(|k| k.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["hf_repo_id", "num_workers", "attn_dropout"]);
    assert!(parse("").unwrap().inert_keys().is_empty());
}

#[test]
fn resume_is_outside_the_training_hash() {
    let a = parse("seed: 3\n").unwrap().config;
    let b = parse("seed: 3\nresume: outputs/run\n").unwrap().config;
    assert_ne!(a.hash(), b.hash());
    assert_eq!(a.training_hash(), b.training_hash());
}
