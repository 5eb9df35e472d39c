//! `elf config check`: validate a config and print it resolved, with its hash and the
//! reference keys it sets that have no effect here.

use std::path::PathBuf;

use clap::Subcommand;

use crate::out;

/// Config commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validates a config, then prints the resolved YAML and its hash.
    Check {
        /// The YAML file.
        file: PathBuf,
        /// Overrides, `key=value` (dotted keys reach sections).
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

/// Runs a config command.
pub fn run(cmd: ConfigCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Check { file, set } => {
            let rc = crate::load_config(&file, &set)?;
            out::line(rc.config.to_yaml().trim_end());
            // The hash stays the last line: scripts read it from there.
            for k in rc.inert_keys() {
                out::line(format!("# no effect here: {k}"));
            }
            out::line(format!("# config hash: {}", rc.config.hash()));
            Ok(())
        }
    }
}
