//! `elf score`: BLEU and ROUGE-1/2/L of any hypothesis file against references, with exactly
//! the metrics `elf eval` reports (spec §6.4: sacrebleu 2.4.3 `corpus_bleu(lowercase=True,
//! use_effective_order=True)`, rouge-score 0.1.2 with the Porter stemmer, mean F1 × 100), so
//! other systems' outputs can be compared with ours.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use elf_model::metrics::{bleu, rouge};

use crate::out;

/// `elf score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// Hypotheses: one per line, or JSONL with `--hyp-column`.
    #[arg(long)]
    hyp: PathBuf,
    /// References, line for line with the hypotheses: one per line, or JSONL with
    /// `--ref-column`.
    #[arg(long = "ref")]
    reference: PathBuf,
    /// Read the hypotheses as JSONL and take this string field of each object (e.g. `output`
    /// of `elf eval`'s generations).
    #[arg(long)]
    hyp_column: Option<String>,
    /// Read the references as JSONL and take this string field of each object (e.g. `output`
    /// of a `{"input", "output"}` eval set).
    #[arg(long)]
    ref_column: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Reads one text per line: plain lines (a trailing newline ends the last line, `\r\n` is a
/// newline, empty lines are empty texts), or the string field `column` of each JSONL object.
fn read_texts(path: &Path, column: Option<&str>) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", path.display()))?;
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let lines = lines.into_iter().map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(col) = column else {
        return Ok(lines.map(str::to_string).collect());
    };
    lines
        .enumerate()
        .map(|(i, l)| {
            let at = || format!("{}:{}", path.display(), i + 1);
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("{}: not JSON", at()))?;
            match v.get(col) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => bail!("{}: field {col:?} is not a string: {other}", at()),
                None => bail!("{}: no field {col:?}", at()),
            }
        })
        .collect()
}

/// Runs `elf score`.
pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    let hyps = read_texts(&a.hyp, a.hyp_column.as_deref())?;
    let refs = read_texts(&a.reference, a.ref_column.as_deref())?;
    if hyps.len() != refs.len() {
        bail!(
            "{} has {} hypotheses but {} has {} references; they pair line for line",
            a.hyp.display(),
            hyps.len(),
            a.reference.display(),
            refs.len()
        );
    }
    if hyps.is_empty() {
        // sacrebleu refuses an empty corpus too: there is no score to report.
        bail!("{}: no hypotheses to score", a.hyp.display());
    }
    let b = bleu::corpus_bleu(&hyps, &refs);
    let r = rouge::corpus_rouge(&hyps, &refs);
    if a.json {
        let doc = serde_json::json!({
            "hyp": a.hyp.display().to_string(),
            "ref": a.reference.display().to_string(),
            "lines": hyps.len(),
            "bleu": b.score,
            "bleu_precisions": b.precisions,
            "bleu_bp": b.bp,
            "bleu_sys_len": b.sys_len,
            "bleu_ref_len": b.ref_len,
            "bleu_signature": b.signature,
            "rouge1": r.rouge1,
            "rouge2": r.rouge2,
            "rougeL": r.rouge_l,
            "rouge_settings": "rouge-score 0.1.2, use_stemmer=True, F1 x 100, mean over lines",
        });
        out::line(doc.to_string());
        return Ok(());
    }
    out::line(format!("{} lines", hyps.len()));
    out::line(format!("{:<8} {:>7}", "metric", "score"));
    out::line(format!("{:<8} {:>7.2}   {}", "BLEU", b.score, b.signature));
    out::line(format!("{:<8} {:>7.2}", "ROUGE-1", r.rouge1));
    out::line(format!("{:<8} {:>7.2}", "ROUGE-2", r.rouge2));
    out::line(format!("{:<8} {:>7.2}", "ROUGE-L", r.rouge_l));
    Ok(())
}
