//! `elf score` against sacrebleu 2.4.3 and rouge-score 0.1.2 run live on the same files
//! (`tests/fixtures/score_reference.py`): the committed de-en and summarisation pairs with
//! deterministic perturbations, JSONL columns, and the edge cases (empty lines, unicode,
//! single tokens, a newline inside a JSONL text); then the bad-input errors.
//!
//! Tolerance: 1e-9 absolute on the 0-100 scale (both sides count the same integers and do the
//! same few f64 operations; `model/tests/metrics.rs` pins the metrics themselves).

use std::path::Path;
use std::process::Command;

use elf_e2e::{err_line, ok, repo_root, run_in_repo};
use serde_json::{Value, json};

fn elf(args: &[&str]) -> std::process::Output {
    run_in_repo(env!("CARGO_BIN_EXE_elf"), args)
}

/// The reference's figures for the same files (`-` columns read plain lines).
fn reference(hyp: &Path, rf: &Path, hc: &str, rc: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/score_reference.py");
    let o = Command::new("python3")
        .arg(script)
        .args([hyp.as_os_str(), rf.as_os_str()])
        .args([hc, rc])
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "score_reference.py failed (scripts/test.sh installs sacrebleu and rouge-score): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Runs `elf score --json` and the reference on the same files and compares every figure.
fn check(hyp: &Path, rf: &Path, hc: Option<&str>, rc: Option<&str>, what: &str) -> Value {
    let mut args = vec![
        "score",
        "--json",
        "--hyp",
        hyp.to_str().unwrap(),
        "--ref",
        rf.to_str().unwrap(),
    ];
    if let Some(c) = hc {
        args.extend(["--hyp-column", c]);
    }
    if let Some(c) = rc {
        args.extend(["--ref-column", c]);
    }
    let ours: Value = serde_json::from_str(ok(&elf(&args)).trim()).unwrap();
    let theirs = reference(hyp, rf, hc.unwrap_or("-"), rc.unwrap_or("-"));
    assert_eq!(ours["lines"], theirs["lines"], "{what}: lines");
    for k in ["bleu", "rouge1", "rouge2", "rougeL"] {
        let (a, b) = (ours[k].as_f64().unwrap(), theirs[k].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9, "{what} {k}: ours {a}, reference {b}");
    }
    assert!(
        ours["bleu_signature"]
            .as_str()
            .unwrap()
            .starts_with("nrefs:1|case:lc|eff:yes|tok:13a|smooth:exp|version:2.4.3")
    );
    ours
}

fn outputs(path: &str) -> Vec<String> {
    std::fs::read_to_string(repo_root().join(path))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["output"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Deterministic hypotheses of varied quality: the reference, a neighbour's, word drops,
/// truncations, case and punctuation changes.
fn perturb(refs: &[String]) -> Vec<String> {
    refs.iter()
        .enumerate()
        .map(|(i, r)| {
            let words: Vec<&str> = r.split_whitespace().collect();
            match i % 6 {
                0 => r.clone(),
                1 => refs[(i + 1) % refs.len()].clone(),
                2 => words
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| j % 3 != 1)
                    .map(|(_, w)| *w)
                    .collect::<Vec<_>>()
                    .join(" "),
                3 => words[..words.len().div_ceil(2)].join(" "),
                4 => r.to_uppercase().replace(',', " ,").replace('.', ""),
                _ => format!("{r} and then some more words"),
            }
        })
        .collect()
}

#[test]
fn score_equals_sacrebleu_and_rouge_score() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Committed pairs, plain text both sides.
    for set in ["de-en", "summ"] {
        let refs = outputs(&format!("data/{set}/validation.jsonl"));
        assert!(refs.len() >= 20 && refs.iter().all(|r| !r.contains('\n')));
        let hyps = perturb(&refs);
        let (h, r) = (d.join(format!("{set}.hyp")), d.join(format!("{set}.ref")));
        std::fs::write(&h, hyps.join("\n") + "\n").unwrap();
        std::fs::write(&r, refs.join("\r\n")).unwrap();
        let s = check(&h, &r, None, None, set);
        assert_eq!(s["lines"], refs.len());
        assert!(s["bleu"].as_f64().unwrap() > 10.0, "{set}: {s}");
    }
    // The eval set itself as JSONL references (its `output` column) against plain hypotheses.
    let refs = outputs("data/de-en/validation.jsonl");
    let h = d.join("col.hyp");
    std::fs::write(&h, perturb(&refs).join("\n")).unwrap();
    check(
        &h,
        &repo_root().join("data/de-en/validation.jsonl"),
        None,
        Some("output"),
        "de-en jsonl refs",
    );
    // Edge cases, as JSONL on both sides (a newline inside a text cannot be a plain line).
    let edge = [
        ("", "a reference"),
        ("a hypothesis", ""),
        ("", ""),
        ("cat", "cat"),
        ("cat", "dog"),
        ("the", "the the the"),
        ("...", "!!! ???"),
        (
            "Straße über Äpfel — naïve café",
            "strasse uber apfel naive cafe",
        ),
        ("日本語のテキスト", "日本語 の テキスト"),
        ("Ünïcödé ÉCOLE façade", "ünïcödé école façade"),
        (
            "tab\tseparated\u{a0}nbsp\u{2003}em",
            "tab separated nbsp em",
        ),
        ("<skipped> line-\nbreak", "line break"),
        ("running runners ran easily", "run runner running easy"),
    ];
    let jsonl = |col: &str, texts: &[&str]| {
        texts
            .iter()
            .map(|t| json!({ col: t, "other": 1 }).to_string() + "\n")
            .collect::<String>()
    };
    let (h, r) = (d.join("edge.hyp.jsonl"), d.join("edge.ref.jsonl"));
    let hyps: Vec<&str> = edge.iter().map(|e| e.0).collect();
    let refs: Vec<&str> = edge.iter().map(|e| e.1).collect();
    std::fs::write(&h, jsonl("output", &hyps)).unwrap();
    std::fs::write(&r, jsonl("target", &refs)).unwrap();
    check(&h, &r, Some("output"), Some("target"), "edge corpus");
    // Each edge case as a corpus of one.
    for (i, (hy, rf)) in edge.iter().enumerate() {
        let (h, r) = (d.join(format!("{i}.hyp")), d.join(format!("{i}.ref")));
        std::fs::write(&h, jsonl("t", &[hy])).unwrap();
        std::fs::write(&r, jsonl("t", &[rf])).unwrap();
        check(&h, &r, Some("t"), Some("t"), &format!("{hy:?} vs {rf:?}"));
    }
}

#[test]
fn score_prints_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r) = (dir.path().join("h"), dir.path().join("r"));
    std::fs::write(&h, "the cat sat on the mat\na dog\n").unwrap();
    std::fs::write(&r, "the cat sat on the mat\nthe dog\n").unwrap();
    let out = ok(&elf(&[
        "score",
        "--hyp",
        h.to_str().unwrap(),
        "--ref",
        r.to_str().unwrap(),
    ]));
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows[0], "2 lines", "{out}");
    for (row, name) in rows[2..]
        .iter()
        .zip(["BLEU", "ROUGE-1", "ROUGE-2", "ROUGE-L"])
    {
        let mut f = row.split_whitespace();
        assert_eq!(f.next(), Some(name), "{out}");
        let v: f64 = f.next().unwrap().parse().unwrap();
        assert!(v > 0.0 && v <= 100.0, "{out}");
    }
}

