//! JSONL datasets, tokenised at load: `{"text": ...}` rows (unconditional) or
//! `{"input": ..., "output": ...}` rows (conditional, the reference's eval format).
//!
//! Opening validates every line (malformed JSON and missing keys are errors with the line
//! number) and keeps one `(offset, length)` per row; a row is re-read and tokenised on access.

use std::sync::Arc;

use serde::Deserialize;

use crate::tokenizer::TextTokenizer;
use crate::{DataError, Dataset, Row};
use elf_store::ByteSource;

#[derive(Debug, Deserialize)]
struct Line {
    text: Option<String>,
    input: Option<String>,
    output: Option<String>,
}

/// A JSONL file indexed by line.
#[derive(Debug)]
pub struct JsonlFile {
    src: Arc<dyn ByteSource>,
    tokenizer: Arc<TextTokenizer>,
    lines: Vec<(u64, u32, u32)>,
    conditional: bool,
}

/// Bytes read per range request while indexing.
const CHUNK: u64 = 8 << 20;

impl JsonlFile {
    /// Indexes and validates a JSONL file.
    ///
    /// # Errors
    /// Malformed JSON, rows with neither `text` nor `input`/`output`, or a mix of both kinds,
    /// each naming the file and line.
    pub fn open(
        src: Arc<dyn ByteSource>,
        tokenizer: Arc<TextTokenizer>,
    ) -> Result<Self, DataError> {
        let name = src.name().to_string();
        let mut lines = vec![];
        let mut kind: Option<bool> = None;
        let mut carry: Vec<u8> = vec![];
        let mut carry_start = 0u64;
        let mut pos = 0u64;
        let mut line_no = 0u32;
        let len = src.len();
        let mut handle = |start: u64, bytes: &[u8], line_no: u32| -> Result<(), DataError> {
            let text = std::str::from_utf8(bytes).map_err(|_| DataError::Format {
                name: name.clone(),
                message: format!("line {line_no}: invalid UTF-8"),
            })?;
            if text.trim().is_empty() {
                return Ok(());
            }
            let l: Line = serde_json::from_str(text)
                .map_err(|e| DataError::parse(name.as_str(), format!("line {line_no}"), e))?;
            let cond = match (&l.text, &l.input, &l.output) {
                (Some(_), None, None) => false,
                (None, Some(_), Some(_)) => true,
                _ => {
                    return Err(DataError::Format {
                        name: name.clone(),
                        message: format!(
                            "line {line_no}: expected {{\"text\"}} or {{\"input\", \"output\"}}"
                        ),
                    });
                }
            };
            if *kind.get_or_insert(cond) != cond {
                return Err(DataError::Format {
                    name: name.clone(),
                    message: format!(
                        "line {line_no}: mixes \"text\" rows with \"input\"/\"output\" rows"
                    ),
                });
            }
            lines.push((start, bytes.len() as u32, line_no));
            Ok(())
        };
        while pos < len {
            let end = (pos + CHUNK).min(len);
            let chunk = src.read(pos..end)?;
            let mut from = 0usize;
            for (i, &b) in chunk.iter().enumerate() {
                if b == b'\n' {
                    line_no += 1;
                    if carry.is_empty() {
                        handle(pos + from as u64, &chunk[from..i], line_no)?;
                    } else {
                        carry.extend_from_slice(&chunk[from..i]);
                        let c = std::mem::take(&mut carry);
                        handle(carry_start, &c, line_no)?;
                    }
                    from = i + 1;
                }
            }
            if from < chunk.len() {
                if carry.is_empty() {
                    carry_start = pos + from as u64;
                }
                carry.extend_from_slice(&chunk[from..]);
            }
            pos = end;
        }
        if !carry.is_empty() {
            line_no += 1;
            let c = std::mem::take(&mut carry);
            handle(carry_start, &c, line_no)?;
        }
        Ok(Self {
            src,
            tokenizer,
            lines,
            conditional: kind.unwrap_or(false),
        })
    }
}

impl Dataset for JsonlFile {
    fn len(&self) -> u64 {
        self.lines.len() as u64
    }

    fn row(&self, row: u64) -> Result<Row, DataError> {
        let (start, len, line_no) = self.lines[row as usize];
        let bytes = self.src.read(start..start + len as u64)?;
        let l: Line = serde_json::from_slice(&bytes)
            .map_err(|e| DataError::parse(self.src.name(), format!("line {line_no}"), e))?;
        Ok(match (l.text, l.input, l.output) {
            (Some(t), _, _) => Row {
                input_ids: self.tokenizer.encode(&t),
                index: Some(line_no as i64 - 1),
                ..Row::default()
            },
            (_, Some(i), Some(o)) => Row {
                input_ids: self.tokenizer.encode(&o),
                condition_input_ids: Some(self.tokenizer.encode(&i)),
                input: Some(i),
                target: Some(o),
                index: Some(line_no as i64 - 1),
            },
            _ => unreachable!("validated at open"),
        })
    }

    fn describe(&self) -> String {
        self.src.name().to_string()
    }

    fn is_conditional(&self) -> bool {
        self.conditional
    }
}
