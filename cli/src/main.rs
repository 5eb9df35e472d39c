//! `elf`: the one user-facing binary (train, coordinator, worker, sample, eval, import, score,
//! plot, config, model, data, checkpoint, bench).
//!
//! # Layout
//! - [`commands`]: one file per subcommand.
//! - [`bench`]: `elf bench`, one file per benchmark.
//! - `out`: the one place the binary prints to stdout.
//! - this file: the command line, logging, the allocator, and the one-line error at exit.

mod bench;
mod commands;
mod out;

use commands::{checkpoint, cluster, config, data, eval, import, model, plot, score, train};

use clap::{Parser, Subcommand};

/// mimalloc keeps freed tensor buffers for reuse instead of returning them to the OS; with the
/// system allocator every large activation is page-faulted in afresh (measured: 25% faster CPU
/// steps; jemalloc was slower than both).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Trains and inspects ELF (Embedded Language Flows) diffusion language models.
#[derive(Debug, Parser)]
#[command(name = "elf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "pretty", env = "ELF_LOG_FORMAT")]
    log_format: LogFormat,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trains on this machine: an in-process coordinator and N local worker processes; prints
    /// samples at the end.
    Train(train::TrainArgs),
    /// Runs the coordinator of a run (JSON events on stdout).
    Coordinator(cluster::CoordinatorArgs),
    /// Runs a worker that joins a coordinator (JSON events on stdout).
    Worker(cluster::WorkerArgs),
    /// Generates samples from a checkpoint's EMA weights (unconditional or from prompts).
    Sample(eval::SampleArgs),
    /// Evaluates a checkpoint with the paper's metrics on its task.
    Eval(eval::EvalArgs),
    /// Imports a reference (flax msgpack) checkpoint as a committed checkpoint of ours.
    Import(import::ImportArgs),
    /// Scores a hypothesis file against references with the paper's BLEU and ROUGE.
    Score(score::ScoreArgs),
    /// Plots a run's loss parts and eval metrics over steps as an SVG.
    Plot(plot::PlotArgs),
    /// Validates configs.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Inspects and runs the network.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Prepares datasets.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Lists, inspects and verifies checkpoints.
    #[command(subcommand)]
    Checkpoint(checkpoint::CheckpointCmd),
    /// Measures performance against anchors in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    // Colour only on a terminal: logs also go to files and pipes.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => b.compact().init(),
        LogFormat::Json => b.json().init(),
    }
}

/// mimalloc's `mi_option_purge_delay` (v2 option 15).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory committed: a training step frees and reallocates the same large buffers,
/// and purging them makes the kernel zero fresh pages every step (measured ~15% of a CPU step).
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: sets a plain integer option of the allocator; no pointers are involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Coordinator(a) => cluster::coordinator(a),
        Command::Worker(a) => cluster::worker(a),
        Command::Sample(a) => eval::sample(a),
        Command::Eval(a) => eval::evaluate(a),
        Command::Import(a) => import::run(a),
        Command::Score(a) => score::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Config(c) => config::run(c),
        Command::Model(c) => model::run(c),
        Command::Data(c) => data::run(c),
        Command::Bench(c) => bench::run(c),
        Command::Checkpoint(c) => checkpoint::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts, outermost first, without repeating a cause the
            // message before it already quotes.
            let mut parts: Vec<String> = vec![];
            for c in e.chain().map(|c| c.to_string()) {
                if !parts.last().is_some_and(|p| p.contains(&c)) {
                    parts.push(c);
                }
            }
            let msg = parts.join(": ");
            eprintln!("error: {msg}");
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit code for a retriable failure (a lost peer or coordinator, a failed run that can resume
/// from its checkpoints): an orchestrator may start the process again.
pub const EXIT_RETRIABLE: u8 = 1;
/// Exit code for an error that a restart repeats (an invalid config, a registration the
/// coordinator refuses): the orchestrator fails the run. Usage errors exit 2 (clap).
pub const EXIT_INVALID: u8 = 3;

/// Returns the exit code of an error (the contract in `deploy/README.md`).
fn exit_code(e: &anyhow::Error) -> u8 {
    let invalid = e.chain().any(|c| {
        c.downcast_ref::<elf_shared::config::ConfigError>()
            .is_some()
            || c.downcast_ref::<elf_worker::session::Unreachable>()
                .is_some()
            || c.downcast_ref::<elf_protocol::security::SecurityError>()
                .is_some()
            || c.downcast_ref::<elf_worker::client::ClientError>()
                .is_some_and(elf_worker::client::ClientError::is_not_admitted)
    });
    if invalid {
        EXIT_INVALID
    } else {
        EXIT_RETRIABLE
    }
}

/// Loads a config file with overrides.
fn load_config(
    path: &std::path::Path,
    set: &[String],
) -> anyhow::Result<elf_shared::config::ResolvedConfig> {
    Ok(elf_shared::config::Config::load(path, set)?)
}

/// A path, URL or hub id as given: a hub id (`org/name[@revision][/path]` that is no local
/// path) is resolved to the hub's cache, downloading what the cache lacks (`elf_store::hub`).
fn hub_path(spec: &str, kind: elf_store::hub::RepoKind, what: &str) -> anyhow::Result<String> {
    if !elf_store::hub::is_hub_id(spec) {
        return Ok(spec.to_string());
    }
    let r = elf_store::hub::resolve(spec, kind).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    tracing::info!(what, repo = %r.repo, commit = %r.revision, path = %r.path.display(), "from the hub");
    Ok(r.path.display().to_string())
}

/// Resolves the hub ids among a config's paths (`data_path` when `train_data`,
/// `eval_data_path`, `encoder_checkpoint`, `eval.gpt2`, `eval_ppl_model`) to the hub cache. The
/// config then holds the snapshot paths, which name the commit, so the run records what it
/// read. An evaluation passes `train_data: false`: it never reads the training set, so it must
/// not download it.
fn resolve_hub_ids(
    rc: &mut elf_shared::config::ResolvedConfig,
    train_data: bool,
) -> anyhow::Result<()> {
    use elf_store::hub::RepoKind::{Dataset, Model};
    let at = rc.source.clone();
    let base = rc.clone();
    let local = |p: &str| std::path::Path::new(&base.resolve(p)).exists();
    let c = &mut rc.config;
    let fields: [(&str, &mut Option<String>, _); 4] = [
        ("data_path", &mut c.data_path, Dataset),
        ("eval_data_path", &mut c.eval_data_path, Dataset),
        ("encoder_checkpoint", &mut c.encoder_checkpoint, Model),
        ("eval.gpt2", &mut c.eval.gpt2, Model),
    ];
    for (what, field, kind) in fields {
        if what == "data_path" && !train_data {
            continue;
        }
        if let Some(p) = field.as_deref()
            && !local(p)
        {
            *field = Some(hub_path(p, kind, &format!("{at}: {what}"))?);
        }
    }
    if !local(&c.eval_ppl_model) && elf_store::hub::is_hub_id(&c.eval_ppl_model) {
        c.eval_ppl_model = hub_path(&c.eval_ppl_model, Model, &format!("{at}: eval_ppl_model"))?;
    }
    Ok(())
}
