//! The collator of spec §3.3–3.4: condition prepending, truncation to `S`, padding, and the
//! per-position loss mask of §4.4.

use elf_shared::config::{Config, PadToken};

use crate::Row;

/// A row the collator cannot turn into a sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollateError {
    /// A token id the embedding table has no row for.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    OutOfVocabulary {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: u32,
    },
}

/// Turns rows into fixed-length sequences.
#[derive(Debug, Clone)]
pub struct Collator {
    /// Sequence length `S`.
    pub seq_len: usize,
    /// Longest condition prefix.
    pub max_input_length: Option<usize>,
    /// Pad id (0 for `pad`, EOS 1 for `eos`).
    pub pad_id: u32,
    /// Whether padding counts in the loss (true for `pad_token: eos`).
    pub pad_in_loss: bool,
    /// Ids at or above this are rejected (the CE vocabulary).
    pub vocab: u32,
}

/// One collated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Collated {
    /// `S` token ids.
    pub ids: Vec<i32>,
    /// Positions `< cond_len` are the condition.
    pub cond_len: u32,
    /// Positions `>= total_len` are padding.
    pub total_len: u32,
}

impl Collator {
    /// Builds the collator a config describes.
    pub fn from_config(c: &Config, vocab: usize) -> Self {
        Self {
            seq_len: c.max_length,
            max_input_length: c.max_input_length,
            pad_id: c.pad_id(),
            pad_in_loss: c.pad_token == PadToken::Eos,
            vocab: vocab as u32,
        }
    }

    /// Collates one row: `concat(condition[:max_input_length], input_ids)`, truncated to `S`,
    /// right-padded with the pad id.
    ///
    /// # Errors
    /// A token id outside the vocabulary (the message gives the id).
    pub fn collate(&self, row: &Row) -> Result<Collated, CollateError> {
        let s = self.seq_len;
        let cond: &[u32] = match &row.condition_input_ids {
            Some(c) => &c[..self.max_input_length.map_or(c.len(), |m| m.min(c.len()))],
            None => &[],
        };
        let mut ids = Vec::with_capacity(s);
        for &t in cond.iter().chain(row.input_ids.iter()).take(s) {
            if t >= self.vocab {
                return Err(CollateError::OutOfVocabulary {
                    id: t,
                    vocab: self.vocab,
                });
            }
            ids.push(t as i32);
        }
        let total_len = ids.len() as u32;
        ids.resize(s, self.pad_id as i32);
        Ok(Collated {
            ids,
            cond_len: cond.len().min(s) as u32,
            total_len,
        })
    }

    /// Writes the loss mask of spec §4.4 into `out` (`S` values):
    /// `(pad_token == pad ? valid : 1) · (1 − cond)`.
    pub fn loss_mask(&self, c: &Collated, out: &mut [f32]) {
        for (j, m) in out.iter_mut().enumerate() {
            let j = j as u32;
            let valid = self.pad_in_loss || j < c.total_len;
            *m = if valid && j >= c.cond_len { 1.0 } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cond: Option<Vec<u32>>, ids: Vec<u32>) -> Row {
        Row {
            input_ids: ids,
            condition_input_ids: cond,
            ..Row::default()
        }
    }

    #[test]
    fn unconditional_rows_truncate_and_pad() {
        let c = Collator {
            seq_len: 4,
            max_input_length: None,
            pad_id: 0,
            pad_in_loss: false,
            vocab: 100,
        };
        let x = c.collate(&row(None, vec![5, 6])).unwrap();
        assert_eq!(
            x,
            Collated {
                ids: vec![5, 6, 0, 0],
                cond_len: 0,
                total_len: 2
            }
        );
        let mut m = [0.0; 4];
        c.loss_mask(&x, &mut m);
        assert_eq!(m, [1.0, 1.0, 0.0, 0.0]);
        let y = c.collate(&row(None, vec![1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(y.ids, vec![1, 2, 3, 4]);
        assert_eq!(y.total_len, 4);
    }

    #[test]
    fn conditional_rows_prepend_the_truncated_condition() {
        // spec §3.3: c = cond[:max_input_length]; seq = c ++ ids, cut to S; EOS padding counts.
        let c = Collator {
            seq_len: 6,
            max_input_length: Some(2),
            pad_id: 1,
            pad_in_loss: true,
            vocab: 100,
        };
        let x = c.collate(&row(Some(vec![7, 8, 9]), vec![3, 4])).unwrap();
        assert_eq!(
            x,
            Collated {
                ids: vec![7, 8, 3, 4, 1, 1],
                cond_len: 2,
                total_len: 4
            }
        );
        let mut m = [0.0; 6];
        c.loss_mask(&x, &mut m);
        assert_eq!(m, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        let long = c
            .collate(&row(Some(vec![7, 8]), vec![1, 2, 3, 4, 5, 6]))
            .unwrap();
        assert_eq!(long.ids, vec![7, 8, 1, 2, 3, 4]);
        assert!(
            c.collate(&row(None, vec![100]))
                .unwrap_err()
                .to_string()
                .contains("100")
        );
    }
}
