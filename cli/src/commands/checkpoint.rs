//! `elf checkpoint ls|inspect|verify`: list committed steps, print a manifest, check hashes.

use clap::Subcommand;
use elf_shared::manifest::step_dir;
use elf_store::Location;
use elf_store::checkpoints;

use crate::out;

/// Checkpoint commands.
#[derive(Debug, Subcommand)]
pub enum CheckpointCmd {
    /// Lists the checkpoints under a checkpoint root (committed or not; `latest` marked).
    Ls {
        /// Checkpoint root (path or URL), e.g. `runs/quickstart/checkpoints`.
        url: String,
    },
    /// Prints the manifest of a checkpoint folder (or of the root's `latest`).
    Inspect {
        /// Checkpoint folder or root.
        url: String,
    },
    /// Checks every shard's size and sha256 against the manifest.
    Verify {
        /// Checkpoint folder or root (then `latest`).
        url: String,
    },
}

/// Runs a checkpoint command.
pub fn run(cmd: CheckpointCmd) -> anyhow::Result<()> {
    match cmd {
        CheckpointCmd::Ls { url } => {
            let root = Location::parse(&url)?;
            let latest = checkpoints::latest(&root)?;
            let steps = checkpoints::list_steps(&root)?;
            if steps.is_empty() {
                anyhow::bail!("{url}: no checkpoints");
            }
            for s in steps {
                let dir = root.join(&step_dir(s));
                let line = match checkpoints::read_manifest(&dir) {
                    Ok(m) => format!(
                        "{}  step {s}  world {}  shards {}  {} MB{}",
                        step_dir(s),
                        m.world_size,
                        m.shards.len(),
                        m.shards.iter().map(|x| x.size).sum::<u64>() / 1_000_000,
                        if latest == Some(s) { "  (latest)" } else { "" }
                    ),
                    Err(_) => format!("{}  step {s}  uncommitted (no manifest)", step_dir(s)),
                };
                out::line(line);
            }
            Ok(())
        }
        CheckpointCmd::Inspect { url } => {
            let m = checkpoints::read_manifest(&checkpoints::folder(&url)?)?;
            out::line(serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        CheckpointCmd::Verify { url } => {
            let dir = checkpoints::folder(&url)?;
            let m = checkpoints::read_manifest(&dir)?;
            checkpoints::verify(&dir, &m)?;
            out::line(format!(
                "{}: {} shards verified (step {}, sha256 and size)",
                dir.display(),
                m.shards.len(),
                m.step
            ));
            Ok(())
        }
    }
}
