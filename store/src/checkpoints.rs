//! Checkpoint folders on a store, without tensors: manifests, the `latest` pointer, hash
//! verification, discovery of the newest valid checkpoint, and retention.
//!
//! Layout under the checkpoint root: `step-<step:09>/shard-*.safetensors`,
//! `step-<step:09>/manifest.json` (written last) and `latest` (the folder name of the newest
//! committed step, moved after its manifest is durable).
//!
//! Uncertain answers are errors, never "absent": a listing or a `head` that failed stops
//! discovery and retention instead of being read as "no checkpoint here" (which would resume an
//! older step or delete a committed one).

use elf_shared::manifest::{Manifest, decode_shard, first_non_finite, step_dir, tensor_at};
use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::location::Location;

/// Reads the manifest of a checkpoint folder and checks it against itself and the folder's
/// name ([`Manifest::check`]).
///
/// # Errors
/// [`StoreError::NotCommitted`] when there is none (the checkpoint does not exist), a malformed
/// or inconsistent manifest ([`StoreError::Malformed`], naming the file and the field), or the
/// store's error.
pub fn read_manifest(dir: &Location) -> Result<Manifest, StoreError> {
    let loc = dir.join("manifest.json");
    let bytes = match loc.read_all() {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(StoreError::NotCommitted {
                name: dir.display(),
            });
        }
        Err(e) => return Err(e),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| StoreError::Malformed {
        name: loc.display(),
        message: format!("malformed manifest: {e}"),
    })?;
    let folder_step = dir
        .file_name()
        .strip_prefix("step-")
        .and_then(|s| s.parse().ok());
    m.check(folder_step)
        .map_err(|message| StoreError::Malformed {
            name: loc.display(),
            message,
        })?;
    if m.format < 2 {
        tracing::warn!(manifest = %loc.display(), "a format-1 manifest carries no hash of itself and no parameter digest: only its shards' hashes are verified");
    }
    Ok(m)
}

/// Writes the manifest of a checkpoint into its folder under `root`: the commit itself.
///
/// # Errors
/// Store errors; the checkpoint is then not committed.
pub fn write_manifest(root: &Location, m: &Manifest) -> Result<(), StoreError> {
    rewrite_manifest(&root.join(&step_dir(m.step)), m)
}

/// Commits a checkpoint: checks the manifest and that every shard it names is in the store
/// with its size (one `head` each; what the ranks reported is not taken on trust), writes
/// it, then moves `latest` to it.
///
/// # Errors
/// An inconsistent manifest or a missing or mis-sized shard ([`StoreError::Malformed`]), or
/// store errors; nothing is written then, and `latest` is not moved unless the manifest was.
pub fn commit(root: &Location, m: &Manifest) -> Result<(), StoreError> {
    let dir = root.join(&step_dir(m.step));
    let bad = |message: String| StoreError::Malformed {
        name: dir.join("manifest.json").display(),
        message: format!("not committed: {message}"),
    };
    m.clone().sealed().check(Some(m.step)).map_err(bad)?;
    for s in &m.shards {
        let got = dir.join(&s.file).open()?.len();
        if got != s.size {
            return Err(bad(format!(
                "{} is {got} bytes in the store, its rank reported {}",
                s.file, s.size
            )));
        }
    }
    write_manifest(root, m)?;
    root.join("latest").put(step_dir(m.step).into_bytes())
}

/// Resolves a checkpoint folder, or a checkpoint root through its `latest` pointer.
///
/// # Errors
/// Neither a manifest nor a `latest` pointer there (naming the URL), a bad URL, or a store
/// error while looking.
pub fn folder(url: &str) -> Result<Location, StoreError> {
    folder_at(&Location::parse(url)?)
}

/// As [`folder`], for a location.
///
/// # Errors
/// As [`folder`].
pub fn folder_at(loc: &Location) -> Result<Location, StoreError> {
    if loc.join("manifest.json").exists()? {
        return Ok(loc.clone());
    }
    match latest(loc)? {
        Some(step) => Ok(loc.join(&step_dir(step))),
        None => Err(StoreError::Malformed {
            name: loc.display(),
            message: "no manifest.json and no latest pointer: not a committed checkpoint".into(),
        }),
    }
}

/// Writes (or replaces, to add eval results) the manifest of a checkpoint folder, sealed with
/// its own hash: one atomic put, so readers see the old or the new manifest, never neither.
///
/// # Errors
/// Store errors.
pub fn rewrite_manifest(dir: &Location, m: &Manifest) -> Result<(), StoreError> {
    let sealed = m.clone().sealed();
    dir.join("manifest.json")
        .put(serde_json::to_vec_pretty(&sealed).expect("manifest serialises"))
}

