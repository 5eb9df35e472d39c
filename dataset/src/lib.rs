//! The data layer of spec §3: dataset sources, the tokenizer, the collator and `elf data
//! prepare`. No tensors: the coordinator uses it to size the sample plan, workers to read rows.
//!
//! Every source gives random access by global row index with memory that does not grow with the
//! dataset; which rows a step reads comes from `elf_shared::plan`. Bytes come through
//! `elf_store::Location` (local files and object stores).
//!
//! # Layout
//! - [`arrow`]: HF `save_to_disk` folders (Arrow IPC stream shards).
//! - [`parquet`]: parquet files and folders.
//! - [`jsonl`]: JSONL, tokenised at load.
//! - [`tokenizer`]: the bundled T5 tokenizer and any HF `tokenizer.json`.
//! - [`collate`]: truncation, condition prepending, padding, loss weights (spec §3.3–3.4).
//! - [`prepare`]: `elf data prepare`, text in, sharded tokenised dataset out.
//! - this file: [`Dataset`], [`DataError`], [`open_dataset`], [`open_training`] and
//!   [`run_facts`] (a run sized from its data).

pub mod arrow;
pub mod collate;
pub mod jsonl;
pub mod parquet;
pub mod prepare;
pub mod tokenizer;

use std::sync::Arc;

use elf_store::{Location, StoreError};
use tokenizer::TextTokenizer;

