//! Generative perplexity (spec §6.2): the samples' GPT-2 token ids scored by a causal LM.
//!
//! Rows are right-padded with EOS to the longest sample; token `j >= 1` counts iff it is not
//! EOS or it is the row's first EOS (the probability of ending is scored, later padding is
//! not); `PPL = exp(Σ NLL / Σ count)` over the whole corpus, token-weighted.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::gpt2::Gpt2;

/// Which positions `j = 1..L` of a padded row are scored.
pub fn scored_positions(row: &[u32], eos: u32) -> Vec<bool> {
    let mut seen = 0usize;
    let mut out = Vec::with_capacity(row.len().saturating_sub(1));
    for (j, &t) in row.iter().enumerate() {
        if t == eos {
            seen += 1;
        }
        if j > 0 {
            out.push(t != eos || seen == 1);
        }
    }
    out
}

/// The corpus perplexity and what it was computed from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// `exp(total NLL / scored tokens)`.
    pub ppl: f64,
    /// Scored tokens.
    pub tokens: u64,
    /// Per-sample perplexity (computed, not reported by the reference).
    pub per_sample: Vec<f64>,
}

/// Scores `samples` (GPT-2 ids, already truncated to the model's context; empty samples must
/// have been dropped) with `model`, `batch` rows at a time.
///
/// Each batch is padded only as far as the corpus padding would matter: to the longest row
/// of the corpus, or one past the batch's longest row, whichever is shorter (the causal mask
/// makes the rest irrelevant), so the result equals padding everything to the longest row.
pub fn generative_perplexity<B: Backend>(
    model: &Gpt2<B>,
    samples: &[Vec<u32>],
    eos: u32,
    batch: usize,
    device: &B::Device,
) -> Perplexity {
    let longest = samples.iter().map(Vec::len).max().unwrap_or(0);
    let (mut total, mut count) = (0.0f64, 0u64);
    let mut per_sample = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch.max(1)) {
        let width = (chunk.iter().map(Vec::len).max().unwrap_or(0) + 1).min(longest);
        if width < 2 {
            // A single token has nothing to score.
            per_sample.extend(std::iter::repeat_n(f64::NAN, chunk.len()));
            continue;
        }
        let mut flat = Vec::with_capacity(chunk.len() * width);
        for row in chunk {
            flat.extend(row.iter().map(|&t| t as i64));
            flat.extend(std::iter::repeat_n(eos as i64, width - row.len()));
        }
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(flat.clone(), [chunk.len(), width]),
            device,
        );
        let nll = model.token_nll(ids).into_data();
        let nll = nll.as_slice::<f32>().expect("f32 logits");
        for (r, row) in flat.chunks(width).enumerate() {
            let row: Vec<u32> = row.iter().map(|&t| t as u32).collect();
            let (mut s, mut n) = (0.0f64, 0u64);
            for (j, ok) in scored_positions(&row, eos).into_iter().enumerate() {
                if ok {
                    s += f64::from(nll[r * (width - 1) + j]);
                    n += 1;
                }
            }
            total += s;
            count += n;
            per_sample.push(if n > 0 {
                (s / n as f64).exp()
            } else {
                f64::NAN
            });
        }
    }
    Perplexity {
        ppl: if count > 0 {
            (total / count as f64).exp()
        } else {
            f64::NAN
        },
        tokens: count,
        per_sample,
    }
}
