//! Parquet files (or folders of them) with the same columns as the Arrow shards.
//!
//! Rows are read one row group at a time through range reads; the last two decoded row groups
//! are cached, so memory is bounded by the row-group size, not the file size. For heavy random
//! access convert with `elf data prepare --format arrow`, which reads one row per lookup.

use std::io::Read;
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::reader::{ChunkReader, Length};

use crate::{DataError, Dataset, Row};
use elf_store::ByteSource;

/// A [`ByteSource`] as parquet's chunk reader.
#[derive(Debug, Clone)]
struct Chunks(Arc<dyn ByteSource>);

impl Length for Chunks {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

/// Reads forward from an offset in bounded range reads.
struct Forward {
    src: Arc<dyn ByteSource>,
    pos: u64,
}

impl Read for Forward {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let end = (self.pos + buf.len() as u64).min(self.src.len());
        if end <= self.pos {
            return Ok(0);
        }
        let b = self
            .src
            .read(self.pos..end)
            .map_err(std::io::Error::other)?;
        buf[..b.len()].copy_from_slice(&b);
        self.pos = end;
        Ok(b.len())
    }
}

impl ChunkReader for Chunks {
    type T = Forward;
    fn get_read(&self, start: u64) -> parquet::errors::Result<Forward> {
        Ok(Forward {
            src: self.0.clone(),
            pos: start,
        })
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.0
            .read(start..start + length as u64)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

const COLUMNS: [&str; 5] = [
    "input_ids",
    "condition_input_ids",
    "input",
    "target",
    "index",
];

/// One parquet file, indexed by row group.
#[derive(Debug)]
pub struct ParquetFile {
    src: Arc<dyn ByteSource>,
    meta: ArrowReaderMetadata,
    projection: Vec<usize>,
    slots: [Option<usize>; 5],
    starts: Vec<u64>,
    rows: u64,
    cache: Mutex<Vec<(usize, RecordBatch)>>,
}

fn int_list(dt: &DataType) -> bool {
    let int = |d: &DataType| d.is_integer();
    matches!(dt, DataType::List(c) | DataType::LargeList(c) if int(c.data_type()))
}

impl ParquetFile {
    /// Opens a parquet file and checks its columns.
    ///
    /// # Errors
    /// A malformed file, a missing `input_ids` column or a column of the wrong type.
    pub fn open(src: Arc<dyn ByteSource>) -> Result<Self, DataError> {
        let name = src.name().to_string();
        let bad = |message: String| DataError::Format {
            name: name.clone(),
            message,
        };
        let meta = contained(&name, "footer", || {
            ArrowReaderMetadata::load(&Chunks(src.clone()), ArrowReaderOptions::default())
                .map_err(|e| DataError::parse(name.as_str(), "not a readable parquet file", e))
        })?;
        let schema = meta.schema().clone();
        let mut slots = [None; 5];
        let mut projection = vec![];
        for (slot, col) in COLUMNS.iter().enumerate() {
            if let Ok(i) = schema.index_of(col) {
                let dt = schema.field(i).data_type();
                let ok = match slot {
                    0 | 1 => int_list(dt),
                    2 | 3 => matches!(dt, DataType::Utf8 | DataType::LargeUtf8),
                    _ => dt.is_integer(),
                };
                if !ok {
                    return Err(bad(format!(
                        "column {col:?} has type {dt}, which cannot hold it"
                    )));
                }
                slots[slot] = Some(projection.len());
                projection.push(i);
            }
        }
        if slots[0].is_none() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(bad(format!(
                "missing column \"input_ids\" (columns: {})",
                have.join(", ")
            )));
        }
        let mut starts = vec![];
        let mut rows = 0u64;
        for (i, rg) in meta.metadata().row_groups().iter().enumerate() {
            starts.push(rows);
            rows = u64::try_from(rg.num_rows())
                .ok()
                .and_then(|n| rows.checked_add(n))
                .ok_or_else(|| {
                    bad(format!(
                        "row group {i} claims {} rows (negative, or the total overflows)",
                        rg.num_rows()
                    ))
                })?;
        }
        Ok(Self {
            src,
            meta,
            projection,
            slots,
            starts,
            rows,
            cache: Mutex::new(vec![]),
        })
    }

    fn group(&self, rg: usize) -> Result<RecordBatch, DataError> {
        let mut cache = self.cache.lock().expect("cache lock");
        if let Some((_, b)) = cache.iter().find(|(g, _)| *g == rg) {
            return Ok(b.clone());
        }
        let bad = |message: String| DataError::Format {
            name: self.src.name().into(),
            message: format!("row group {rg}: {message}"),
        };
        let parse = |e: parquet::errors::ParquetError| {
            DataError::parse(self.src.name(), format!("row group {rg}"), e)
        };
        let mask = ProjectionMask::roots(
            self.meta.metadata().file_metadata().schema_descr(),
            self.projection.clone(),
        );
        let n = self.meta.metadata().row_group(rg).num_rows() as usize;
        let mut batches = contained(self.src.name(), &format!("row group {rg}"), || {
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                Chunks(self.src.clone()),
                self.meta.clone(),
            )
            .with_row_groups(vec![rg])
            .with_projection(mask)
            .with_batch_size(n.max(1))
            .build()
            .map_err(parse)?;
            reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DataError::parse(self.src.name(), format!("row group {rg}"), e))
        })?;
        if batches.len() != 1 {
            return Err(bad(format!("expected one batch, got {}", batches.len())));
        }
        let b = batches.remove(0);
        if b.num_rows() != n {
            return Err(bad(format!(
                "holds {} rows but its metadata says {n}",
                b.num_rows()
            )));
        }
        if cache.len() >= 2 {
            cache.remove(0);
        }
        cache.push((rg, b.clone()));
        Ok(b)
    }
}