/// Errors from reading datasets; each names the file (or URL) and the problem on one line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A local file operation failed.
    #[error("{name}: {source}")]
    Io {
        /// File.
        name: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Reading bytes from a file or object failed (including object-store requests).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A parser (JSON, Arrow, Parquet, the tokenizer) refused a file; the parser's error is
    /// kept as the cause.
    #[error("{name}: {what}: {source}")]
    Parse {
        /// File.
        name: String,
        /// Where or what (`line 4`, `not a readable parquet file`).
        what: String,
        /// The parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A malformed file, a missing column, a wrong type.
    #[error("{name}: {message}")]
    Format {
        /// File.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl DataError {
    /// Wraps a parser's error on `name`.
    pub fn parse(
        name: impl Into<String>,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Parse {
            name: name.into(),
            what: what.into(),
            source: source.into(),
        }
    }

    /// Wraps an IO error.
    pub fn io(name: &str, source: std::io::Error) -> Self {
        Self::Io {
            name: name.into(),
            source,
        }
    }
}

/// One dataset row (spec §3.2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// Target (or unconditional) token ids.
    pub input_ids: Vec<u32>,
    /// Condition token ids of conditional rows.
    pub condition_input_ids: Option<Vec<u32>>,
    /// Raw condition text (eval sets).
    pub input: Option<String>,
    /// Raw target text (eval sets; BLEU/ROUGE references).
    pub target: Option<String>,
    /// The row's index column.
    pub index: Option<i64>,
}

/// Random access to rows by global index.
pub trait Dataset: Send + Sync + std::fmt::Debug {
    /// Returns the number of rows.
    fn len(&self) -> u64;
    /// Returns true when there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads row `i` (`i < len`).
    ///
    /// # Errors
    /// IO or format errors naming the file.
    fn row(&self, i: u64) -> Result<Row, DataError>;
    /// Returns a name for messages.
    fn describe(&self) -> String;
    /// Returns true when rows carry `condition_input_ids`.
    fn is_conditional(&self) -> bool;
}

/// Several datasets (shards, files) as one, in order.
#[derive(Debug)]
pub struct Concat {
    parts: Vec<Box<dyn Dataset>>,
    starts: Vec<u64>,
    rows: u64,
    name: String,
}

impl Concat {
    /// Joins `parts` in order; `name` describes the whole.
    pub fn new(parts: Vec<Box<dyn Dataset>>, name: String) -> Self {
        let mut starts = vec![];
        let mut rows = 0;
        for p in &parts {
            starts.push(rows);
            rows += p.len();
        }
        Self {
            parts,
            starts,
            rows,
            name,
        }
    }
}

impl Dataset for Concat {
    fn len(&self) -> u64 {
        self.rows
    }
    fn row(&self, i: u64) -> Result<Row, DataError> {
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        self.parts[k].row(i - self.starts[k])
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn is_conditional(&self) -> bool {
        self.parts.iter().any(|p| p.is_conditional())
    }
}

/// What a run trains on: the tokenizer and the training rows of a resolved config. The
/// coordinator sizes the run from `data.len()` (`elf_shared::run::RunFacts`); workers read
/// the rows their directives name.
#[derive(Debug)]
pub struct Training {
    /// The text tokenizer (`tokenizer_name`, else t5-small's).
    pub tokenizer: Arc<TextTokenizer>,
    /// The training rows (`data_path`).
    pub data: Box<dyn Dataset>,
}

/// Opens the tokenizer and the training data of `rc`.
///
/// # Errors
/// A missing `data_path`, or an unreadable dataset or tokenizer.
pub fn open_training(rc: &elf_shared::config::ResolvedConfig) -> anyhow::Result<Training> {
    use anyhow::Context;
    let c = &rc.config;
    let tokenizer = Arc::new(TextTokenizer::for_config(
        c.tokenizer_name.as_deref(),
        &rc.base_dir,
    )?);
    let data_path = c
        .data_path
        .as_deref()
        .with_context(|| format!("{}: data_path is not set", rc.source))?;
    let data = open_dataset(&rc.resolve(data_path), &tokenizer)?;
    Ok(Training { tokenizer, data })
}

/// Opens the training data of `rc` and derives the run's facts from it: the check a
/// coordinator makes before it serves.
///
/// # Errors
/// As [`open_training`], and a dataset or world size the run cannot use.
pub fn run_facts(
    rc: &elf_shared::config::ResolvedConfig,
) -> anyhow::Result<elf_shared::run::RunFacts> {
    use elf_shared::run::{RunError, RunFacts};
    let t = open_training(rc)?;
    RunFacts::derive(&rc.config, t.data.len()).map_err(|e| {
        let name = match &e {
            RunError::Plan { .. } => t.data.describe(),
            RunError::World { .. } => rc.source.clone(),
        };
        anyhow::Error::new(e).context(name)
    })
}

/// Opens a dataset from a path or URL: a `save_to_disk` folder, a `.arrow` stream file, parquet
/// files or a folder of them, or JSONL files or a folder of them.
///
/// # Errors
/// Unknown formats, empty datasets and every source error, naming the file.
pub fn open_dataset(
    spec: &str,
    tokenizer: &Arc<TextTokenizer>,
) -> Result<Box<dyn Dataset>, DataError> {
    let loc = Location::parse(spec)?;
    let name = loc.display();
    let ds: Box<dyn Dataset> = if loc.is_dir()? {
        let names = loc.list()?;
        let has = |suffix: &str| names.iter().any(|n| n.ends_with(suffix));
        if names
            .iter()
            .any(|n| n == "state.json" || n == "dataset_dict.json")
            || has(".arrow")
        {
            boxed(arrow::open_hf(&loc)?, name.clone())
        } else if has(".parquet") {
            let parts = names
                .iter()
                .filter(|n| n.ends_with(".parquet"))
                .map(|n| {
                    Ok(Box::new(parquet::ParquetFile::open(loc.join(n).open()?)?)
                        as Box<dyn Dataset>)
                })
                .collect::<Result<Vec<_>, DataError>>()?;
            Box::new(Concat::new(parts, name.clone()))
        } else if has(".jsonl") {
            let parts = names
                .iter()
                .filter(|n| n.ends_with(".jsonl"))
                .map(|n| {
                    Ok(Box::new(jsonl::JsonlFile::open(
                        loc.join(n).open()?,
                        tokenizer.clone(),
                    )?) as Box<dyn Dataset>)
                })
                .collect::<Result<Vec<_>, DataError>>()?;
            Box::new(Concat::new(parts, name.clone()))
        } else {
            return Err(DataError::Format {
                name,
                message: "no dataset here (expected state.json, .arrow, .parquet or .jsonl files)"
                    .into(),
            });
        }
    } else {
        let file = loc.file_name();
        if file.ends_with(".arrow") {
            boxed(arrow::open_hf(&loc)?, name.clone())
        } else if file.ends_with(".parquet") {
            Box::new(parquet::ParquetFile::open(loc.open()?)?)
        } else if file.ends_with(".jsonl") || file.ends_with(".json") {
            Box::new(jsonl::JsonlFile::open(loc.open()?, tokenizer.clone())?)
        } else if !loc.exists()? {
            return Err(DataError::Format {
                name,
                message: "no such file or folder".into(),
            });
        } else {
            return Err(DataError::Format {
                name,
                message: "unknown dataset format (use .arrow, .parquet or .jsonl)".into(),
            });
        }
    };
    if ds.is_empty() {
        return Err(DataError::Format {
            name,
            message: "the dataset is empty".into(),
        });
    }
    Ok(ds)
}

fn boxed(streams: Vec<arrow::ArrowStream>, name: String) -> Box<dyn Dataset> {
    if streams.len() == 1 {
        Box::new(streams.into_iter().next().expect("one stream"))
    } else {
        Box::new(Concat::new(
            streams
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Dataset>)
                .collect(),
            name,
        ))
    }
}
