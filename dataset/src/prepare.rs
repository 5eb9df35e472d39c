//! `elf data prepare`: text, JSONL or parquet in; a tokenised, sharded dataset out, as an HF
//! `save_to_disk` folder (Arrow IPC stream shards) or parquet shards.
//!
//! Shard `k` holds input rows `[k·R, (k+1)·R)`. Each shard is written to a temporary name and
//! renamed when complete, and `prepare.json` records the settings, so an interrupted run resumes
//! by skipping the shards that exist (after checking their row counts) and never mixes settings.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{Int32Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::tokenizer::TextTokenizer;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutFormat {
    /// HF `save_to_disk` folder of Arrow IPC stream shards.
    Arrow,
    /// Parquet shards.
    Parquet,
}

/// Settings of one prepare run; stored as `prepare.json` in the output folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareSettings {
    /// Input file.
    pub input: String,
    /// Input size in bytes (a changed input cannot be resumed).
    pub input_bytes: u64,
    /// Output format.
    pub format: OutFormat,
    /// Rows per shard.
    pub rows_per_shard: u64,
    /// Tokenizer name.
    pub tokenizer: String,
    /// Input rows.
    pub rows: u64,
    /// Whether rows are conditional (`input`/`output`).
    pub conditional: bool,
}

/// What a prepare run did.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareReport {
    /// Rows written in total.
    pub rows: u64,
    /// Tokens written by this run.
    pub tokens: u64,
    /// Shards in the output.
    pub shards: usize,
    /// Shards that already existed and were kept.
    pub resumed_shards: usize,
    /// Seconds this run took.
    pub seconds: f64,
}

/// One input record: an optional condition text and the target (or unconditional) text.
#[derive(Debug, Clone)]
struct Record {
    input: Option<String>,
    text: String,
}

