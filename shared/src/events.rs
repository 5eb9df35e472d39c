//! Machine-readable events: one JSON object per line on stdout. Humans read stderr (logs);
//! tests and scripts read these (`ready` carries the bound addresses).

use std::io::Write;

/// Writes one event line to stdout and flushes it.
#[allow(clippy::print_stdout)]
pub fn emit(event: &str, fields: serde_json::Value) {
    let mut obj = serde_json::Map::new();
    obj.insert("event".into(), event.into());
    if let serde_json::Value::Object(m) = fields {
        obj.extend(m);
    }
    let line = serde_json::Value::Object(obj).to_string();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
