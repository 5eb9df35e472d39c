//! ROUGE-1/2/L F1 exactly as Google's `rouge-score` 0.1.2
//! `RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(reference, hypothesis)`,
//! with the arithmetic mean over samples of spec §6.4.

use std::collections::HashMap;

use super::porter;

/// rouge-score's default tokenisation: lower-case, everything but `[a-z0-9]` becomes a space,
/// words longer than 3 characters are Porter-stemmed.
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let cleaned: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| {
            if t.len() > 3 {
                porter::stem(t)
            } else {
                t.to_string()
            }
        })
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .collect()
}

/// Precision, recall and F-measure (fractions, not percent).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Prf {
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// F1.
    pub fmeasure: f64,
}

impl Prf {
    fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            fmeasure,
        }
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], u64> {
    let mut out = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *out.entry(w).or_default() += 1;
        }
    }
    out
}

fn score_ngrams(target: &[String], prediction: &[String], n: usize) -> Prf {
    let (t, p) = (ngrams(target, n), ngrams(prediction, n));
    let hits: u64 = t
        .iter()
        .map(|(g, c)| (*c).min(p.get(g).copied().unwrap_or(0)))
        .sum();
    let (tc, pc): (u64, u64) = (t.values().sum(), p.values().sum());
    Prf::new(
        hits as f64 / pc.max(1) as f64,
        hits as f64 / tc.max(1) as f64,
    )
}

fn score_lcs(target: &[String], prediction: &[String]) -> Prf {
    if target.is_empty() || prediction.is_empty() {
        return Prf::default();
    }
    let cols = prediction.len();
    let mut prev = vec![0u32; cols + 1];
    let mut cur = vec![0u32; cols + 1];
    for t in target {
        for (j, p) in prediction.iter().enumerate() {
            cur[j + 1] = if t == p {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let lcs = prev[cols] as f64;
    Prf::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one hypothesis against its reference.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Rouge {
    /// Unigram overlap.
    pub rouge1: Prf,
    /// Bigram overlap.
    pub rouge2: Prf,
    /// Longest common subsequence.
    pub rouge_l: Prf,
}

/// Scores one hypothesis against its reference (`scorer.score(reference, hypothesis)`).
pub fn score(reference: &str, hypothesis: &str) -> Rouge {
    let (t, p) = (tokenize(reference), tokenize(hypothesis));
    Rouge {
        rouge1: score_ngrams(&t, &p, 1),
        rouge2: score_ngrams(&t, &p, 2),
        rouge_l: score_lcs(&t, &p),
    }
}

/// The corpus figures the reference reports: mean F1 × 100 over samples.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct RougeMeans {
    /// Mean ROUGE-1 F1 × 100.
    pub rouge1: f64,
    /// Mean ROUGE-2 F1 × 100.
    pub rouge2: f64,
    /// Mean ROUGE-L F1 × 100.
    pub rouge_l: f64,
}

/// Mean ROUGE F1 × 100 over pairs (`refs[i]` for `hyps[i]`); zeros for an empty corpus.
///
/// # Panics
/// When the two lists differ in length.
pub fn corpus_rouge<S: AsRef<str>, T: AsRef<str>>(hyps: &[S], refs: &[T]) -> RougeMeans {
    assert_eq!(hyps.len(), refs.len(), "one reference per hypothesis");
    let mut m = RougeMeans::default();
    if hyps.is_empty() {
        return m;
    }
    for (h, r) in hyps.iter().zip(refs) {
        let s = score(r.as_ref(), h.as_ref());
        m.rouge1 += s.rouge1.fmeasure * 100.0;
        m.rouge2 += s.rouge2.fmeasure * 100.0;
        m.rouge_l += s.rouge_l.fmeasure * 100.0;
    }
    let n = hyps.len() as f64;
    m.rouge1 /= n;
    m.rouge2 /= n;
    m.rouge_l /= n;
    m
}
