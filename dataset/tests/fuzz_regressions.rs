//! Every input the fuzzers found that crashed a reader (`fuzz/regressions/<target>/`, issue #15)
//! is an error naming the file now, never a panic: one test per reader, replaying them all.

use std::path::PathBuf;
use std::sync::Arc;

use elf_dataset::open_dataset;
use elf_dataset::tokenizer::TextTokenizer;

fn replay(target: &str, ext: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let tok = Arc::new(TextTokenizer::t5());
    let tmp = tempfile::tempdir().unwrap();
    for e in entries {
        let path = e.unwrap().path();
        eprintln!("replaying {}", path.display());
        // The readers pick the format by extension.
        let copy = tmp.path().join(format!("input.{ext}"));
        std::fs::copy(&path, &copy).unwrap();
        match open_dataset(copy.to_str().unwrap(), &tok) {
            Err(e) => assert!(e.to_string().contains("input."), "{}: {e}", path.display()),
            Ok(ds) => {
                let n = ds.len();
                for row in [0, n / 2, n.saturating_sub(1)] {
                    if row < n {
                        let _ = ds.row(row);
                    }
                }
            }
        }
    }
}

#[test]
fn arrow_crashers_are_errors() {
    replay("arrow", "arrow");
}

#[test]
fn parquet_crashers_are_errors() {
    replay("parquet", "parquet");
}

#[test]
fn jsonl_crashers_are_errors() {
    replay("jsonl", "jsonl");
}