/// Reads every record of a text (one document per non-empty line), JSONL or parquet file.
fn read_records(path: &Path) -> Result<Vec<Record>, DataError> {
    let name = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let fmt = |m: String| DataError::Format {
        name: name.clone(),
        message: m,
    };
    match ext {
        "jsonl" | "json" => {
            let f = fs::File::open(path).map_err(|e| DataError::io(&name, e))?;
            let mut out = vec![];
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| DataError::io(&name, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| fmt(format!("line {}: {e}", i + 1)))?;
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
                out.push(match (s("text"), s("input"), s("output")) {
                    (Some(t), None, None) => Record {
                        input: None,
                        text: t,
                    },
                    (None, Some(a), Some(b)) => Record {
                        input: Some(a),
                        text: b,
                    },
                    _ => {
                        return Err(fmt(format!(
                            "line {}: expected {{\"text\"}} or {{\"input\", \"output\"}}",
                            i + 1
                        )));
                    }
                });
            }
            Ok(out)
        }
        "parquet" => {
            let f = fs::File::open(path).map_err(|e| DataError::io(&name, e))?;
            let bad =
                |e: parquet::errors::ParquetError| DataError::parse(name.as_str(), "parquet", e);
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .map_err(bad)?
                .build()
                .map_err(bad)?;
            let mut out = vec![];
            for b in reader {
                let b = b.map_err(|e| DataError::parse(name.as_str(), "parquet", e))?;
                let col = |n: &str| {
                    b.column_by_name(n).map(|c| {
                        arrow_array::cast::AsArray::as_string_opt::<i32>(c.as_ref()).map(|s| {
                            (0..s.len())
                                .map(|i| s.value(i).to_string())
                                .collect::<Vec<_>>()
                        })
                    })
                };
                match (col("text"), col("input"), col("output")) {
                    (Some(Some(t)), _, _) => {
                        out.extend(t.into_iter().map(|text| Record { input: None, text }))
                    }
                    (_, Some(Some(a)), Some(Some(b))) => {
                        out.extend(a.into_iter().zip(b).map(|(i, t)| Record {
                            input: Some(i),
                            text: t,
                        }))
                    }
                    _ => {
                        return Err(fmt(
                            "needs a string column \"text\", or \"input\" and \"output\"".into(),
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => {
            let text = fs::read_to_string(path).map_err(|e| DataError::io(&name, e))?;
            Ok(text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Record {
                    input: None,
                    text: l.to_string(),
                })
                .collect())
        }
    }
}

fn shard_name(k: usize, n: usize, format: OutFormat) -> String {
    let ext = match format {
        OutFormat::Arrow => "arrow",
        OutFormat::Parquet => "parquet",
    };
    format!("data-{k:05}-of-{n:05}.{ext}")
}

fn schema(conditional: bool) -> Arc<Schema> {
    let ids = || DataType::List(Arc::new(Field::new("item", DataType::Int32, true)));
    let mut fields = vec![Field::new("input_ids", ids(), false)];
    if conditional {
        fields.push(Field::new("condition_input_ids", ids(), false));
        fields.push(Field::new("input", DataType::Utf8, false));
        fields.push(Field::new("target", DataType::Utf8, false));
    }
    fields.push(Field::new("index", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// HF writes record batches of 1000 rows by default; so do we.
const BATCH_ROWS: usize = 1000;

type Tokenised<'a> = (u64, &'a Record, Vec<u32>, Option<Vec<u32>>);

fn id_list<'a>(ids: impl Iterator<Item = &'a [u32]>) -> ArrayRef {
    let mut b = ListBuilder::new(Int32Builder::new());
    for row in ids {
        b.values()
            .append_slice(&row.iter().map(|&x| x as i32).collect::<Vec<_>>());
        b.append(true);
    }
    Arc::new(b.finish())
}

fn to_batch(schema: &Arc<Schema>, rows: &[Tokenised<'_>]) -> RecordBatch {
    let mut cols: Vec<ArrayRef> = vec![id_list(rows.iter().map(|r| r.2.as_slice()))];
    if schema.fields().len() > 2 {
        cols.push(id_list(rows.iter().map(|r| r.3.as_deref().unwrap_or(&[]))));
        let mut a = StringBuilder::new();
        let mut t = StringBuilder::new();
        for r in rows {
            a.append_value(r.1.input.as_deref().unwrap_or(""));
            t.append_value(&r.1.text);
        }
        cols.push(Arc::new(a.finish()));
        cols.push(Arc::new(t.finish()));
    }
    let mut idx = Int64Builder::new();
    for r in rows {
        idx.append_value(r.0 as i64);
    }
    cols.push(Arc::new(idx.finish()));
    RecordBatch::try_new(schema.clone(), cols).expect("columns match the schema")
}

fn write_shard(
    path: &Path,
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
    format: OutFormat,
) -> Result<(), DataError> {
    let name = path.display().to_string();
    let tmp = path.with_extension("tmp");
    let f = fs::File::create(&tmp).map_err(|e| DataError::io(&name, e))?;
    let arrow = |e: arrow_schema::ArrowError| DataError::parse(name.as_str(), "writing arrow", e);
    let parquet =
        |e: parquet::errors::ParquetError| DataError::parse(name.as_str(), "writing parquet", e);
    match format {
        OutFormat::Arrow => {
            let mut w = arrow_ipc::writer::StreamWriter::try_new(f, schema).map_err(arrow)?;
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
        }
        OutFormat::Parquet => {
            let mut w =
                parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).map_err(parquet)?;
            for b in batches {
                w.write(b).map_err(parquet)?;
            }
            w.close().map_err(parquet)?;
        }
    }
    fs::rename(&tmp, path).map_err(|e| DataError::io(&name, e))
}

fn existing_rows(path: &Path, tokenizer: &Arc<TextTokenizer>) -> Option<u64> {
    crate::open_dataset(&path.display().to_string(), tokenizer)
        .ok()
        .map(|d| d.len())
}

/// Tokenises `input` into `out`, resuming an interrupted run with the same settings.
///
/// `progress` is called after each shard with (rows done, rows total, tokens this run).
///
/// # Errors
/// Unreadable input, a changed input or settings in an existing output folder, IO errors.
pub fn prepare(
    input: &Path,
    out: &Path,
    format: OutFormat,
    rows_per_shard: u64,
    tokenizer: &Arc<TextTokenizer>,
    progress: &mut dyn FnMut(u64, u64, u64),
) -> Result<PrepareReport, DataError> {
    let start = Instant::now();
    let input_name = input.display().to_string();
    let input_bytes = fs::metadata(input)
        .map_err(|e| DataError::io(&input_name, e))?
        .len();
    let records = read_records(input)?;
    if records.is_empty() {
        return Err(DataError::Format {
            name: input_name,
            message: "no rows to prepare".into(),
        });
    }
    let conditional = records[0].input.is_some();
    let settings = PrepareSettings {
        input: input_name.clone(),
        input_bytes,
        format,
        rows_per_shard: rows_per_shard.max(1),
        tokenizer: tokenizer.name().to_string(),
        rows: records.len() as u64,
        conditional,
    };
    fs::create_dir_all(out).map_err(|e| DataError::io(&out.display().to_string(), e))?;
    let manifest = out.join("prepare.json");
    if manifest.exists() {
        let old: PrepareSettings = serde_json::from_slice(
            &fs::read(&manifest).map_err(|e| DataError::io(&manifest.display().to_string(), e))?,
        )
        .map_err(|e| {
            DataError::parse(manifest.display().to_string(), "malformed prepare.json", e)
        })?;
        if old != settings {
            return Err(DataError::Format {
                name: manifest.display().to_string(),
                message: "an earlier prepare with other settings or input wrote here; use a new output folder".into(),
            });
        }
    } else {
        fs::write(
            &manifest,
            serde_json::to_vec_pretty(&settings).expect("serialises"),
        )
        .map_err(|e| DataError::io(&manifest.display().to_string(), e))?;
    }
    let r = settings.rows_per_shard as usize;
    let n = records.len().div_ceil(r);
    let schema = schema(conditional);
    let (mut tokens, mut resumed) = (0u64, 0usize);
    let mut names = vec![];
    for k in 0..n {
        let range = k * r..((k + 1) * r).min(records.len());
        let name = shard_name(k, n, format);
        let path: PathBuf = out.join(&name);
        names.push(name);
        if path.exists() && existing_rows(&path, tokenizer) == Some(range.len() as u64) {
            resumed += 1;
            progress(range.end as u64, records.len() as u64, tokens);
            continue;
        }
        let tokenised: Vec<Tokenised<'_>> = records[range.clone()]
            .par_iter()
            .enumerate()
            .map(|(i, rec)| {
                (
                    (range.start + i) as u64,
                    rec,
                    tokenizer.encode(&rec.text),
                    rec.input.as_deref().map(|t| tokenizer.encode(t)),
                )
            })
            .collect();
        tokens += tokenised
            .iter()
            .map(|t| (t.2.len() + t.3.as_ref().map_or(0, Vec::len)) as u64)
            .sum::<u64>();
        let batches: Vec<RecordBatch> = tokenised
            .chunks(BATCH_ROWS)
            .map(|c| to_batch(&schema, c))
            .collect();
        write_shard(&path, &schema, &batches, format)?;
        progress(range.end as u64, records.len() as u64, tokens);
    }
    if format == OutFormat::Arrow {
        write_hf_metadata(out, &names, conditional)?;
    }
    Ok(PrepareReport {
        rows: records.len() as u64,
        tokens,
        shards: n,
        resumed_shards: resumed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes `state.json` and `dataset_info.json` so `datasets.load_from_disk` reads the folder.
fn write_hf_metadata(out: &Path, files: &[String], conditional: bool) -> Result<(), DataError> {
    let seq =
        serde_json::json!({"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"});
    let mut features = serde_json::Map::new();
    features.insert("input_ids".into(), seq.clone());
    if conditional {
        features.insert("condition_input_ids".into(), seq);
        features.insert(
            "input".into(),
            serde_json::json!({"dtype": "string", "_type": "Value"}),
        );
        features.insert(
            "target".into(),
            serde_json::json!({"dtype": "string", "_type": "Value"}),
        );
    }
    features.insert(
        "index".into(),
        serde_json::json!({"dtype": "int64", "_type": "Value"}),
    );
    let info = serde_json::json!({"citation": "", "description": "prepared by elf data prepare", "features": features, "homepage": "", "license": ""});
    let state = serde_json::json!({
        "_data_files": files.iter().map(|f| serde_json::json!({"filename": f})).collect::<Vec<_>>(),
        "_fingerprint": "elf-prepare",
        "_format_columns": null,
        "_format_kwargs": {},
        "_format_type": null,
        "_output_all_columns": false,
        "_split": null
    });
    for (name, v) in [("dataset_info.json", info), ("state.json", state)] {
        let p = out.join(name);
        fs::write(&p, serde_json::to_vec_pretty(&v).expect("serialises"))
            .map_err(|e| DataError::io(&p.display().to_string(), e))?;
    }
    Ok(())
}
