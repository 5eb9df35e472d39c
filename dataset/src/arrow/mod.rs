//! HuggingFace `datasets` `save_to_disk` folders: Arrow IPC *stream* shards read row by row.
//!
//! At open, each shard's message headers are scanned (metadata only; bodies are skipped), which
//! records where each record batch's buffers lie. A row is then read with two or three small
//! range reads (list offsets, then values), so no shard is ever held in memory. Truncated shards,
//! missing columns and unsupported types are errors naming the file.
//!
//! # Layout
//! - this file: [`ArrowStream`], one stream shard: scanning its headers, reading rows.
//! - `values`: column types and value decoding.
//! - `hf`: [`open_hf`], `save_to_disk` folders (`state.json`, `DatasetDict`).

use std::ops::Range;
use std::sync::Arc;

use arrow_ipc::{MessageHeader, root_as_message};
use arrow_schema::{DataType, Schema};

use crate::{DataError, Dataset, Row};
use elf_store::ByteSource;

mod hf;
mod values;

pub use hf::open_hf;
use values::{Value, check_type, decode_ids, decode_int, int_width, layout};

/// Where one buffer lies in the file.
#[derive(Debug, Clone, Copy)]
struct Buf {
    start: u64,
    len: u64,
}

/// The buffers of one column we read.
#[derive(Debug, Clone, Copy)]
enum ColumnBufs {
    /// A list of integers: validity, offsets, child values.
    IntList {
        validity: Buf,
        nulls: i64,
        offsets: Buf,
        large: bool,
        values: Buf,
        width: u8,
        signed: bool,
    },
    /// A string: validity, offsets, data.
    Text {
        validity: Buf,
        nulls: i64,
        offsets: Buf,
        large: bool,
        data: Buf,
    },
    /// An integer: validity, values.
    Int {
        validity: Buf,
        nulls: i64,
        values: Buf,
        width: u8,
        signed: bool,
    },
}

/// One record batch: its row count and the buffers of the columns we read.
#[derive(Debug, Clone)]
struct Batch {
    rows: u64,
    cols: [Option<ColumnBufs>; 5],
}

/// Column slots, in [`COLUMNS`] order.
const COLUMNS: [&str; 5] = [
    "input_ids",
    "condition_input_ids",
    "input",
    "target",
    "index",
];

/// One Arrow IPC stream file, indexed for row access.
#[derive(Debug)]
pub struct ArrowStream {
    src: Arc<dyn ByteSource>,
    batches: Vec<Batch>,
    starts: Vec<u64>,
    rows: u64,
}

