//! Checkpoint folders on object storage, without tensors: manifests, the `latest` pointer,
//! hash verification, discovery of the newest valid checkpoint, and retention.
//!
//! Layout under the checkpoint root: `step-<step:09>/shard-*.safetensors`,
//! `step-<step:09>/manifest.json` (written last) and `latest` (the folder name of the newest
//! committed step, moved after its manifest is durable).

use elf_shared::manifest::{Manifest, step_dir};
use sha2::{Digest, Sha256};

use crate::DataError;
use crate::source::Location;

/// Reads the manifest of a checkpoint folder.
///
/// # Errors
/// No manifest (then the checkpoint does not exist) or a malformed one.
pub fn read_manifest(dir: &Location) -> Result<Manifest, DataError> {
    let loc = dir.join("manifest.json");
    let bytes = loc.read_all().map_err(|e| DataError::Format {
        name: dir.display(),
        message: format!("no committed checkpoint here (no manifest.json): {e}"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::Format {
        name: loc.display(),
        message: format!("malformed manifest: {e}"),
    })
}

/// Commits a checkpoint: writes its manifest, then moves `latest` to it.
///
/// # Errors
/// Store errors; `latest` is not moved unless the manifest was written.
pub fn commit(root: &Location, m: &Manifest) -> Result<(), DataError> {
    let dir = root.join(&step_dir(m.step));
    dir.join("manifest.json")
        .put(serde_json::to_vec_pretty(m).expect("manifest serialises"))?;
    root.join("latest").put(step_dir(m.step).into_bytes())
}

/// Resolves a checkpoint folder, or a checkpoint root through its `latest` pointer.
///
/// # Errors
/// Neither a manifest nor a `latest` pointer there (naming the URL), or a bad URL.
pub fn folder(url: &str) -> Result<Location, DataError> {
    let loc = Location::parse(url)?;
    if loc.join("manifest.json").exists() {
        return Ok(loc);
    }
    match latest(&loc) {
        Some(step) => Ok(loc.join(&step_dir(step))),
        None => Err(DataError::Format {
            name: url.to_string(),
            message: "no manifest.json and no latest pointer: not a committed checkpoint".into(),
        }),
    }
}

/// Replaces the manifest of a committed checkpoint folder (to add eval results): one atomic
/// put, so readers see the old or the new manifest, never neither.
///
/// # Errors
/// Store errors.
pub fn rewrite_manifest(dir: &Location, m: &Manifest) -> Result<(), DataError> {
    dir.join("manifest.json")
        .put(serde_json::to_vec_pretty(m).expect("manifest serialises"))
}

/// Returns the steps that have a checkpoint folder (committed or not), ascending.
///
/// # Errors
/// Store errors.
pub fn list_steps(root: &Location) -> Result<Vec<u64>, DataError> {
    if !root.is_dir() {
        return Ok(vec![]);
    }
    let mut steps: Vec<u64> = root
        .list()?
        .iter()
        .filter_map(|n| n.strip_prefix("step-").and_then(|s| s.parse().ok()))
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Returns the step `latest` names, if any.
pub fn latest(root: &Location) -> Option<u64> {
    let b = root.join("latest").read_all().ok()?;
    String::from_utf8_lossy(&b)
        .trim()
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// Checks every shard's size and sha256 against the manifest.
///
/// # Errors
/// The first missing or mismatching shard, naming it and both hashes.
pub fn verify(dir: &Location, m: &Manifest) -> Result<(), DataError> {
    for s in &m.shards {
        let loc = dir.join(&s.file);
        let bytes = loc.read_all()?;
        let got = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != s.size || got != s.sha256 {
            return Err(DataError::Format {
                name: loc.display(),
                message: format!(
                    "shard hash mismatch: sha256 {got} ({} bytes), manifest says {} ({} bytes)",
                    bytes.len(),
                    s.sha256,
                    s.size
                ),
            });
        }
    }
    Ok(())
}

/// Finds the newest committed checkpoint whose shards verify; warns about each one skipped.
///
/// # Errors
/// Store errors while listing.
pub fn newest_valid(root: &Location) -> Result<Option<(Location, Manifest)>, DataError> {
    let mut steps = list_steps(root)?;
    steps.reverse();
    for step in steps {
        let dir = root.join(&step_dir(step));
        let m = match read_manifest(&dir) {
            Ok(m) => m,
            Err(_) => {
                tracing::warn!(step, "skipping an uncommitted checkpoint (no manifest)");
                continue;
            }
        };
        match verify(&dir, &m) {
            Ok(()) => return Ok(Some((dir, m))),
            Err(e) => {
                tracing::warn!(step, error = %e, "skipping a corrupt checkpoint; trying the previous one")
            }
        }
    }
    Ok(None)
}

/// Deletes committed checkpoints beyond the newest `keep_last`, never the one `latest` names,
/// and uncommitted folders older than the newest committed one. Returns the deleted steps.
///
/// # Errors
/// Store errors.
pub fn retain(root: &Location, keep_last: usize) -> Result<Vec<u64>, DataError> {
    let keep_latest = latest(root);
    let steps = list_steps(root)?;
    let committed: Vec<u64> = steps
        .iter()
        .copied()
        .filter(|&s| root.join(&step_dir(s)).join("manifest.json").exists())
        .collect();
    let newest_committed = committed.last().copied();
    let keep: Vec<u64> = committed.iter().rev().take(keep_last).copied().collect();
    let mut deleted = vec![];
    for s in steps {
        let stale_partial = !committed.contains(&s) && newest_committed.is_some_and(|n| s < n);
        let old = committed.contains(&s) && !keep.contains(&s);
        if (old || stale_partial) && Some(s) != keep_latest {
            root.join(&step_dir(s)).delete_all()?;
            deleted.push(s);
        }
    }
    Ok(deleted)
}
