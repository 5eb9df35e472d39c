//! The only source of randomness: a counter-based generator keyed by what a draw is for.
//!
//! A draw is a pure function of `(root seed, purpose, a, b)` and a counter, never of a process,
//! thread or rank. Training keys use `a = step` and `b = global sample index`, so a sample gets
//! the same time, noise and masks whichever rank trains it and however the batch is split
//! (architecture.md, "Data parallel semantics").
//!
//! The mixer is SplitMix64's finaliser (Steele et al. 2014), applied to the key and again to
//! `key + counter · φ`, which passes BigCrush as a counter-based generator.

/// What a random draw is used for; each purpose is an independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Purpose {
    /// Initialisation of the ELF network.
    ModelInit = 1,
    /// Random initialisation of the frozen encoder when no checkpoint is given.
    EncoderInit = 2,
    /// The per-epoch permutation of the training set.
    DataOrder = 3,
    /// Flow time `t` of a sample.
    Time = 4,
    /// Noise `ε` of a sample.
    Noise = 5,
    /// Self-conditioning coin of a sample.
    SelfCond = 6,
    /// SC-CFG scale `w` of a sample.
    ScCfgScale = 7,
    /// Decoder/denoiser coin of a branch shard.
    Branch = 8,
    /// Per-token decoder mix `λ`.
    DecoderLambda = 9,
    /// Decoder noise `ε'`.
    DecoderNoise = 10,
    /// Label-drop coin of a sample.
    LabelDrop = 11,
    /// Initial noise and SDE churn at sampling time.
    SamplingNoise = 12,
    /// Random sampling time grids.
    SamplingGrid = 13,
    /// Dropout masks.
    Dropout = 14,
}

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

/// Returns SplitMix64's finaliser of `z`.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives the key of the stream for `(seed, purpose, a, b)`.
pub fn derive_key(seed: u64, purpose: Purpose, a: u64, b: u64) -> u64 {
    let mut k = mix64(seed.wrapping_add(PHI));
    k = mix64(k ^ (purpose as u64).wrapping_mul(PHI));
    k = mix64(k ^ a.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    mix64(k ^ b.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F))
}

/// A counter-based random stream; cloning it replays the same numbers.
#[derive(Debug, Clone)]
pub struct Stream {
    key: u64,
    counter: u64,
    spare: Option<f64>,
}

impl Stream {
    /// Starts the stream of `(seed, purpose, a, b)` at counter 0.
    pub fn new(seed: u64, purpose: Purpose, a: u64, b: u64) -> Self {
        Self {
            key: derive_key(seed, purpose, a, b),
            counter: 0,
            spare: None,
        }
    }

    /// Returns the next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let out = mix64(self.key.wrapping_add(self.counter.wrapping_mul(PHI)));
        self.counter += 1;
        out
    }

    /// Returns a uniform double in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Returns a standard normal (Box–Muller; the second value of each pair is kept).
    #[inline]
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - u is in (0, 1], so the log is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }

    /// Fills `out` with standard normals as f32.
    pub fn fill_normal_f32(&mut self, out: &mut [f32]) {
        for v in out {
            *v = self.normal() as f32;
        }
    }

    /// Returns a uniform integer in `[0, n)` (Lemire's multiply-shift, negligible bias for n << 2^64).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Returns `sigmoid(x)`.
#[inline]
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A pseudo-random permutation of `[0, n)` computed pointwise in O(1) expected time.
///
/// A 4-round balanced Feistel network on the smallest even power of two covering `n`, with
/// cycle-walking to stay inside `[0, n)`: no table, so resuming at any position costs nothing.
#[derive(Debug, Clone)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    /// Builds the permutation of `[0, n)` for `(seed, a)`.
    pub fn new(n: u64, seed: u64, a: u64) -> Self {
        let bits = 64 - n.max(2).saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut s = Stream::new(seed, Purpose::DataOrder, a, 0);
        let keys = [s.next_u64(), s.next_u64(), s.next_u64(), s.next_u64()];
        Self { n, half_bits, keys }
    }

    /// Returns the number of elements.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Returns true when the permutation is empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            let f = mix64(r ^ k) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }

    /// Returns the element at position `i` (`i < n`).
    pub fn at(&self, i: u64) -> u64 {
        assert!(i < self.n, "permutation index {i} out of range {}", self.n);
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_pure_functions_of_their_key() {
        let a: Vec<u64> = (0..4)
            .map(|_| Stream::new(7, Purpose::Noise, 3, 9).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut s1 = Stream::new(7, Purpose::Noise, 3, 9);
        let mut s2 = Stream::new(7, Purpose::Noise, 3, 10);
        let mut s3 = Stream::new(7, Purpose::Time, 3, 9);
        let (x1, x2, x3) = (s1.next_u64(), s2.next_u64(), s3.next_u64());
        assert!(x1 != x2 && x1 != x3 && x2 != x3);
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut s = Stream::new(1, Purpose::Noise, 0, 0);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| s.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 10, 17, 1000, 4097] {
            let p = Permutation::new(n, 42, 3);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let x = p.at(i) as usize;
                assert!(!seen[x], "n={n}: {x} twice");
                seen[x] = true;
            }
        }
        let a: Vec<u64> = (0..100)
            .map(|i| Permutation::new(100, 1, 0).at(i))
            .collect();
        let b: Vec<u64> = (0..100)
            .map(|i| Permutation::new(100, 1, 1).at(i))
            .collect();
        assert_ne!(a, b, "epochs must differ");
        assert_ne!(a, (0..100).collect::<Vec<_>>(), "must shuffle");
    }
}
