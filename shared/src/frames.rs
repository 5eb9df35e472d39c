//! Decoders of the frames peers send each other outside gRPC, bounded before they allocate:
//! the head of a state copy (after its authenticated hello), checked against the receiving
//! model's own index. The ring announces no lengths at all (see `elf_worker::collective`).

use std::io::Read;

use crate::manifest::TensorEntry;

/// A state-copy head that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Reading failed or the stream ended.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The tensor index does not parse.
    #[error("bad tensor index: {0}")]
    BadIndex(#[source] serde_json::Error),
    /// The announced state is not this model's.
    #[error("{0}")]
    NotThisModel(String),
}

/// Reads a state copy's head (optimiser count, index length, index JSON, element count) from
/// `r`, refusing any announced length that differs from the model's own `expected` index
/// before anything of that length is allocated or read. Returns the optimiser count and the
/// number of f32 elements that follow.
///
/// # Errors
/// A short stream, an index that does not parse, or one that is not `expected`.
pub fn read_state_head(
    r: &mut impl Read,
    expected: &[TensorEntry],
) -> Result<(u64, u64), HeadError> {
    let want_index = serde_json::to_vec(expected).expect("an index serialises");
    let want_numel = expected.last().map_or(0, |t| t.offset + t.numel());
    let mut u = || -> Result<u64, HeadError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    };
    let optimizer_count = u()?;
    let len = u()?;
    if len != want_index.len() as u64 {
        return Err(HeadError::NotThisModel(format!(
            "announced a {len}-byte tensor index, this model's is {} bytes",
            want_index.len()
        )));
    }
    let mut index = vec![0u8; len as usize];
    r.read_exact(&mut index)?;
    let tensors: Vec<TensorEntry> = serde_json::from_slice(&index).map_err(HeadError::BadIndex)?;
    if tensors != expected {
        return Err(HeadError::NotThisModel(
            "sent a tensor index that is not this model's".into(),
        ));
    }
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    let n = u64::from_le_bytes(b);
    if n != want_numel {
        return Err(HeadError::NotThisModel(format!(
            "announced {n} elements, this model's state has {want_numel}"
        )));
    }
    Ok((optimizer_count, n))
}
