//! Model FLOPs of one training step per text token: the count of `scripts/bench/flops.py`
//! (matmul FLOPs only, 2 per multiply-add), so MFU on the status page and in `/metrics` has
//! the same denominator as the PyTorch anchor's. The "required" count: two no-grad
//! self-conditioning forwards (the reference writes three, one of which is bit-identical).

use elf_shared::config::{Config, EncoderDims};

use crate::dims::ElfDims;

/// Forward FLOPs of the frozen T5 encoder per token.
fn encoder_fwd_per_token(l: f64, e: &EncoderDims) -> f64 {
    let (d, inner, d_ff) = (
        e.d_model as f64,
        (e.d_kv * e.num_heads) as f64,
        e.d_ff as f64,
    );
    let proj = 4.0 * 2.0 * d * inner;
    let ffn = 2.0 * 2.0 * d * d_ff;
    let attn = 2.0 * 2.0 * l * inner;
    e.num_layers as f64 * (proj + ffn + attn)
}

/// Forward FLOPs of the ELF network per text token: (denoiser mode, decoder mode).
fn elf_fwd_per_token(m: &ElfDims) -> (f64, f64) {
    let l = m.seq_len as f64;
    let s = (m.seq_len + m.n_time + m.n_sc + m.n_mode) as f64;
    let (d, f, e, b, v) = (
        m.hidden as f64,
        m.ffn as f64,
        m.latent as f64,
        m.bottleneck as f64,
        m.vocab as f64,
    );
    let per_pos_layer =
        2.0 * d * 3.0 * d + 2.0 * d * d + 2.0 * d * 2.0 * f + 2.0 * f * d + 2.0 * 2.0 * s * d;
    let body = m.depth as f64 * per_pos_layer * s / l;
    let inputs = 2.0 * (2.0 * e) * e + 2.0 * e * b + 2.0 * b * d;
    let final_ = 2.0 * d * e;
    let head = 2.0 * d * e + 2.0 * e * v;
    (body + inputs + final_, body + inputs + head)
}

/// Model FLOPs of one training step per text token, expected over the branch coin
/// (`decoder_prob`): `elf_train_flops(...)["required"]["expected"]` of `flops.py`.
pub fn train_flops_per_token(m: &ElfDims, enc: &EncoderDims, decoder_prob: f64) -> f64 {
    let (fwd_den, fwd_dec) = elf_fwd_per_token(m);
    let enc = encoder_fwd_per_token(m.seq_len as f64, enc);
    let den = (2.0 + 3.0) * fwd_den + enc;
    let dec = 3.0 * fwd_dec + enc;
    (1.0 - decoder_prob) * den + decoder_prob * dec
}

/// [`train_flops_per_token`] of the network a config trains.
pub fn config_flops_per_token(c: &Config) -> f64 {
    let dims = ElfDims::from_config(c, crate::dims::T5_VOCAB);
    train_flops_per_token(&dims, &c.encoder, c.decoder_prob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(d: usize, d_kv: usize, heads: usize, d_ff: usize, layers: usize) -> EncoderDims {
        EncoderDims {
            vocab_size: 32128,
            d_model: d,
            d_kv,
            num_heads: heads,
            d_ff,
            num_layers: layers,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            init_seed: 0,
        }
    }

    /// Golden values from `scripts/bench/flops.py` (Python 3.11, no dependencies):
    /// `elf_train_flops(L=..., n_prefix=12, d=..., depth=..., ffn_inner=int(int(d*4)*2/3),
    /// enc_dim=..., bottleneck=128, vocab=32100, enc_inner=..., enc_ff=..., enc_layers=...,
    /// decoder_prob=0.2)["required"]["expected"]` for the anchor's tiny model at L=64 and
    /// ELF-B with t5-small at L=128 and L=1024.
    #[test]
    fn the_count_equals_flops_py() {
        let cases = [
            ("ELF-T", 64, enc(64, 16, 4, 128, 2), 4176633.6),
            ("ELF-B", 128, enc(512, 64, 8, 2048, 6), 949613260.8),
            ("ELF-B", 1024, enc(512, 64, 8, 2048, 6), 1048295923.2),
        ];
        for (name, l, e, want) in cases {
            let mut m = ElfDims::from_preset(name, crate::dims::T5_VOCAB, l).unwrap();
            m.latent = e.d_model;
            let got = train_flops_per_token(&m, &e, 0.2);
            assert!(
                ((got - want) / want).abs() < 1e-12,
                "{name} L={l}: {got} vs flops.py {want}"
            );
        }
    }
}
