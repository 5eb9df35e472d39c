//! Flax msgpack checkpoints (`flax.serialization.to_bytes`), read natively.
//!
//! The reference saves its train state `{params, ema_params1, opt_state, step, epoch,
//! dropout_rng}` through flax's state dicts: every pytree node is a msgpack map with string
//! keys (tuples and lists become maps keyed `"0"`, `"1"`, ...; an optax `MaskedNode` or
//! `EmptyState` becomes an empty map), every array is msgpack extension 1 holding the msgpack
//! triple `(shape, dtype name, C-order bytes)`, a numpy scalar is extension 3 with the same
//! payload, and Python scalars are plain msgpack numbers (flax 0.10.2
//! `serialization._msgpack_ext_pack`).
//!
//! [`read_state`] flattens such a file into `path/to/leaf -> Leaf`. The reader is a parser of
//! untrusted bytes: every length is checked against the bytes that remain before anything is
//! allocated for it, nesting is bounded, and any malformed piece is an error naming where it is.

use std::collections::BTreeMap;

/// Deepest nesting accepted (a train state is about 12 levels deep).
pub const MAX_DEPTH: usize = 64;

/// A flax msgpack error, naming the leaf path or byte offset.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FlaxError {
    /// The bytes are not msgpack (truncated, a reserved byte, a length past the end).
    #[error("byte {offset}: {message}")]
    Msgpack {
        /// Byte offset in the file.
        offset: usize,
        /// What is wrong.
        message: String,
    },
    /// The msgpack is well formed but not a flax state dict at `path`.
    #[error("{path}: {message}")]
    Tree {
        /// The leaf or node path (`opt_state/1/inner_states/...`).
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A leaf of the state dict.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf {
    /// An array (or numpy scalar, shape `[]`), converted to f32 when it is floating point.
    Float {
        /// Shape.
        shape: Vec<usize>,
        /// Elements, C order.
        data: Vec<f32>,
        /// The stored dtype name (`float32`, `bfloat16`, ...).
        dtype: String,
    },
    /// An integer array (or numpy scalar), widened to i64.
    Int {
        /// Shape.
        shape: Vec<usize>,
        /// Elements, C order.
        data: Vec<i64>,
        /// The stored dtype name.
        dtype: String,
    },
    /// A Python int.
    Scalar(i64),
    /// A Python float.
    Real(f64),
    /// A Python bool, `None` or string (no tensor data).
    Other(String),
}

/// A msgpack value borrowing the input bytes.
#[derive(Debug)]
enum Value<'a> {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
    Bin(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Ext(i8, &'a [u8]),
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, message: impl Into<String>) -> FlaxError {
        FlaxError::Msgpack {
            offset: self.at,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FlaxError> {
        if n > self.b.len() - self.at {
            return Err(self.err(format!(
                "needs {n} bytes, {} remain (truncated?)",
                self.b.len() - self.at
            )));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, FlaxError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// A count of items that each take at least one byte: more than remain is a lie.
    fn count(&mut self, n: usize) -> Result<usize, FlaxError> {
        let c = self.uint(n)? as usize;
        if c > self.b.len() - self.at {
            return Err(self.err(format!(
                "claims {c} items, {} bytes remain",
                self.b.len() - self.at
            )));
        }
        Ok(c)
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, FlaxError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nested deeper than {MAX_DEPTH}")));
        }
        let tag = self.take(1)?[0];
        Ok(match tag {
            0x00..=0x7f => Value::Int(i128::from(tag)),
            0xe0..=0xff => Value::Int(i128::from(tag as i8)),
            0x80..=0x8f => self.map(usize::from(tag & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(tag & 0x0f), depth)?,
            0xa0..=0xbf => self.str(usize::from(tag & 0x1f))?,
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.uint(1 << (tag - 0xc4))? as usize;
                Value::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.uint(1 << (tag - 0xc7))? as usize;
                let kind = self.take(1)?[0] as i8;
                Value::Ext(kind, self.take(n)?)
            }
            0xca => Value::Float(f64::from(f32::from_bits(self.uint(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.uint(8)?)),
            0xcc..=0xcf => Value::Int(i128::from(self.uint(1 << (tag - 0xcc))?)),
            0xd0 => Value::Int(i128::from(self.uint(1)? as u8 as i8)),
            0xd1 => Value::Int(i128::from(self.uint(2)? as u16 as i16)),
            0xd2 => Value::Int(i128::from(self.uint(4)? as u32 as i32)),
            0xd3 => Value::Int(i128::from(self.uint(8)? as i64)),
            0xd4..=0xd8 => {
                let kind = self.take(1)?[0] as i8;
                Value::Ext(kind, self.take(1 << (tag - 0xd4))?)
            }
            0xd9..=0xdb => {
                let n = self.uint(1 << (tag - 0xd9))? as usize;
                self.str(n)?
            }
            0xdc | 0xdd => {
                let n = self.count(if tag == 0xdc { 2 } else { 4 })?;
                self.array(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.count(if tag == 0xde { 2 } else { 4 })?;
                self.map(n, depth)?
            }
            0xc1 => return Err(self.err("reserved byte 0xc1")),
        })
    }

    fn str(&mut self, n: usize) -> Result<Value<'a>, FlaxError> {
        let at = self.at;
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(Value::Str)
            .map_err(|_| FlaxError::Msgpack {
                offset: at,
                message: "string is not UTF-8".into(),
            })
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value<'a>, FlaxError> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(v))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value<'a>, FlaxError> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let x = self.value(depth + 1)?;
            v.push((k, x));
        }
        Ok(Value::Map(v))
    }
}

/// Parses one whole msgpack document.
fn parse(bytes: &[u8]) -> Result<Value<'_>, FlaxError> {
    let mut r = Reader { b: bytes, at: 0 };
    let v = r.value(0)?;
    if r.at != bytes.len() {
        return Err(r.err(format!("{} bytes after the document", bytes.len() - r.at)));
    }
    Ok(v)
}

/// Flattens a flax msgpack state into leaf paths joined by `/` (`params/blocks_0/attn/qkv/kernel`,
/// `opt_state/1/inner_states/muon/inner_state/0/mu/...`). Empty maps (optax's masked nodes and
/// empty states) hold nothing and produce no leaf.
///
/// # Errors
/// Malformed msgpack (naming the byte), a non-string key, a list node (flax writes none), a
/// chunked array (flax splits only arrays over 1 GiB, which no ELF tensor is) or an array whose
/// bytes do not match its shape and dtype (naming the leaf).
pub fn read_state(bytes: &[u8]) -> Result<BTreeMap<String, Leaf>, FlaxError> {
    let root = parse(bytes)?;
    if !matches!(root, Value::Map(_)) {
        return Err(tree_err("", "a state dict is a map of named nodes"));
    }
    let mut out = BTreeMap::new();
    flatten(&root, "", &mut out)?;
    Ok(out)
}

fn tree_err(path: &str, message: impl Into<String>) -> FlaxError {
    FlaxError::Tree {
        path: if path.is_empty() {
            "(root)".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

fn flatten(v: &Value<'_>, path: &str, out: &mut BTreeMap<String, Leaf>) -> Result<(), FlaxError> {
    let leaf = match v {
        Value::Map(entries) => {
            if entries
                .iter()
                .any(|(k, _)| matches!(k, Value::Str("__msgpack_chunked_array__")))
            {
                return Err(tree_err(
                    path,
                    "a chunked array (over 1 GiB): not read here; no ELF tensor is that large",
                ));
            }
            for (k, x) in entries {
                let Value::Str(k) = k else {
                    return Err(tree_err(path, format!("map key {k:?} is not a string")));
                };
                if k.is_empty() || k.contains('/') {
                    return Err(tree_err(path, format!("key {k:?} cannot name a node")));
                }
                let p = if path.is_empty() {
                    (*k).to_string()
                } else {
                    format!("{path}/{k}")
                };
                if out.contains_key(&p) {
                    return Err(tree_err(&p, "appears twice"));
                }
                flatten(x, &p, out)?;
            }
            return Ok(());
        }
        Value::Ext(1 | 3, payload) => array(payload, path)?,
        Value::Ext(k, _) => {
            return Err(tree_err(
                path,
                format!("msgpack extension {k} (complex numbers?) is not an ELF tensor"),
            ));
        }
        Value::Int(i) => Leaf::Scalar(
            i64::try_from(*i).map_err(|_| tree_err(path, format!("integer {i} overflows i64")))?,
        ),
        Value::Float(x) => Leaf::Real(*x),
        Value::Nil => Leaf::Other("None".into()),
        Value::Bool(b) => Leaf::Other(b.to_string()),
        Value::Str(s) => Leaf::Other(format!("{s:?}")),
        Value::Bin(_) => return Err(tree_err(path, "raw bytes outside an array")),
        Value::Array(_) => {
            return Err(tree_err(
                path,
                "a msgpack list: flax writes lists as maps keyed \"0\", \"1\", ...",
            ));
        }
    };
    out.insert(path.to_string(), leaf);
    Ok(())
}

/// Decodes an extension-1 (array) or -3 (numpy scalar) payload: `(shape, dtype, bytes)`.
fn array(payload: &[u8], path: &str) -> Result<Leaf, FlaxError> {
    let bad = |m: String| tree_err(path, m);
    let v = parse(payload).map_err(|e| bad(format!("array payload: {e}")))?;
    let Value::Array(parts) = v else {
        return Err(bad("array payload is not (shape, dtype, bytes)".into()));
    };
    let [Value::Array(dims), Value::Str(dtype), Value::Bin(raw)] = &parts[..] else {
        return Err(bad("array payload is not (shape, dtype, bytes)".into()));
    };
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        match d {
            Value::Int(n) if *n >= 0 && *n <= i128::from(u32::MAX) => shape.push(*n as usize),
            _ => return Err(bad(format!("array dimension {d:?} is not a size"))),
        }
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let width = match *dtype {
        "float64" | "int64" | "uint64" => 8,
        "float32" | "int32" | "uint32" => 4,
        "bfloat16" | "float16" | "int16" | "uint16" => 2,
        "int8" | "uint8" | "bool" => 1,
        other => return Err(bad(format!("dtype {other} is not read here"))),
    };
    if numel.checked_mul(width) != Some(raw.len()) {
        return Err(bad(format!(
            "{dtype} {shape:?} needs {} bytes, the array holds {}",
            numel.saturating_mul(width),
            raw.len()
        )));
    }
    let chunks = raw.chunks_exact(width);
    let dtype = (*dtype).to_string();
    Ok(match dtype.as_str() {
        "float32" => Leaf::Float {
            data: chunks
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            shape,
            dtype,
        },
        "float64" => Leaf::Float {
            data: chunks
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            shape,
            dtype,
        },
        "bfloat16" => Leaf::Float {
            data: chunks
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            shape,
            dtype,
        },
        "float16" => Leaf::Float {
            data: chunks
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            shape,
            dtype,
        },
        _ => Leaf::Int {
            data: chunks
                .map(|c| match c.len() {
                    8 if dtype == "uint64" => {
                        u64::from_le_bytes(c.try_into().expect("8 bytes")) as i64
                    }
                    8 => i64::from_le_bytes(c.try_into().expect("8 bytes")),
                    4 if dtype == "uint32" => {
                        i64::from(u32::from_le_bytes(c.try_into().expect("4 bytes")))
                    }
                    4 => i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))),
                    2 if dtype == "uint16" => i64::from(u16::from_le_bytes([c[0], c[1]])),
                    2 => i64::from(i16::from_le_bytes([c[0], c[1]])),
                    _ if dtype == "int8" => i64::from(c[0] as i8),
                    _ => i64::from(c[0]),
                })
                .collect(),
            shape,
            dtype,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// msgpack of `(shape, dtype, bytes)` wrapped in extension 1, as flax writes an array.
    fn ext_array(shape: &[u8], dtype: &str, raw: &[u8]) -> Vec<u8> {
        let mut p = vec![0x93, 0x90 | shape.len() as u8];
        p.extend_from_slice(shape);
        p.push(0xa0 | dtype.len() as u8);
        p.extend_from_slice(dtype.as_bytes());
        p.push(0xc4);
        p.push(raw.len() as u8);
        p.extend_from_slice(raw);
        let mut out = vec![0xc7, p.len() as u8, 1];
        out.extend(p);
        out
    }

    fn key(k: &str) -> Vec<u8> {
        let mut v = vec![0xa0 | k.len() as u8];
        v.extend_from_slice(k.as_bytes());
        v
    }

    #[test]
    fn nested_maps_flatten_to_slash_paths_and_empty_maps_vanish() {
        // {"params": {"w": f32[2] = [1, -2]}, "opt": {"0": {}}, "step": 7}
        let raw: Vec<u8> = [1.0f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut b = vec![0x83];
        b.extend(key("params"));
        b.push(0x81);
        b.extend(key("w"));
        b.extend(ext_array(&[2], "float32", &raw));
        b.extend(key("opt"));
        b.extend([0x81]);
        b.extend(key("0"));
        b.push(0x80);
        b.extend(key("step"));
        b.push(7);
        let s = read_state(&b).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            s["params/w"],
            Leaf::Float {
                shape: vec![2],
                data: vec![1.0, -2.0],
                dtype: "float32".into()
            }
        );
        assert_eq!(s["step"], Leaf::Scalar(7));
    }

    #[test]
    fn malformed_input_is_an_error_naming_where() {
        // Truncated: a map of one entry with nothing after the key.
        let mut b = vec![0x81];
        b.extend(key("w"));
        assert!(matches!(read_state(&b), Err(FlaxError::Msgpack { .. })));
        // A map32 claiming 2^32-1 entries in a few bytes is refused before allocating.
        let e = read_state(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0x00]).unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
        // Bytes that do not match the shape name the leaf.
        let mut b = vec![0x81];
        b.extend(key("w"));
        b.extend(ext_array(&[3], "float32", &[0; 8]));
        let e = read_state(&b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "w: float32 [3] needs 12 bytes, the array holds 8"
        );
        // Nesting past the bound.
        let deep = vec![0x91; MAX_DEPTH + 2];
        assert!(
            read_state(&deep)
                .unwrap_err()
                .to_string()
                .contains("deeper")
        );
        // Trailing bytes.
        assert!(read_state(&[0x80, 0x00]).is_err());
        // A bare value is no state dict (a fuzzer's find: it made a leaf with an empty path).
        assert_eq!(
            read_state(&[0x27]).unwrap_err().to_string(),
            "(root): a state dict is a map of named nodes"
        );
    }
}
