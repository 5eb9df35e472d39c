//! Datasets written by Python `datasets`/`pyarrow` (tests/fixtures/make_datasets.py) read back
//! in Rust: identical rows from multi-shard Arrow folders, a DatasetDict, parquet, JSONL, and the
//! same through object-store URLs; and one clear error for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use elf_dataset::tokenizer::TextTokenizer;
use elf_dataset::{Dataset, Row, open_dataset};
use elf_store::location::upload_dir;
use serde_json::Value;

struct Fixtures {
    _dir: tempfile::TempDir,
    root: PathBuf,
    expected: Value,
}

fn fx() -> &'static Fixtures {
    static FX: OnceLock<Fixtures> = OnceLock::new();
    FX.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_datasets.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "make_datasets.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("expected.json")).unwrap(),
        )
        .unwrap();
        Fixtures {
            root: dir.path().to_path_buf(),
            _dir: dir,
            expected,
        }
    })
}

fn tok() -> Arc<TextTokenizer> {
    Arc::new(TextTokenizer::t5())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn expected_row(i: usize, conditional: bool) -> Row {
    let e = &fx().expected;
    Row {
        input_ids: ids(&e["input_ids"][i]),
        condition_input_ids: conditional.then(|| ids(&e["condition_input_ids"][i])),
        input: conditional.then(|| e["input"][i].as_str().unwrap().to_string()),
        target: conditional.then(|| e["target"][i].as_str().unwrap().to_string()),
        index: conditional.then_some(i as i64),
    }
}

fn check_all(ds: &dyn Dataset, conditional: bool) {
    let n = fx().expected["rows"].as_u64().unwrap();
    assert_eq!(ds.len(), n, "{}", ds.describe());
    assert_eq!(ds.is_conditional(), conditional);
    let mut tokens = 0;
    // Random order: every row must be reachable without reading the others.
    for i in (0..n).rev().step_by(1) {
        let row = ds.row(i).unwrap();
        assert_eq!(
            row,
            expected_row(i as usize, conditional),
            "row {i} of {}",
            ds.describe()
        );
        tokens += row.input_ids.len();
    }
    let expected_tokens: usize = fx().expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().len())
        .sum();
    assert_eq!(tokens, expected_tokens);
}

fn path(name: &str) -> String {
    fx().root.join(name).display().to_string()
}

#[test]
fn multi_shard_save_to_disk_folder_reads_identically() {
    check_all(open_dataset(&path("hf"), &tok()).unwrap().as_ref(), true);
}

#[test]
fn dataset_dict_with_one_split_is_unwrapped() {
    check_all(open_dataset(&path("dict"), &tok()).unwrap().as_ref(), false);
    let e = open_dataset(&path("two_splits"), &tok())
        .unwrap_err()
        .to_string();
    assert!(e.contains("two_splits") && e.contains("validation"), "{e}");
}

#[test]
fn parquet_file_and_folder_read_identically() {
    check_all(
        open_dataset(&path("data.parquet"), &tok())
            .unwrap()
            .as_ref(),
        true,
    );
    check_all(
        open_dataset(&path("pq_dir"), &tok()).unwrap().as_ref(),
        true,
    );
}

#[test]
fn jsonl_is_tokenised_at_load() {
    let ds = open_dataset(&path("data.jsonl"), &tok()).unwrap();
    assert_eq!(ds.len(), 57);
    let t = TextTokenizer::t5();
    let r = ds.row(5).unwrap();
    assert_eq!(r.input.as_deref(), Some("Quelle 5 ünï"));
    assert_eq!(r.condition_input_ids.unwrap(), t.encode("Quelle 5 ünï"));
    assert_eq!(r.input_ids, t.encode("target 5"));
    // The blank line after row 10 is skipped.
    assert_eq!(ds.row(11).unwrap().target.as_deref(), Some("target 11"));
}

