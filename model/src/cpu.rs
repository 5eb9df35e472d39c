//! Host kernels for the CPU backend where burn's generic ops are the bottleneck.
//!
//! The CE branch applies `exp` to `rows × 32100` logits; flex calls scalar `expf` per element.
//! Here one fused pass per row computes the NLL and the softmax gradient with a branch-free
//! polynomial `exp` that LLVM vectorises.

use rayon::prelude::*;

/// `exp(x)` for `x ≤ 0` (or moderately positive), relative error below 2e-7, vectorisable.
///
/// Cephes `expf`: `x = n·ln2 + r`, `|r| ≤ ln2/2`, degree-6 polynomial, `2^n` through the
/// exponent bits. Inputs below −87 flush to 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    // Round to nearest with the 1.5·2^23 trick (no branches, no `round` call).
    let shifter = 12_582_912.0f32;
    let n = (x * LOG2E + shifter) - shifter;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    y * f32::from_bits(bits)
}

/// Weighted CE over rows of logits: returns per-row NLL and writes `w·(softmax − onehot)` into
/// `logits` in place.
///
/// logits: `rows × v` row-major; ids, w: `rows`.
pub fn cross_entropy_rows(logits: &mut [f32], v: usize, ids: &[i64], w: &[f32]) -> Vec<f32> {
    logits
        .par_chunks_mut(v)
        .zip(ids.par_iter().zip(w.par_iter()))
        .map(|(row, (&id, &wi))| {
            let m = lanes_fold(row, f32::NEG_INFINITY, f32::max);
            let target = row[id as usize];
            for z in row.iter_mut() {
                *z = exp_f32(*z - m);
            }
            let sum = lanes_fold(row, 0.0, |a, b| a + b);
            let scale = wi / sum;
            for z in row.iter_mut() {
                *z *= scale;
            }
            row[id as usize] -= wi;
            m + sum.ln() - target
        })
        .collect()
}

/// Folds a slice with 16 independent accumulators so the loop vectorises (a single float
/// accumulator is a serial dependency chain LLVM may not reorder).
#[inline(always)]
fn lanes_fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    const L: usize = 16;
    let mut acc = [init; L];
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            acc[i] = f(acc[i], c[i]);
        }
    }
    let mut r = tail.iter().fold(init, |a, &b| f(a, b));
    for a in acc {
        r = f(r, a);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_on_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (90.0 / 200_000.0);
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn cross_entropy_matches_the_definition() {
        let mut z = vec![1.0f32, 2.0, 3.0, -1.0, 0.0, 0.5];
        let nll = cross_entropy_rows(&mut z, 3, &[2, 0], &[1.0, 0.5]);
        let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((nll[0] as f64 - (lse0 - 3.0)).abs() < 1e-6);
        let p2 = 3f64.exp() / (lse0.exp());
        assert!((z[2] as f64 - (p2 - 1.0)).abs() < 1e-6);
        let lse1 = ((-1f64).exp() + 1.0 + 0.5f64.exp()).ln();
        assert!((nll[1] as f64 - (lse1 + 1.0)).abs() < 1e-6);
        assert!((z[3] as f64 - 0.5 * ((-1f64).exp() / lse1.exp() - 1.0)).abs() < 1e-6);
    }
}
