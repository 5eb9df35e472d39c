//! Checkpoint shards: encoding a rank's share of the flat training state as safetensors, and
//! reading a committed checkpoint back (at any world size) with every shard's hash checked.
//!
//! In a shard, a tensor that lies wholly inside the shard keeps its name and shape
//! (`params/blocks_0/attn/qkv/kernel`), so a one-rank checkpoint is an ordinary safetensors
//! file of named tensors; a tensor cut by a shard boundary appears as the flat piece
//! `<name>@<first>:<end>` (element offsets within the tensor).

use std::collections::BTreeMap;

use elf_shared::manifest::{Manifest, ShardEntry, TensorEntry};
use elf_store::{Location, StoreError};
use sha2::{Digest, Sha256};

/// A checkpoint error, naming the shard or manifest.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading from the store failed, or a shard's hash or size is not the manifest's.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every upload attempt of a shard failed.
    #[error("{target}: upload failed after {attempts} attempts: {source}")]
    Upload {
        /// The shard's location.
        target: String,
        /// Attempts made.
        attempts: usize,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },
    /// A piece of a shard does not fit the manifest's index.
    #[error("{shard}: {message}")]
    Piece {
        /// The shard.
        shard: String,
        /// What is wrong with which piece.
        message: String,
    },
}

/// One rank's shard, ready to stream: the safetensors header and the borrowed tensor data in
/// file order, so that writing it copies each element once, straight into the destination.
pub struct Shard<'a> {
    header: Vec<u8>,
    pieces: Vec<&'a [f32]>,
}

impl<'a> Shard<'a> {
    /// Lays out the flat elements `[start, end)` of a state indexed by `tensors`; `data` holds
    /// exactly those elements.
    pub fn new(tensors: &[TensorEntry], data: &'a [f32], start: u64, end: u64) -> Self {
        // safetensors: tensors sorted by name, 8-byte header length, JSON header padded with
        // spaces to a multiple of 8, then the data in header order.
        let mut named = BTreeMap::new();
        for t in tensors {
            let (a, b) = (t.offset, t.offset + t.numel());
            let (lo, hi) = (a.max(start), b.min(end));
            if lo >= hi {
                continue;
            }
            let piece = &data[(lo - start) as usize..(hi - start) as usize];
            if lo == a && hi == b {
                named.insert(t.name.clone(), (t.shape.clone(), piece));
            } else {
                let name = format!("{}@{}:{}", t.name, lo - a, hi - a);
                named.insert(name, (vec![piece.len()], piece));
            }
        }
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::json!({
                "format": "elf-state-v1",
                "start": start.to_string(),
                "len": (end - start).to_string(),
            }),
        );
        let mut at = 0usize;
        let mut pieces = Vec::with_capacity(named.len());
        for (name, (shape, piece)) in named {
            let bytes = piece.len() * 4;
            header.insert(
                name,
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + bytes]}),
            );
            at += bytes;
            pieces.push(piece);
        }
        let mut json = serde_json::to_vec(&header).expect("header serialises");
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut head = (json.len() as u64).to_le_bytes().to_vec();
        head.extend(json);
        Self {
            header: head,
            pieces,
        }
    }

    /// The size of the file in bytes.
    pub fn len(&self) -> usize {
        self.header.len() + self.pieces.iter().map(|p| p.len() * 4).sum::<usize>()
    }

    /// True when the shard holds no tensor data.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The byte runs of the file in order.
    fn runs(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.header.as_slice()).chain(
            self.pieces
                .iter()
                .map(|p| bytemuck::cast_slice::<f32, u8>(p)),
        )
    }

    /// The sha256 of the file, in hex.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for run in self.runs() {
            h.update(run);
        }
        hex::encode(h.finalize())
    }

    /// Writes the file to `w`.
    ///
    /// # Errors
    /// IO errors.
    pub fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        for run in self.runs() {
            w.write_all(run)?;
        }
        Ok(())
    }

    /// The file as one buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out)
            .expect("writing to memory cannot fail");
        out
    }
}

/// Returns the hex sha256 of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes one shard into `dir` and returns its manifest entry. A local folder is written in
/// place (streamed, then fsynced and renamed); an object store gets one buffer.
///
/// # Errors
/// The upload failed after `retries` attempts.
pub fn write_shard(
    dir: &Location,
    file: &str,
    tensors: &[TensorEntry],
    data: &[f32],
    start: u64,
    end: u64,
    retries: usize,
) -> Result<ShardEntry, CheckpointError> {
    let shard = Shard::new(tensors, data, start, end);
    let entry = ShardEntry {
        file: file.into(),
        sha256: shard.sha256(),
        size: shard.len() as u64,
        start,
        len: end - start,
    };
    let target = dir.join(file);
    let mut bytes = None;
    let mut last = None;
    for attempt in 0..retries.max(1) {
        let put = match &target {
            Location::Local(_) => target.put_with(&|w| shard.write_to(w)),
            Location::Store { .. } => target.put(
                bytes
                    .get_or_insert_with(|| bytes::Bytes::from(shard.to_bytes()))
                    .clone(),
            ),
        };
        match put {
            Ok(()) => return Ok(entry),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "shard upload failed, retrying");
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(200 << attempt.min(5)));
            }
        }
    }
    Err(CheckpointError::Upload {
        target: target.display(),
        attempts: retries.max(1),
        source: Box::new(last.expect("at least one attempt")),
    })
}

