//! Arrow column types the reader accepts, and decoding their values.

use arrow_schema::{DataType, Field};

pub(super) fn int_width(dt: &DataType) -> Option<(u8, bool)> {
    Some(match dt {
        DataType::Int8 => (1, true),
        DataType::Int16 => (2, true),
        DataType::Int32 => (4, true),
        DataType::Int64 => (8, true),
        DataType::UInt8 => (1, false),
        DataType::UInt16 => (2, false),
        DataType::UInt32 => (4, false),
        DataType::UInt64 => (8, false),
        _ => return None,
    })
}

/// Returns how many IPC buffers and field nodes a field occupies (pre-order, children included).
pub(super) fn layout(f: &Field) -> Option<(usize, usize)> {
    use DataType::*;
    Some(match f.data_type() {
        Null => (0, 1),
        Boolean
        | Int8
        | Int16
        | Int32
        | Int64
        | UInt8
        | UInt16
        | UInt32
        | UInt64
        | Float16
        | Float32
        | Float64
        | Date32
        | Date64
        | Time32(_)
        | Time64(_)
        | Timestamp(_, _)
        | Duration(_)
        | Interval(_)
        | Decimal32(_, _)
        | Decimal64(_, _)
        | Decimal128(_, _)
        | Decimal256(_, _)
        | FixedSizeBinary(_)
        | Dictionary(_, _) => (2, 1),
        Utf8 | Binary | LargeUtf8 | LargeBinary => (3, 1),
        List(c) | LargeList(c) | Map(c, _) => {
            let (b, n) = layout(c)?;
            (2 + b, 1 + n)
        }
        FixedSizeList(c, _) => {
            let (b, n) = layout(c)?;
            (1 + b, 1 + n)
        }
        Struct(fields) => fields.iter().try_fold((1, 1), |(b, n), c| {
            let (cb, cn) = layout(c)?;
            Some((b + cb, n + cn))
        })?,
        _ => return None,
    })
}

pub(super) enum Value {
    Ids(Vec<u32>),
    Text(String),
    Int(i64),
}

/// A column or value that is not what the schema promises.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadValue {
    #[error("has type {got}, expected {want}")]
    Type { got: String, want: &'static str },
    #[error("negative token id {0}")]
    Negative(i64),
    #[error("token id {0} out of range")]
    OutOfRange(i64),
}

pub(super) fn check_type(f: &Field, slot: usize) -> Result<(), BadValue> {
    let ok = match slot {
        0 | 1 => {
            matches!(f.data_type(), DataType::List(c) | DataType::LargeList(c) if int_width(c.data_type()).is_some())
        }
        2 | 3 => matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8),
        _ => int_width(f.data_type()).is_some(),
    };
    if ok {
        Ok(())
    } else {
        let want = match slot {
            0 | 1 => "a list of integers",
            2 | 3 => "a string",
            _ => "an integer",
        };
        Err(BadValue::Type {
            got: f.data_type().to_string(),
            want,
        })
    }
}

pub(super) fn decode_int(b: &[u8], width: u8, signed: bool) -> i64 {
    match (width, signed) {
        (1, true) => b[0] as i8 as i64,
        (1, false) => b[0] as i64,
        (2, true) => i16::from_le_bytes([b[0], b[1]]) as i64,
        (2, false) => u16::from_le_bytes([b[0], b[1]]) as i64,
        (4, true) => i32::from_le_bytes(b[..4].try_into().expect("4")) as i64,
        (4, false) => u32::from_le_bytes(b[..4].try_into().expect("4")) as i64,
        (_, true) => i64::from_le_bytes(b[..8].try_into().expect("8")),
        (_, false) => u64::from_le_bytes(b[..8].try_into().expect("8")) as i64,
    }
}

pub(super) fn decode_ids(b: &[u8], width: u8, signed: bool) -> Result<Vec<u32>, BadValue> {
    if width == 4 {
        // The common case (HF writes int32): decode without per-element dispatch.
        let mut out = Vec::with_capacity(b.len() / 4);
        for c in b.chunks_exact(4) {
            let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if signed && v < 0 {
                return Err(BadValue::Negative(v as i64));
            }
            out.push(v as u32);
        }
        return Ok(out);
    }
    b.chunks_exact(width as usize)
        .map(|c| {
            let v = decode_int(c, width, signed);
            u32::try_from(v).map_err(|_| BadValue::OutOfRange(v))
        })
        .collect()
}