fn ids_of(a: &ArrayRef) -> Option<Vec<u32>> {
    macro_rules! conv {
        ($t:ty) => {
            a.as_primitive::<$t>()
                .values()
                .iter()
                .map(|&v| u32::try_from(v).ok())
                .collect()
        };
    }
    match a.data_type() {
        DataType::Int8 => conv!(Int8Type),
        DataType::Int16 => conv!(Int16Type),
        DataType::Int32 => conv!(Int32Type),
        DataType::Int64 => conv!(Int64Type),
        DataType::UInt8 => conv!(UInt8Type),
        DataType::UInt16 => conv!(UInt16Type),
        DataType::UInt32 => conv!(UInt32Type),
        DataType::UInt64 => conv!(UInt64Type),
        _ => None,
    }
}

fn list_value(a: &ArrayRef, i: usize) -> Option<ArrayRef> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::List(_) => Some(a.as_list::<i32>().value(i)),
        DataType::LargeList(_) => Some(a.as_list::<i64>().value(i)),
        _ => None,
    }
}

fn text_value(a: &ArrayRef, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i).to_string()),
        _ => None,
    }
}

fn int_value(a: &ArrayRef, i: usize) -> Option<i64> {
    if a.is_null(i) {
        return None;
    }
    ids_of(&a.slice(i, 1))
        .and_then(|v| v.first().map(|&x| x as i64))
        .or_else(|| match a.data_type() {
            DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i)),
            _ => None,
        })
}

impl Dataset for ParquetFile {
    fn len(&self) -> u64 {
        self.rows
    }

    fn row(&self, row: u64) -> Result<Row, DataError> {
        let rg = self.starts.partition_point(|&s| s <= row) - 1;
        let i = (row - self.starts[rg]) as usize;
        let b = self.group(rg)?;
        let col = |slot: usize| self.slots[slot].map(|c| b.column(c).clone());
        let bad = |m: String| DataError::Format {
            name: self.src.name().into(),
            message: format!("row {row}: {m}"),
        };
        let ids_col = col(0).expect("checked at open");
        let input_ids = list_value(&ids_col, i)
            .ok_or_else(|| bad("input_ids is null".into()))
            .and_then(|a| {
                ids_of(&a).ok_or_else(|| bad("input_ids has a negative or non-integer id".into()))
            })?;
        let condition_input_ids = match col(1).and_then(|a| list_value(&a, i)) {
            Some(a) => Some(
                ids_of(&a).ok_or_else(|| bad("condition_input_ids has a negative id".into()))?,
            ),
            None => None,
        };
        Ok(Row {
            input_ids,
            condition_input_ids,
            input: col(2).and_then(|a| text_value(&a, i)),
            target: col(3).and_then(|a| text_value(&a, i)),
            index: col(4).and_then(|a| int_value(&a, i)),
        })
    }

    fn describe(&self) -> String {
        self.src.name().to_string()
    }

    fn is_conditional(&self) -> bool {
        self.slots[1].is_some()
    }
}

/// Runs a decode of the `parquet` crate, which panics on some malformed files (found by the
/// parquet fuzz target, e.g. a data page without its header) instead of returning an error:
/// the panic becomes an error naming the file and the part being read.
fn contained<T>(
    name: &str,
    part: &str,
    f: impl FnOnce() -> Result<T, DataError>,
) -> Result<T, DataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(DataError::Format {
            name: name.into(),
            message: format!("{part}: malformed parquet (the decoder failed: {why})"),
        })
    })
}
