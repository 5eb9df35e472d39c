//! Corpus BLEU exactly as sacrebleu 2.x `corpus_bleu(hyps, [refs], lowercase=True,
//! use_effective_order=True)` computes it (spec §6.4): the `13a` tokeniser, exponential
//! smoothing, the closest reference length, effective order. One reference per segment.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// The sacrebleu version whose behaviour this reproduces (reported in the signature).
pub const SACREBLEU_VERSION: &str = "2.4.3";

/// The `13a` post-tokeniser's rules, in order (sacrebleu `TokenizerRegexp`).
static RULES: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    [
        (
            Regex::new(r"([\{-~\[-`\x20-&\(-\+:-@/])").expect("valid"),
            " $1 ",
        ),
        (Regex::new(r"([^0-9])([\.,])").expect("valid"), "$1 $2 "),
        (Regex::new(r"([\.,])([^0-9])").expect("valid"), " $1 $2"),
        (Regex::new(r"([0-9])(-)").expect("valid"), "$1 $2 "),
    ]
});

/// Python's `str.isspace` for one character (what `str.split()` splits on).
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Python's `str.split()` with no arguments.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|t| !t.is_empty())
}

/// Python's `str.rstrip()` with no arguments.
fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_space)
}

/// sacrebleu's `13a` tokenisation of one line (mteval-v13a).
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, rep) in RULES.iter() {
        line = re.replace_all(&line, *rep).into_owned();
    }
    py_split(&line).collect::<Vec<_>>().join(" ")
}

/// A corpus BLEU score with sacrebleu's statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bleu {
    /// BLEU, 0..100.
    pub score: f64,
    /// Matched n-grams per order.
    pub counts: [u64; 4],
    /// Hypothesis n-grams per order.
    pub totals: [u64; 4],
    /// n-gram precisions in percent (smoothed).
    pub precisions: [f64; 4],
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// Reference length in tokens.
    pub ref_len: u64,
    /// sacrebleu's signature of the settings.
    pub signature: String,
}

fn preprocess(s: &str) -> String {
    tokenize_13a(py_rstrip(&s.to_lowercase()))
}

fn ngrams(line: &str) -> (HashMap<Vec<&str>, u64>, u64) {
    let tokens: Vec<&str> = py_split(line).collect();
    let mut out: HashMap<Vec<&str>, u64> = HashMap::new();
    for n in 1..=4 {
        for w in tokens.windows(n) {
            *out.entry(w.to_vec()).or_default() += 1;
        }
    }
    (out, tokens.len() as u64)
}

/// sacrebleu's `my_log`: log with 0 floored to -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// Corpus BLEU of `hyps` against one reference each (`refs[i]` for `hyps[i]`).
///
/// # Panics
/// When the two lists differ in length.
pub fn corpus_bleu<S: AsRef<str>, T: AsRef<str>>(hyps: &[S], refs: &[T]) -> Bleu {
    assert_eq!(hyps.len(), refs.len(), "one reference per hypothesis");
    let (mut correct, mut total) = ([0u64; 4], [0u64; 4]);
    let (mut sys_len, mut ref_len) = (0u64, 0u64);
    for (h, r) in hyps.iter().zip(refs) {
        let (h, r) = (preprocess(h.as_ref()), preprocess(r.as_ref()));
        let (hn, hl) = ngrams(&h);
        let (rn, rl) = ngrams(&r);
        sys_len += hl;
        ref_len += rl;
        for (g, c) in &hn {
            total[g.len() - 1] += c;
            if let Some(rc) = rn.get(g) {
                correct[g.len() - 1] += (*c).min(*rc);
            }
        }
    }
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0f64; 4];
    let mut score = 0.0;
    if correct.iter().any(|&c| c > 0) {
        let mut smooth = 1.0f64;
        let mut order = 4;
        for n in 0..4 {
            if total[n] == 0 {
                break;
            }
            order = n + 1;
            precisions[n] = if correct[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total[n] as f64)
            } else {
                100.0 * correct[n] as f64 / total[n] as f64
            };
        }
        score =
            bp * (precisions[..order].iter().map(|&p| my_log(p)).sum::<f64>() / order as f64).exp();
    }
    Bleu {
        score,
        counts: correct,
        totals: total,
        precisions,
        bp,
        sys_len,
        ref_len,
        signature: format!(
            "nrefs:1|case:lc|eff:yes|tok:13a|smooth:exp|version:{SACREBLEU_VERSION}"
        ),
    }
}
