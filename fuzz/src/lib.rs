//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! The dataset readers open files by path (through `elf_store::Location`), so their targets
//! write each input to one scratch file per process and open that: the real entry point
//! (`elf_dataset::open_dataset`, which dispatches on the file's extension) and the real
//! `pread`-backed byte source, not a test double.
//!
//! Every target runs its body through [`run`]: a panic the project's code catches itself (the
//! parquet reader turns panics inside the `parquet` crate into errors) is not a finding; one
//! that escapes the body is, and aborts with its message and stack as libFuzzer expects.

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{Arc, Once, OnceLock};

use elf_dataset::Dataset;
use elf_dataset::tokenizer::TextTokenizer;

/// Rows read from the start of a dataset; the middle and last rows are read as well. A header
/// may claim billions of rows, so "every row" is bounded to keep one input under a second.
pub const ROWS_READ: u64 = 256;

/// Writes `data` to this process's scratch file `input.<ext>` under `$TMPDIR` (one folder per
/// process, so `-fork`/`-jobs` workers do not share it) and returns its path.
pub fn scratch_file(ext: &str, data: &[u8]) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("elf-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the scratch folder");
        d
    });
    let path = dir.join(format!("input.{ext}"));
    std::fs::write(&path, data).expect("write the scratch file");
    path
}

/// The bundled t5-small tokenizer, loaded once per process.
pub fn t5() -> &'static Arc<TextTokenizer> {
    static T5: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    T5.get_or_init(|| Arc::new(TextTokenizer::t5()))
}

/// Opens `data` as a dataset file with extension `ext` and reads rows from it: the first
/// [`ROWS_READ`], the middle one and the last one. Errors are expected; only a panic, an
/// abort, running out of memory or a hang is a finding.
pub fn open_and_read(ext: &str, data: &[u8]) {
    let path = scratch_file(ext, data);
    let Ok(ds) = elf_dataset::open_dataset(path.to_str().expect("UTF-8 temp path"), t5()) else {
        return;
    };
    read_rows(ds.as_ref());
}

/// Reads the rows [`open_and_read`] reads, ignoring each row's result.
pub fn read_rows(ds: &dyn Dataset) {
    let n = ds.len();
    let _ = ds.is_conditional();
    let _ = ds.describe();
    for i in (0..n.min(ROWS_READ)).chain([n / 2, n.saturating_sub(1)]) {
        if i < n {
            let _ = ds.row(i);
        }
    }
}

thread_local! {
    /// Where and why this thread last panicked, caught or not, and its stack (symbolised only
    /// when printed: a caught panic costs a stack walk, not a symbol lookup).
    static LAST_PANIC: RefCell<Option<(String, Backtrace)>> = const { RefCell::new(None) };
}

/// Runs one input. libfuzzer-sys's panic hook aborts at the panic, before any `catch_unwind`
/// in the code under test can answer it; this hook only records the panic, and a panic that
/// escapes `body` is printed (as the default hook would) and aborts.
pub fn run(body: impl FnOnce()) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let text = format!(
                "thread '{}' panicked at {}:\n{}",
                thread.name().unwrap_or("<unnamed>"),
                info.location()
                    .map_or_else(|| "?".into(), ToString::to_string),
                payload_text(info.payload()),
            );
            let stack = Backtrace::force_capture();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((text, stack)));
        }));
    });
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
        LAST_PANIC.with(|p| {
            if let Some((text, stack)) = p.borrow().as_ref() {
                eprintln!("\n{text}\nstack backtrace:\n{stack}");
            }
        });
        std::process::abort();
    }
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>")
}
