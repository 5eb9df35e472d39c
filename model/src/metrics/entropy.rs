//! Unigram entropy of a sample's token ids (spec §6.3), as the reference computes it: counts
//! over the ids, `p = count / length` and each term `p ln(p + 1e-10)` in float32, summed.

/// The entropy of one sample's ids (0 for an empty sample).
pub fn unigram_entropy(ids: &[u32]) -> f32 {
    if ids.is_empty() {
        return 0.0;
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let n = ids.len() as f32;
    // Each term in float32 as the reference; the sum in f64, which numpy's pairwise float32
    // summation approximates far better than a sequential float32 sum would.
    let mut h = 0.0f64;
    let mut i = 0;
    while i < sorted.len() {
        let j = sorted[i..].partition_point(|&x| x == sorted[i]) + i;
        let p = (j - i) as f32 / n;
        h -= f64::from(p * (p + 1e-10).ln());
        i = j;
    }
    h as f32
}

/// The plain mean of the per-sample entropies (the reference's `mean_entropy`).
pub fn mean_entropy(samples: &[Vec<u32>]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples
        .iter()
        .map(|s| f64::from(unigram_entropy(s)))
        .sum::<f64>()
        / samples.len() as f64
}