#[test]
fn object_store_urls_read_identically() {
    let url = format!("file://{}", fx().root.join("hf").display());
    check_all(open_dataset(&url, &tok()).unwrap().as_ref(), true);
    upload_dir(&fx().root.join("hf"), "memory://fixtures/hf").unwrap();
    check_all(
        open_dataset("memory://fixtures/hf", &tok())
            .unwrap()
            .as_ref(),
        true,
    );
    upload_dir(&fx().root.join("pq_dir"), "memory://fixtures/pq").unwrap();
    check_all(
        open_dataset("memory://fixtures/pq", &tok())
            .unwrap()
            .as_ref(),
        true,
    );
}

#[test]
fn bad_inputs_give_one_clear_error_each() {
    let err = |name: &str| open_dataset(&path(name), &tok()).unwrap_err().to_string();
    let e = err("truncated");
    assert!(
        e.contains("data-00002-of-00003.arrow") && e.contains("truncated"),
        "{e}"
    );
    let e = err("bad_type");
    assert!(
        e.contains("input_ids") && e.contains("expected a list of integers"),
        "{e}"
    );
    let e = err("no_ids");
    assert!(
        e.contains("missing column \"input_ids\"") && e.contains("tokens"),
        "{e}"
    );
    let e = err("bad.jsonl");
    assert!(e.contains("bad.jsonl") && e.contains("line 3"), "{e}");
    let e = err("nowhere.parquet");
    assert!(e.contains("nowhere.parquet"), "{e}");
    for e in [err("truncated"), err("bad.jsonl")] {
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn an_empty_dataset_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.jsonl");
    std::fs::write(&p, "\n\n").unwrap();
    let e = open_dataset(&p.display().to_string(), &tok())
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.jsonl") && e.contains("empty"), "{e}");
}

#[test]
fn tokenizer_ids_equal_the_reference_tokenizer_on_real_sentences() {
    // Fixture: scripts/reference/tokenizer_reference.py (Python tokenizers 0.19.1).
    let t = TextTokenizer::t5();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_ids.jsonl"),
    )
    .unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let s = v["text"].as_str().unwrap();
        assert_eq!(t.encode(s), ids(&v["ids"]), "{s:?}");
        n += 1;
    }
    assert!(n >= 300, "{n} sentences");
}

#[test]
fn decoding_cleans_up_as_transformers_before_4_45() {
    // Fixture: scripts/reference/decode_reference.py (transformers 4.44.2, tokenizers 0.19.1):
    // real sentences with spaced punctuation and contractions, random ids, edge cases.
    let t = TextTokenizer::t5();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode_ids.jsonl"),
    )
    .unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let want = v["text"].as_str().unwrap();
        assert_eq!(t.decode(&ids(&v["ids"])), want, "{line}");
        n += 1;
    }
    assert!(n >= 500, "{n} cases");
    let ids = t.encode("it 's a dog 's life , is n't it ?");
    assert_eq!(t.decode(&ids), "it's a dog's life, isn't it?");
}

/// The GPT-2 scorer's byte-level BPE tokenizer (a tokenizer.json made by Python `tokenizers`,
/// scripts/reference/gpt2_reference.py) gives the ids Python gave, including an in-text
/// `<|endoftext|>`.
#[test]
fn a_gpt2_tokenizer_json_encodes_as_python_does() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/gpt2");
    let tok =
        elf_dataset::tokenizer::TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let max = g["max_len"].as_u64().unwrap() as usize;
    let kept: Vec<&str> = g["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .filter(|s| !s.trim().is_empty())
        .collect();
    let want: Vec<Vec<u32>> = serde_json::from_value(g["ids"].clone()).unwrap();
    assert_eq!(kept.len(), want.len());
    for (s, w) in kept.iter().zip(&want) {
        let mut ids = tok.encode(s);
        ids.truncate(max);
        assert_eq!(&ids, w, "{s:?}");
    }
    assert_eq!(
        tok.token_id("<|endoftext|>"),
        Some(g["eos"].as_u64().unwrap() as u32)
    );
}
