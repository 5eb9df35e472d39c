//! Network dimensions: the ELF presets of spec §1.1 and the encoder shape of spec §2.1.

use elf_shared::config::{Config, EncoderDims};

/// Every size the ELF network needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ElfDims {
    /// Width `H`.
    pub hidden: usize,
    /// Depth `D`.
    pub depth: usize,
    /// Heads `n_h`.
    pub heads: usize,
    /// SwiGLU inner width `F`.
    pub ffn: usize,
    /// Latent width `E` (the encoder's `d_model`).
    pub latent: usize,
    /// Text bottleneck `b`.
    pub bottleneck: usize,
    /// CE vocabulary `V`.
    pub vocab: usize,
    /// Text positions `S`.
    pub seq_len: usize,
    /// Time prefix tokens.
    pub n_time: usize,
    /// SC-CFG prefix tokens.
    pub n_sc: usize,
    /// Mode tokens.
    pub n_mode: usize,
}

/// The vocabulary of the t5-small tokenizer (`len(tokenizer)`, spec §1.5).
pub const T5_VOCAB: usize = 32100;

/// Returns the SwiGLU inner width of spec §1.3.5: `int(int(H·r)·2/3)`.
pub fn swiglu_inner(hidden: usize, mlp_ratio: f64) -> usize {
    let mlp_hidden = (hidden as f64 * mlp_ratio) as usize;
    (mlp_hidden as f64 * 2.0 / 3.0) as usize
}

impl ElfDims {
    /// Returns `(H, D, n_h)` of a preset name: ELF-B/M/L (spec §1.1) or ELF-T (our tiny CPU model).
    pub fn preset(name: &str) -> Option<(usize, usize, usize)> {
        match name {
            "ELF-B" => Some((768, 12, 12)),
            "ELF-M" => Some((1056, 24, 16)),
            "ELF-L" => Some((1280, 32, 16)),
            "ELF-T" => Some((64, 2, 4)),
            _ => None,
        }
    }

    /// Builds the dimensions of a preset with the paper's latent/bottleneck/prefix sizes.
    pub fn from_preset(name: &str, vocab: usize, seq_len: usize) -> Option<Self> {
        let (hidden, depth, heads) = Self::preset(name)?;
        Some(Self {
            hidden,
            depth,
            heads,
            ffn: swiglu_inner(hidden, 4.0),
            latent: 512,
            bottleneck: 128,
            vocab,
            seq_len,
            n_time: 4,
            n_sc: 4,
            n_mode: 4,
        })
    }

    /// Builds the dimensions a config describes (`model_dims` wins over the `model` preset).
    ///
    /// # Panics
    /// If the config names an unknown preset; [`Config::validate`] rejects that first.
    pub fn from_config(c: &Config, vocab: usize) -> Self {
        let (hidden, depth, heads, ratio) = match &c.model_dims {
            Some(d) => (d.hidden, d.depth, d.heads, d.mlp_ratio),
            None => {
                let (h, d, n) = Self::preset(&c.model).expect("validated preset");
                (h, d, n, 4.0)
            }
        };
        Self {
            hidden,
            depth,
            heads,
            ffn: swiglu_inner(hidden, ratio),
            latent: c.encoder.d_model,
            bottleneck: c.bottleneck_dim,
            vocab,
            seq_len: c.max_length,
            n_time: c.num_time_tokens,
            n_sc: c.num_self_cond_cfg_tokens,
            n_mode: c.num_model_mode_tokens,
        }
    }

    /// Returns the head width `H / n_h`.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Returns the number of unrotated prefix positions.
    pub fn prefix(&self) -> usize {
        self.n_time + self.n_sc + self.n_mode
    }
}

/// The frozen encoder's shape (re-exported config section).
pub type T5Dims = EncoderDims;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_rule_matches_spec() {
        assert_eq!(swiglu_inner(768, 4.0), 2048);
        assert_eq!(swiglu_inner(1056, 4.0), 2816);
        assert_eq!(swiglu_inner(1280, 4.0), 3413);
    }
}
