//! Loading, overriding, validating and hashing configs.

use super::*;

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
