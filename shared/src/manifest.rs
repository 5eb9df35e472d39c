//! The checkpoint manifest: what a committed checkpoint holds and how to verify it.
//!
//! A checkpoint is a folder `checkpoints/step-<step:09>/` of shards plus `manifest.json`, which
//! the coordinator writes last, after every shard's sha256 and size are known. A checkpoint
//! exists if and only if its manifest does; `latest` (beside `checkpoints/`) names the newest
//! committed step and moves only after the manifest is durable.
//!
//! The training state is one flat f32 vector in a fixed order (parameters, EMA, then the
//! optimiser moments), indexed by [`TensorEntry`]; rank `r` of `W` writes elements
//! `[r·N/W, (r+1)·N/W)`, so shards can be read back at any world size.
//!
//! A manifest is verified, not trusted: [`Manifest::check`] recomputes its own hash and checks
//! the tensor index against the shard table and the shard sizes before anything is allocated,
//! and [`decode_shard`] checks every piece of a shard against the index before a tensor byte
//! is used.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Current manifest format: 2 carries [`Manifest::manifest_sha256`] and
/// [`Manifest::param_digest`]; format 1 (without them) is still read.
pub const FORMAT: u32 = 2;

/// The largest state a manifest may describe: 2^40 elements (4 TiB of f32).
pub const MAX_NUMEL: u64 = 1 << 40;

/// The most tensors a manifest may index.
pub const MAX_TENSORS: usize = 1 << 20;

/// The most bytes a shard may hold beyond its elements (the safetensors header).
pub const MAX_SHARD_HEADER: u64 = 64 << 20;

/// One named tensor of the flat state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// `params/<flax name>`, `ema/<flax name>`, `opt_mu/<flax name>` or `opt_nu/<flax name>`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// First element in the flat state.
    pub offset: u64,
}

impl TensorEntry {
    /// Returns the number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64
    }
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the checkpoint folder.
    pub file: String,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// First flat element it holds.
    pub start: u64,
    /// Elements it holds.
    pub len: u64,
}

/// A committed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The last step whose update the state includes.
    pub step: u64,
    /// The data cursor: the next step to train (the plan is a pure function of the step).
    pub next_step: u64,
    /// Optimiser steps taken (the schedule's and the moments' counter).
    pub optimizer_count: u64,
    /// Hash of the resolved config.
    pub config_hash: String,
    /// The resolved config, canonical YAML.
    pub config_yaml: String,
    /// World size that wrote the shards.
    pub world_size: u32,
    /// Elements in the flat state.
    pub numel: u64,
    /// Tensor index over the flat state.
    pub tensors: Vec<TensorEntry>,
    /// Shards, in rank order.
    pub shards: Vec<ShardEntry>,
    /// Random state: every draw is keyed by (seed, step, sample), so the seed and the step are
    /// the whole generator state.
    pub seed: u64,
    /// Metrics of the step.
    pub metrics: serde_json::Value,
    /// Evaluation results attached later (none yet).
    #[serde(default)]
    pub eval: serde_json::Value,
    /// sha256 of the live parameters (the leading `params/` tensors of the flat state, f32
    /// little-endian, in order): the replicas' digest of the step, recomputed after a load.
    #[serde(default)]
    pub param_digest: String,
    /// sha256 of this manifest's JSON with this field empty (format 2): a manifest changed
    /// after it was written does not verify.
    #[serde(default)]
    pub manifest_sha256: String,
}

impl Manifest {
    /// Returns the hash this manifest should carry in [`Manifest::manifest_sha256`].
    pub fn own_hash(&self) -> String {
        let mut m = self.clone();
        m.manifest_sha256.clear();
        hex::encode(Sha256::digest(
            serde_json::to_vec(&m).expect("a manifest serialises"),
        ))
    }

    /// Returns the manifest with its own hash filled in (what is written).
    pub fn sealed(mut self) -> Self {
        self.format = FORMAT;
        self.manifest_sha256 = self.own_hash();
        self
    }

    /// Returns the number of elements of the live parameters: the leading run of `params/`
    /// tensors.
    pub fn params_len(&self) -> u64 {
        self.tensors
            .iter()
            .take_while(|t| t.name.starts_with("params/"))
            .map(TensorEntry::numel)
            .sum()
    }

