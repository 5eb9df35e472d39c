//! Assembly of a rank's share of a global batch: rows from the plan, collation, branch coins per
//! shard, keyed draws per sample, and loss weights that make the sum over ranks the reference's
//! mean of per-shard losses (spec §4.4, §4.5, §4.9).
//!
//! The reference flips one decoder/denoiser coin per device. We flip it per *branch shard* of
//! `train.branch_shard_size` consecutive positions of the global batch (the reference's
//! per-device batch), keyed by `(seed, step, shard)`, so the mix of branches does not depend on
//! the world size.

use elf_model::objective::{Branch, Draws, HostBatch, draw_sample};
use elf_shared::config::Config;
use elf_shared::seed::{Purpose, Stream};

use elf_dataset::collate::Collator;
use elf_dataset::{DataError, Dataset};

/// One micro-batch of a single branch, ready for the objective.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// Which branch it trains.
    pub branch: Branch,
    /// Ids, lengths, label drops and loss weights.
    pub batch: HostBatch,
    /// Random draws.
    pub draws: Draws,
    /// Global-batch positions of its samples.
    pub positions: Vec<u64>,
}

/// Returns the branch of shard `shard` at `step`.
pub fn shard_branch(c: &Config, step: u64, shard: u64) -> Branch {
    let u = Stream::new(c.seed, Purpose::Branch, step, shard).uniform();
    if u < c.decoder_prob {
        Branch::Decoder
    } else {
        Branch::Denoiser
    }
}

/// Builds the micro-batches of one rank's slice of step `step`: `slice` holds `(position, row)`
/// pairs in position order (from the sample plan), covering whole branch shards of a global
/// batch of `n_shards` shards.
///
/// `latent` is the encoder width `E`; `micro` caps the samples per micro-batch.
///
/// # Errors
/// Dataset read errors, and token ids outside the vocabulary (naming the row).
#[allow(clippy::too_many_arguments)]
pub fn build(
    c: &Config,
    data: &dyn Dataset,
    collator: &Collator,
    step: u64,
    slice: &[(u64, u64)],
    n_shards: u64,
    latent: usize,
    micro: usize,
) -> Result<Vec<MicroBatch>, DataError> {
    let s = collator.seq_len;
    let shard = c.train.branch_shard_size;
    assert!(
        slice.len().is_multiple_of(shard)
            && slice
                .first()
                .is_none_or(|x| x.0.is_multiple_of(shard as u64)),
        "a rank's slice must hold whole branch shards"
    );
    let mut groups: [Vec<MicroBatch>; 2] = [vec![], vec![]];
    for part in slice.chunks(shard) {
        let sh = part[0].0 / shard as u64;
        let branch = shard_branch(c, step, sh);
        // Collate the whole shard first: its loss normaliser needs every sample's mask.
        let mut rows = Vec::with_capacity(shard);
        let mut masks = vec![0f32; shard * s];
        for (k, &(p, row_idx)) in part.iter().enumerate() {
            let row = data.row(row_idx)?;
            let col = collator.collate(&row).map_err(|m| DataError::Format {
                name: data.describe(),
                message: format!("row {row_idx}: {m}"),
            })?;
            collator.loss_mask(&col, &mut masks[k * s..(k + 1) * s]);
            rows.push((p, col));
        }
        let total: f32 = masks.iter().sum();
        let scale = 1.0 / (total.max(1.0) * n_shards as f32);
        let group = &mut groups[(branch == Branch::Decoder) as usize];
        for (k, (p, col)) in rows.into_iter().enumerate() {
            if group.last().is_none_or(|m| m.batch.n >= micro) {
                group.push(MicroBatch {
                    branch,
                    batch: HostBatch {
                        s,
                        ..HostBatch::default()
                    },
                    draws: Draws::default(),
                    positions: vec![],
                });
            }
            let mb = group.last_mut().expect("pushed above");
            let b = &mut mb.batch;
            b.n += 1;
            b.ids.extend_from_slice(&col.ids);
            b.cond_len.push(col.cond_len);
            b.total_len.push(col.total_len);
            let drop = c.label_drop_prob > 0.0
                && col.cond_len > 0
                && Stream::new(c.seed, Purpose::LabelDrop, step, p).uniform() < c.label_drop_prob;
            b.label_drop.push(if drop { 1.0 } else { 0.0 });
            b.weight
                .extend(masks[k * s..(k + 1) * s].iter().map(|m| m * scale));
            draw_sample(c, branch, step, p, s, latent, &mut mb.draws);
            mb.positions.push(p);
        }
    }
    let [den, dec] = groups;
    Ok(den.into_iter().chain(dec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_mix_follows_decoder_prob() {
        let c = Config {
            decoder_prob: 0.2,
            ..Config::default()
        };
        let n = 20_000;
        let dec = (0..n)
            .filter(|&i| shard_branch(&c, i / 32, i % 32) == Branch::Decoder)
            .count();
        let frac = dec as f64 / n as f64;
        assert!((frac - 0.2).abs() < 0.01, "{frac}");
    }
}