/// Reads every shard of a committed (and checked, see
/// [`elf_store::checkpoints::read_manifest`]) checkpoint into the flat state, checking first
/// that its tensor index is `expected` (the model's own: names, shapes, offsets), so nothing is
/// allocated for a state the model cannot hold, then every shard's size and sha256 and every
/// piece against the index.
///
/// # Errors
/// An index that is not the model's (naming the first differing tensor), a missing shard, one
/// whose size or hash differs from the manifest (naming both), or a piece that does not fit.
pub fn read_state(
    dir: &Location,
    m: &Manifest,
    expected: &[TensorEntry],
) -> Result<Vec<f32>, CheckpointError> {
    let manifest = dir.join("manifest.json").display();
    let index_error = |message: String| CheckpointError::Piece {
        shard: manifest.clone(),
        message,
    };
    m.check(None).map_err(&index_error)?;
    if let Some((got, want)) = m.tensors.iter().zip(expected).find(|(a, b)| a != b) {
        return Err(index_error(format!(
            "tensor {} (shape {:?} at element {}) is not the model's {} (shape {:?} at element {})",
            got.name, got.shape, got.offset, want.name, want.shape, want.offset
        )));
    }
    if m.tensors.len() != expected.len() {
        return Err(index_error(format!(
            "the checkpoint indexes {} tensors, the model has {}",
            m.tensors.len(),
            expected.len()
        )));
    }
    let mut out = vec![0f32; m.numel as usize];
    for s in &m.shards {
        let bytes = elf_store::checkpoints::read_shard(dir, s)?;
        elf_shared::manifest::decode_shard(m, s, &bytes, &mut |at, data| {
            let dst = &mut out[at as usize..at as usize + data.len() / 4];
            for (d, c) in dst.iter_mut().zip(data.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        })
        .map_err(|message| CheckpointError::Piece {
            shard: dir.join(&s.file).display(),
            message,
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use elf_model::weights::TensorFile;
    use elf_shared::manifest::{shard_file, shard_range};

    fn state() -> (Vec<TensorEntry>, Vec<f32>) {
        let tensors = vec![
            TensorEntry {
                name: "params/a".into(),
                shape: vec![2, 3],
                offset: 0,
            },
            TensorEntry {
                name: "params/b".into(),
                shape: vec![5],
                offset: 6,
            },
            TensorEntry {
                name: "ema/a".into(),
                shape: vec![2, 3],
                offset: 11,
            },
        ];
        let data: Vec<f32> = (0..17).map(|i| i as f32 * 0.5).collect();
        (tensors, data)
    }

    fn write_all(dir: &Location, world: u32) -> Manifest {
        let (tensors, data) = state();
        let n = data.len() as u64;
        let shards = (0..world)
            .map(|r| {
                let (a, b) = shard_range(n, r as u64, world as u64);
                write_shard(
                    dir,
                    &shard_file(r, world),
                    &tensors,
                    &data[a as usize..b as usize],
                    a,
                    b,
                    1,
                )
                .unwrap()
            })
            .collect();
        Manifest {
            format: 1,
            step: 3,
            next_step: 4,
            optimizer_count: 4,
            config_hash: "h".into(),
            config_yaml: String::new(),
            world_size: world,
            numel: n,
            tensors,
            shards,
            seed: 0,
            metrics: serde_json::Value::Null,
            eval: serde_json::Value::Null,
            param_digest: String::new(),
            manifest_sha256: String::new(),
        }
    }

    #[test]
    fn shards_round_trip_at_any_world_size() {
        let tmp = tempfile::tempdir().unwrap();
        for world in [1u32, 2, 3, 5] {
            let dir = Location::Local(tmp.path().join(format!("w{world}")));
            let m = write_all(&dir, world);
            assert_eq!(
                read_state(&dir, &m, &m.tensors).unwrap(),
                state().1,
                "world {world}"
            );
        }
        // A one-rank shard is plain named tensors with their shapes.
        let f = TensorFile::open(&tmp.path().join("w1").join(shard_file(0, 1))).unwrap();
        assert_eq!(f.shape("params/a").unwrap(), vec![2, 3]);
    }

    #[test]
    fn a_flipped_byte_is_refused_naming_shard_and_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Location::Local(tmp.path().to_path_buf());
        let m = write_all(&dir, 2);
        let p = tmp.path().join(shard_file(1, 2));
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, b).unwrap();
        let e = read_state(&dir, &m, &m.tensors).unwrap_err().to_string();
        assert!(
            e.contains("shard-00001-of-00002.safetensors")
                && e.contains("hash mismatch")
                && e.contains(&m.shards[1].sha256),
            "{e}"
        );
    }
}