    /// Checks the manifest against itself: its hash (format 2), the step of the folder it lies
    /// in (when known), the tensor index (contiguous from 0, summing to `numel`), and the shard
    /// table (one shard per rank, each the rank's range, each file's size fitting its
    /// elements). Nothing here allocates in proportion to what the manifest claims.
    ///
    /// # Errors
    /// The first inconsistency, in words naming the field.
    pub fn check(&self, folder_step: Option<u64>) -> Result<(), String> {
        match self.format {
            1 => {}
            2 => {
                let got = self.own_hash();
                if got != self.manifest_sha256 {
                    return Err(format!(
                        "manifest_sha256 is {:?} but the manifest hashes to {got}: it was changed after it was written",
                        self.manifest_sha256
                    ));
                }
            }
            f => {
                return Err(format!(
                    "format {f} is not known (this build reads 1 and 2)"
                ));
            }
        }
        if let Some(s) = folder_step
            && s != self.step
        {
            return Err(format!(
                "step is {} but the manifest lies in the folder of step {s}",
                self.step
            ));
        }
        if self.next_step != self.step + 1 {
            return Err(format!(
                "next_step is {} but step is {}",
                self.next_step, self.step
            ));
        }
        if self.numel > MAX_NUMEL {
            return Err(format!(
                "numel {} is over the limit of {MAX_NUMEL}",
                self.numel
            ));
        }
        if self.tensors.len() > MAX_TENSORS {
            return Err(format!(
                "{} tensors is over the limit of {MAX_TENSORS}",
                self.tensors.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut at = 0u64;
        for t in &self.tensors {
            if t.name.is_empty() || t.name.contains('@') || !names.insert(t.name.as_str()) {
                return Err(format!("tensors: bad or repeated name {:?}", t.name));
            }
            let n = t
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .filter(|&n| n <= MAX_NUMEL)
                .ok_or_else(|| {
                    format!("tensors: {} has an oversized shape {:?}", t.name, t.shape)
                })?;
            if t.offset != at {
                return Err(format!(
                    "tensors: {} starts at element {} but the tensors before it end at {at}",
                    t.name, t.offset
                ));
            }
            at += n;
        }
        if at != self.numel {
            return Err(format!(
                "the tensors hold {at} elements but numel is {}",
                self.numel
            ));
        }
        let w = self.world_size as u64;
        if w == 0 || self.shards.len() as u64 != w {
            return Err(format!(
                "{} shards for a world size of {}",
                self.shards.len(),
                self.world_size
            ));
        }
        for (r, s) in self.shards.iter().enumerate() {
            let want = shard_file(r as u32, self.world_size);
            if s.file != want {
                return Err(format!(
                    "shards[{r}]: file is {:?}, expected {want:?}",
                    s.file
                ));
            }
            let (a, b) = shard_range(self.numel, r as u64, w);
            if s.start != a || s.len != b - a {
                return Err(format!(
                    "{}: holds elements [{}, +{}) but rank {r} of {w} holds [{a}, {b})",
                    s.file, s.start, s.len
                ));
            }
            let data = 4 * s.len;
            if s.size < data + 8 || s.size > data + 8 + MAX_SHARD_HEADER {
                return Err(format!(
                    "{}: size {} cannot hold {} f32 elements",
                    s.file, s.size, s.len
                ));
            }
        }
        Ok(())
    }
}

/// Decodes one shard file of a checked manifest: checks its safetensors header and every
/// piece against the tensor index (name, shape, range, dtype) and that the pieces tile the
/// shard's range exactly, then calls `put(first flat element, little-endian f32 bytes)` for
/// each piece in flat order.
///
/// # Errors
/// What is wrong with which piece, in words.
pub fn decode_shard(
    m: &Manifest,
    shard: &ShardEntry,
    bytes: &[u8],
    put: &mut dyn FnMut(u64, &[u8]),
) -> Result<(), String> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a safetensors file: {e}"))?;
    let by_name: std::collections::HashMap<&str, &TensorEntry> =
        m.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let (start, end) = (shard.start, shard.start + shard.len);
    let mut pieces = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("piece {name} is {:?}, not F32", view.dtype()));
        }
        let (base, lo, hi) = match name.split_once('@') {
            Some((b, r)) => {
                let range = r
                    .split_once(':')
                    .and_then(|(a, z)| Some((a.parse::<u64>().ok()?, z.parse::<u64>().ok()?)));
                let (a, z) = range.ok_or_else(|| format!("bad piece name {name}"))?;
                (b, a, z)
            }
            None => (
                name.as_str(),
                0,
                by_name.get(name.as_str()).map_or(0, |t| t.numel()),
            ),
        };
        let t = by_name
            .get(base)
            .ok_or_else(|| format!("tensor {base} is not in the manifest"))?;
        let whole = lo == 0 && hi == t.numel() && !name.contains('@');
        let shape_ok = if whole {
            view.shape() == t.shape.as_slice()
        } else {
            view.shape() == [(hi.saturating_sub(lo)) as usize]
        };
        if lo >= hi || hi > t.numel() || !shape_ok {
            return Err(format!(
                "piece {name} (shape {:?}) does not fit tensor {base} of shape {:?}",
                view.shape(),
                t.shape
            ));
        }
        let (a, b) = (t.offset + lo, t.offset + hi);
        if a < start || b > end || view.data().len() as u64 != 4 * (hi - lo) {
            return Err(format!(
                "piece {name} holds elements [{a}, {b}), outside the shard's [{start}, {end})"
            ));
        }
        pieces.push((a, b, view.data()));
    }
    pieces.sort_by_key(|p| p.0);
    let mut at = start;
    for (a, b, _) in &pieces {
        if *a != at {
            return Err(format!(
                "elements [{at}, {a}) are missing or overlap another piece"
            ));
        }
        at = *b;
    }
    if at != end {
        return Err(format!("elements [{at}, {end}) are missing"));
    }
    for (a, _, data) in pieces {
        put(a, data);
    }
    Ok(())
}