/// Returns the steps that have a checkpoint folder (committed or not), ascending.
///
/// # Errors
/// Store errors.
pub fn list_steps(root: &Location) -> Result<Vec<u64>, StoreError> {
    let mut steps: Vec<u64> = root
        .list()?
        .iter()
        .filter_map(|n| n.strip_prefix("step-").and_then(|s| s.parse().ok()))
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Returns the step `latest` names, or `None` when there is no `latest`.
///
/// # Errors
/// A `latest` that does not name a step folder, or a store error while reading it.
pub fn latest(root: &Location) -> Result<Option<u64>, StoreError> {
    let loc = root.join("latest");
    let bytes = match loc.read_all() {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim()
        .strip_prefix("step-")
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| StoreError::Malformed {
            name: loc.display(),
            message: format!("{:?} does not name a step folder", text.trim()),
        })
}

/// Reads one shard of a checked manifest and checks its size and sha256 before anything else.
///
/// # Errors
/// [`StoreError::HashMismatch`] naming the shard and both hashes, or a store error.
pub fn read_shard(
    dir: &Location,
    s: &elf_shared::manifest::ShardEntry,
) -> Result<bytes::Bytes, StoreError> {
    let loc = dir.join(&s.file);
    let bytes = loc.read_all()?;
    let got = hex::encode(Sha256::digest(&bytes));
    if bytes.len() as u64 != s.size || got != s.sha256 {
        return Err(StoreError::HashMismatch {
            name: loc.display(),
            got,
            got_size: bytes.len() as u64,
            want: s.sha256.clone(),
            want_size: s.size,
        });
    }
    Ok(bytes)
}

/// Verifies a committed checkpoint whole: every shard's size and sha256, every piece of every
/// shard against the tensor index, every element finite, and (format 2) the live parameters'
/// digest against the one recorded at commit. Memory: one shard at a time.
///
/// # Errors
/// The first missing or mismatching shard ([`StoreError::HashMismatch`]), a piece that does not
/// fit the index, a non-finite element or a digest mismatch ([`StoreError::Malformed`], naming
/// the file, the tensor and the step), or a store error while reading.
pub fn verify(dir: &Location, m: &Manifest) -> Result<(), StoreError> {
    let params = m.params_len();
    let mut digest = Sha256::new();
    for s in &m.shards {
        let bytes = read_shard(dir, s)?;
        let name = dir.join(&s.file).display();
        let bad = |message: String| StoreError::Malformed {
            name: name.clone(),
            message,
        };
        let mut pieces: Vec<(u64, bytes::Bytes)> = Vec::new();
        let base = bytes.as_ptr() as usize;
        decode_shard(m, s, &bytes, &mut |at, data| {
            let from = data.as_ptr() as usize - base;
            pieces.push((at, bytes.slice(from..from + data.len())));
        })
        .map_err(&bad)?;
        for (at, data) in &pieces {
            if let Some((i, v)) = first_non_finite(data) {
                let at = at + i as u64;
                return Err(bad(format!(
                    "element {at} (tensor {}) of step {} is {v}: a checkpoint must be finite",
                    tensor_at(&m.tensors, at),
                    m.step
                )));
            }
            if *at < params {
                let n = ((params - at) as usize * 4).min(data.len());
                digest.update(&data[..n]);
            }
        }
    }
    let got = hex::encode(digest.finalize());
    if m.format >= 2 && got != m.param_digest {
        return Err(StoreError::Malformed {
            name: dir.join("manifest.json").display(),
            message: format!(
                "the parameters of step {} hash to {got} but the manifest recorded {:?} at commit",
                m.step, m.param_digest
            ),
        });
    }
    Ok(())
}

/// Finds the newest committed checkpoint whose shards verify; warns about each one skipped.
///
/// A step is skipped only on a certain answer: no manifest (never committed), or damage (a
/// malformed manifest, a missing or mismatching shard).
///
/// # Errors
/// Any other store error: the newest checkpoint is then unknown, and falling back to an older
/// one would silently train steps again.
pub fn newest_valid(root: &Location) -> Result<Option<(Location, Manifest)>, StoreError> {
    let mut steps = list_steps(root)?;
    steps.reverse();
    for step in steps {
        let dir = root.join(&step_dir(step));
        let m = match read_manifest(&dir) {
            Ok(m) => m,
            Err(e) if e.is_not_found() => {
                tracing::warn!(step, "skipping an uncommitted checkpoint (no manifest)");
                continue;
            }
            Err(e) if e.is_damage() => {
                tracing::warn!(step, error = %e, "skipping a corrupt checkpoint; trying the previous one");
                continue;
            }
            Err(e) => return Err(e),
        };
        match verify(&dir, &m) {
            Ok(()) => return Ok(Some((dir, m))),
            Err(e) if e.is_damage() || e.is_not_found() => {
                tracing::warn!(step, error = %e, "skipping a corrupt checkpoint; trying the previous one")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Deletes committed checkpoints beyond the newest `keep_last`, never the one `latest` names,
/// and uncommitted folders older than the newest committed one. Returns the deleted steps.
///
/// Every question (the listing, `latest`, each folder's manifest) is answered before anything
/// is deleted; one uncertain answer deletes nothing.
///
/// # Errors
/// Store errors; nothing was deleted unless the error came from a deletion itself.
pub fn retain(root: &Location, keep_last: usize) -> Result<Vec<u64>, StoreError> {
    let keep_latest = latest(root)?;
    let steps = list_steps(root)?;
    let mut committed = Vec::new();
    for &s in &steps {
        if root.join(&step_dir(s)).join("manifest.json").exists()? {
            committed.push(s);
        }
    }
    let newest_committed = committed.last().copied();
    let keep: Vec<u64> = committed.iter().rev().take(keep_last).copied().collect();
    let doomed: Vec<u64> = steps
        .into_iter()
        .filter(|s| {
            let stale_partial = !committed.contains(s) && newest_committed.is_some_and(|n| *s < n);
            let old = committed.contains(s) && !keep.contains(s);
            (old || stale_partial) && Some(*s) != keep_latest
        })
        .collect();
    for &s in &doomed {
        root.join(&step_dir(s)).delete_all()?;
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests;