#[test]
fn score_refuses_bad_input_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str, text: &str| {
        let f = dir.path().join(n);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_string()
    };
    let (two, three) = (p("two", "a\nb\n"), p("three", "a\nb\nc\n"));
    let e = err_line(&elf(&["score", "--hyp", &two, "--ref", &three]));
    assert!(
        e.contains(&format!(
            "{two} has 2 hypotheses but {three} has 3 references"
        )),
        "{e}"
    );
    let cols = p("cols.jsonl", "{\"output\": \"x\"}\n{\"input\": \"y\"}\n");
    let e = err_line(&elf(&[
        "score",
        "--hyp",
        &cols,
        "--hyp-column",
        "output",
        "--ref",
        &two,
    ]));
    assert!(e.contains(&format!("{cols}:2: no field \"output\"")), "{e}");
    let num = p("num.jsonl", "{\"output\": 3}\n");
    let e = err_line(&elf(&[
        "score",
        "--hyp",
        &num,
        "--hyp-column",
        "output",
        "--ref",
        &two,
    ]));
    assert!(
        e.contains(&format!("{num}:1: field \"output\" is not a string")),
        "{e}"
    );
    let bad = p("bad.jsonl", "{\"output\": \"x\"}\nnot json\n");
    let e = err_line(&elf(&[
        "score",
        "--hyp",
        &two,
        "--ref",
        &bad,
        "--ref-column",
        "output",
    ]));
    assert!(e.contains(&format!("{bad}:2: not JSON")), "{e}");
    // An empty corpus has no score (sacrebleu refuses one too).
    let empty = p("empty", "");
    let e = err_line(&elf(&["score", "--hyp", &empty, "--ref", &empty]));
    assert!(
        e.contains(&format!("{empty}: no hypotheses to score")),
        "{e}"
    );
    let e = err_line(&elf(&["score", "--hyp", "/nonexistent/h", "--ref", &two]));
    assert!(e.contains("/nonexistent/h: cannot read"), "{e}");
}