/// Returns the first non-finite value of little-endian f32 bytes, with its index.
pub fn first_non_finite(bytes: &[u8]) -> Option<(usize, f32)> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .enumerate()
        .find(|(_, v)| !v.is_finite())
}

/// Returns the name of the tensor holding flat element `at`.
pub fn tensor_at(tensors: &[TensorEntry], at: u64) -> &str {
    let i = tensors.partition_point(|t| t.offset <= at);
    tensors
        .get(i.wrapping_sub(1))
        .map_or("?", |t| t.name.as_str())
}

/// Returns the folder name of a step's checkpoint.
pub fn step_dir(step: u64) -> String {
    format!("step-{step:09}")
}

/// Returns the shard file name of `rank` of `world`.
pub fn shard_file(rank: u32, world: u32) -> String {
    format!("shard-{rank:05}-of-{world:05}.safetensors")
}

/// Returns the flat range `[start, end)` that `rank` of `world` holds in a state of `n`.
pub fn shard_range(n: u64, rank: u64, world: u64) -> (u64, u64) {
    (rank * n / world, (rank + 1) * n / world)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is of the parsed manifest, so floats must parse back exactly (serde_json's
    /// `float_roundtrip`): a manifest with metrics and eval results re-hashes to itself.
    #[test]
    fn a_sealed_manifest_with_floats_rehashes_to_itself() {
        let m = Manifest {
            format: FORMAT,
            step: 9,
            next_step: 10,
            optimizer_count: 10,
            config_hash: "h".into(),
            config_yaml: "lr: 0.01\n".into(),
            world_size: 1,
            numel: 0,
            tensors: vec![],
            shards: vec![ShardEntry {
                file: shard_file(0, 1),
                sha256: "00".into(),
                size: 8,
                start: 0,
                len: 0,
            }],
            seed: 0,
            metrics: serde_json::json!({"loss": 0.1f32, "lr": 0.0033333333333333335, "grad_norm": 1.2345678901234567e-7}),
            eval: serde_json::json!({"results": [{"ppl": 123.456_789_012_345_68, "mean_entropy": 5.551115123125783e-17}]}),
            param_digest: "d".into(),
            manifest_sha256: String::new(),
        }
        .sealed();
        for text in [
            serde_json::to_vec(&m).unwrap(),
            serde_json::to_vec_pretty(&m).unwrap(),
        ] {
            let back: Manifest = serde_json::from_slice(&text).unwrap();
            back.check(Some(9)).unwrap();
        }
    }

    #[test]
    fn shard_ranges_tile_the_state() {
        for (n, w) in [(10u64, 3u64), (7, 4), (100, 1)] {
            let mut next = 0;
            for r in 0..w {
                let (a, b) = shard_range(n, r, w);
                assert_eq!(a, next);
                next = b;
            }
            assert_eq!(next, n);
        }
        assert_eq!(step_dir(1200), "step-000001200");
        assert_eq!(shard_file(0, 4), "shard-00000-of-00004.safetensors");
    }
}
