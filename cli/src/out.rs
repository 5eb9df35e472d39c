//! The only place the CLI writes results to stdout (logs go to stderr).

/// Prints one line of command output.
#[allow(clippy::print_stdout)]
pub fn line(s: impl std::fmt::Display) {
    println!("{s}");
}