impl ArrowStream {
    /// Opens and indexes one stream file.
    ///
    /// # Errors
    /// Truncated or malformed streams, compressed bodies, a missing `input_ids` column or a
    /// column of an unusable type, each naming the file.
    pub fn open(src: Arc<dyn ByteSource>) -> Result<Self, DataError> {
        let name = src.name().to_string();
        let bad = |message: String| DataError::Format {
            name: name.clone(),
            message,
        };
        let len = src.len();
        let mut pos = 0u64;
        let mut schema: Option<Schema> = None;
        let mut slots: [Option<usize>; 5] = [None; 5];
        let mut field_layout: Vec<(usize, usize)> = vec![];
        let mut batches = vec![];
        let mut n_msg = 0usize;
        loop {
            if pos == len {
                break; // a stream may end without the end-of-stream marker
            }
            if pos + 8 > len {
                return Err(bad(format!(
                    "truncated Arrow IPC stream: message {n_msg} header at byte {pos} of {len}"
                )));
            }
            let head = src.read(pos..pos + 8)?;
            let first = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
            let (meta_len, hdr) = if first == 0xFFFF_FFFF {
                (
                    i32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as i64,
                    8u64,
                )
            } else {
                (first as i32 as i64, 4u64)
            };
            if meta_len == 0 {
                break; // end-of-stream marker
            }
            if meta_len < 0 || pos + hdr + meta_len as u64 > len {
                return Err(bad(format!(
                    "truncated Arrow IPC stream: message {n_msg} metadata at byte {pos} runs past the end ({len} bytes)"
                )));
            }
            let meta = src.read(pos + hdr..pos + hdr + meta_len as u64)?;
            let msg = root_as_message(&meta)
                .map_err(|e| bad(format!("message {n_msg} at byte {pos}: {e}")))?;
            let body_start = pos + hdr + meta_len as u64;
            let Ok(body_len) = u64::try_from(msg.bodyLength()) else {
                return Err(bad(format!(
                    "message {n_msg} at byte {pos}: negative body length {}",
                    msg.bodyLength()
                )));
            };
            if body_start.checked_add(body_len).is_none_or(|end| end > len) {
                return Err(bad(format!(
                    "truncated Arrow IPC stream: record data of message {n_msg} ends at byte {} but the file has {len}",
                    body_start + body_len
                )));
            }
            match msg.header_type() {
                MessageHeader::Schema => {
                    let fb = msg
                        .header_as_schema()
                        .ok_or_else(|| bad("bad schema message".into()))?;
                    let s = arrow_ipc::convert::try_fb_to_schema(fb)
                        .map_err(|e| bad(format!("bad schema: {e}")))?;
                    for (slot, col) in COLUMNS.iter().enumerate() {
                        slots[slot] = s.index_of(col).ok();
                    }
                    let Some(ids) = slots[0] else {
                        let have: Vec<&str> =
                            s.fields().iter().map(|f| f.name().as_str()).collect();
                        return Err(bad(format!(
                            "missing column \"input_ids\" (columns: {})",
                            have.join(", ")
                        )));
                    };
                    for (slot, col) in COLUMNS.iter().enumerate() {
                        if let Some(i) = slots[slot] {
                            check_type(s.field(i), slot)
                                .map_err(|m| bad(format!("column {col:?}: {m}")))?;
                        }
                    }
                    let _ = ids;
                    field_layout = s
                        .fields()
                        .iter()
                        .map(|f| {
                            layout(f).ok_or_else(|| {
                                bad(format!(
                                    "column {:?} has unsupported type {}",
                                    f.name(),
                                    f.data_type()
                                ))
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    schema = Some(s);
                }
                MessageHeader::RecordBatch => {
                    let s = schema
                        .as_ref()
                        .ok_or_else(|| bad("record batch before the schema".into()))?;
                    let rb = msg
                        .header_as_record_batch()
                        .ok_or_else(|| bad("bad record batch message".into()))?;
                    if rb.compression().is_some() {
                        return Err(bad(
                            "compressed Arrow IPC bodies are not supported; re-save uncompressed"
                                .into(),
                        ));
                    }
                    let nodes = rb
                        .nodes()
                        .ok_or_else(|| bad("record batch without field nodes".into()))?;
                    let buffers = rb
                        .buffers()
                        .ok_or_else(|| bad("record batch without buffers".into()))?;
                    let buf = |i: usize| -> Result<Buf, DataError> {
                        if i >= buffers.len() {
                            return Err(bad(format!("message {n_msg}: buffer {i} missing")));
                        }
                        let b = buffers.get(i);
                        let (o, l) = match (u64::try_from(b.offset()), u64::try_from(b.length())) {
                            (Ok(o), Ok(l)) => (o, l),
                            _ => {
                                return Err(bad(format!(
                                    "message {n_msg}: buffer {i} has a negative offset or length"
                                )));
                            }
                        };
                        if o.checked_add(l).is_none_or(|end| end > body_len) {
                            return Err(bad(format!(
                                "message {n_msg}: buffer {i} lies outside the record body"
                            )));
                        }
                        Ok(Buf {
                            start: body_start + o,
                            len: l,
                        })
                    };
                    let mut cols: [Option<ColumnBufs>; 5] = [None; 5];
                    let (mut b_idx, mut n_idx) = (0usize, 0usize);
                    for (fi, f) in s.fields().iter().enumerate() {
                        if n_idx >= nodes.len() {
                            return Err(bad(format!(
                                "message {n_msg}: {} field nodes for {} columns",
                                nodes.len(),
                                s.fields().len()
                            )));
                        }
                        if let Some(slot) = slots.iter().position(|&x| x == Some(fi)) {
                            let nulls = nodes.get(n_idx).null_count();
                            cols[slot] = Some(match f.data_type() {
                                DataType::List(c) | DataType::LargeList(c) => {
                                    let (width, signed) =
                                        int_width(c.data_type()).expect("checked");
                                    ColumnBufs::IntList {
                                        validity: buf(b_idx)?,
                                        nulls,
                                        offsets: buf(b_idx + 1)?,
                                        large: matches!(f.data_type(), DataType::LargeList(_)),
                                        values: buf(b_idx + 3)?,
                                        width,
                                        signed,
                                    }
                                }
                                DataType::Utf8 | DataType::LargeUtf8 => ColumnBufs::Text {
                                    validity: buf(b_idx)?,
                                    nulls,
                                    offsets: buf(b_idx + 1)?,
                                    large: *f.data_type() == DataType::LargeUtf8,
                                    data: buf(b_idx + 2)?,
                                },
                                dt => {
                                    let (width, signed) = int_width(dt).expect("checked");
                                    ColumnBufs::Int {
                                        validity: buf(b_idx)?,
                                        nulls,
                                        values: buf(b_idx + 1)?,
                                        width,
                                        signed,
                                    }
                                }
                            });
                        }
                        b_idx += field_layout[fi].0;
                        n_idx += field_layout[fi].1;
                    }
                    let rows = u64::try_from(rb.length()).map_err(|_| {
                        bad(format!(
                            "message {n_msg}: negative row count {}",
                            rb.length()
                        ))
                    })?;
                    batches.push(Batch { rows, cols });
                }
                MessageHeader::DictionaryBatch => {}
                other => return Err(bad(format!("unexpected IPC message type {other:?}"))),
            }
            pos = body_start + body_len;
            n_msg += 1;
        }
        if schema.is_none() {
            return Err(bad("not an Arrow IPC stream (no schema message)".into()));
        }
        let mut starts = Vec::with_capacity(batches.len());
        let mut rows = 0u64;
        for b in &batches {
            starts.push(rows);
            rows = rows
                .checked_add(b.rows)
                .ok_or_else(|| bad("the record batches claim more than 2^64 rows".into()))?;
        }
        Ok(Self {
            src,
            batches,
            starts,
            rows,
        })
    }

    fn locate(&self, row: u64) -> (usize, u64) {
        let b = self.starts.partition_point(|&s| s <= row) - 1;
        (b, row - self.starts[b])
    }

    fn is_null(&self, validity: Buf, nulls: i64, i: u64) -> Result<bool, DataError> {
        if nulls == 0 || validity.len == 0 {
            return Ok(false);
        }
        let byte = self
            .src
            .read(validity.start + i / 8..validity.start + i / 8 + 1)?;
        Ok(byte[0] & (1 << (i % 8)) == 0)
    }

    fn span(&self, offsets: Buf, large: bool, i: u64) -> Result<Range<u64>, DataError> {
        let w = if large { 8 } else { 4 };
        if i.checked_add(2)
            .and_then(|n| n.checked_mul(w))
            .is_none_or(|end| end > offsets.len)
        {
            return Err(DataError::Format {
                name: self.src.name().into(),
                message: format!("offsets buffer too short for row {i}"),
            });
        }
        let b = self
            .src
            .read(offsets.start + i * w..offsets.start + (i + 2) * w)?;
        let (s, e) = if large {
            (
                i64::from_le_bytes(b[0..8].try_into().expect("8")),
                i64::from_le_bytes(b[8..16].try_into().expect("8")),
            )
        } else {
            (
                i32::from_le_bytes(b[0..4].try_into().expect("4")) as i64,
                i32::from_le_bytes(b[4..8].try_into().expect("4")) as i64,
            )
        };
        if s < 0 || e < s {
            return Err(DataError::Format {
                name: self.src.name().into(),
                message: format!("bad list offsets at row {i}"),
            });
        }
        Ok(s as u64..e as u64)
    }

    fn read_col(
        &self,
        col: &ColumnBufs,
        i: u64,
        global: u64,
        name: &str,
    ) -> Result<Option<Value>, DataError> {
        let fmt = |message: String| DataError::Format {
            name: self.src.name().into(),
            message,
        };
        Ok(match *col {
            ColumnBufs::IntList {
                validity,
                nulls,
                offsets,
                large,
                values,
                width,
                signed,
            } => {
                if self.is_null(validity, nulls, i)? {
                    return Ok(None);
                }
                let r = self.span(offsets, large, i)?;
                let w = width as u64;
                if r.end.checked_mul(w).is_none_or(|end| end > values.len) {
                    return Err(fmt(format!(
                        "column {name:?} row {global}: values run past their buffer"
                    )));
                }
                let bytes = self
                    .src
                    .read(values.start + r.start * w..values.start + r.end * w)?;
                let ids = decode_ids(&bytes, width, signed)
                    .map_err(|m| fmt(format!("column {name:?} row {global}: {m}")))?;
                Some(Value::Ids(ids))
            }
            ColumnBufs::Text {
                validity,
                nulls,
                offsets,
                large,
                data,
            } => {
                if self.is_null(validity, nulls, i)? {
                    return Ok(None);
                }
                let r = self.span(offsets, large, i)?;
                if r.end > data.len {
                    return Err(fmt(format!(
                        "column {name:?} row {global}: text runs past its buffer"
                    )));
                }
                let bytes = self.src.read(data.start + r.start..data.start + r.end)?;
                Some(Value::Text(String::from_utf8(bytes.to_vec()).map_err(
                    |_| fmt(format!("column {name:?} row {global}: invalid UTF-8")),
                )?))
            }
            ColumnBufs::Int {
                validity,
                nulls,
                values,
                width,
                signed,
            } => {
                if self.is_null(validity, nulls, i)? {
                    return Ok(None);
                }
                let w = width as u64;
                let bytes = self
                    .src
                    .read(values.start + i * w..values.start + (i + 1) * w)?;
                Some(Value::Int(decode_int(&bytes, width, signed)))
            }
        })
    }
}

impl Dataset for ArrowStream {
    fn len(&self) -> u64 {
        self.rows
    }

    fn row(&self, row: u64) -> Result<Row, DataError> {
        let (b, i) = self.locate(row);
        let batch = &self.batches[b];
        let mut out = Row::default();
        for (slot, col) in batch.cols.iter().enumerate() {
            let Some(col) = col else { continue };
            match (slot, self.read_col(col, i, row, COLUMNS[slot])?) {
                (0, Some(Value::Ids(v))) => out.input_ids = v,
                (0, None) => {
                    return Err(DataError::Format {
                        name: self.src.name().into(),
                        message: format!("row {row}: input_ids is null"),
                    });
                }
                (1, Some(Value::Ids(v))) => out.condition_input_ids = Some(v),
                (2, Some(Value::Text(t))) => out.input = Some(t),
                (3, Some(Value::Text(t))) => out.target = Some(t),
                (4, Some(Value::Int(x))) => out.index = Some(x),
                _ => {}
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.src.name().to_string()
    }

    fn is_conditional(&self) -> bool {
        self.batches.first().is_some_and(|b| b.cols[1].is_some())
    }
}
