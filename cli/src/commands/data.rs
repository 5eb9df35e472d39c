//! `elf data prepare`: tokenise a text, JSONL or parquet file into a sharded dataset.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use elf_dataset::prepare::{OutFormat, prepare};
use elf_dataset::tokenizer::TextTokenizer;
use indicatif::{ProgressBar, ProgressStyle};

use crate::out;

/// Data commands.
#[derive(Debug, Subcommand)]
pub enum DataCmd {
    /// Tokenises a text (one document per line), JSONL or parquet file into Arrow or parquet shards.
    Prepare {
        /// Input file.
        #[arg(long)]
        input: PathBuf,
        /// Output folder (resumable: rerun the same command after an interruption).
        #[arg(long)]
        out: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "arrow")]
        format: Format,
        /// Rows per shard.
        #[arg(long, default_value_t = 100_000)]
        rows_per_shard: u64,
        /// A tokenizer.json (default: the bundled t5-small).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
}

/// Output format of `prepare`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// HF `save_to_disk` folder of Arrow IPC stream shards.
    Arrow,
    /// Parquet shards.
    Parquet,
}

/// Runs a data command.
pub fn run(cmd: DataCmd) -> anyhow::Result<()> {
    match cmd {
        DataCmd::Prepare {
            input,
            out: dir,
            format,
            rows_per_shard,
            tokenizer,
        } => {
            let tok = Arc::new(match tokenizer {
                Some(p) => TextTokenizer::from_file(&p)?,
                None => TextTokenizer::t5(),
            });
            let format = match format {
                Format::Arrow => OutFormat::Arrow,
                Format::Parquet => OutFormat::Parquet,
            };
            let pb = ProgressBar::new(0).with_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} rows {per_sec} {msg} eta {eta}")
                    .expect("valid template"),
            );
            let start = std::time::Instant::now();
            let report = prepare(
                &input,
                &dir,
                format,
                rows_per_shard,
                &tok,
                &mut |done, total, tokens| {
                    pb.set_length(total);
                    pb.set_position(done);
                    let secs = start.elapsed().as_secs_f64().max(1e-9);
                    pb.set_message(format!("{:.0} tokens/s", tokens as f64 / secs));
                },
            )?;
            pb.finish_and_clear();
            out::line(format!(
                "prepared {} rows into {} shards ({} resumed), {} tokens in {:.1}s ({:.0} tokens/s) -> {}",
                report.rows,
                report.shards,
                report.resumed_shards,
                report.tokens,
                report.seconds,
                report.tokens as f64 / report.seconds.max(1e-9),
                dir.display()
            ));
            Ok(())
        }
    }
}
