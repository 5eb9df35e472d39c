//! What a run leaves on disk, and the assertions on it.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::T;

/// Reads a JSONL file.
///
/// # Panics
/// On a missing file or a malformed line.
pub fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Reads a run's `final.safetensors` as `(name, values)`, sorted by name.
///
/// # Panics
/// On a missing or malformed file.
pub fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let path = dir.join("final.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = st.tensor(&n).expect("listed");
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, v)
        })
        .collect()
}

/// Asserts that two runs trained the same model: the same steps with losses within 1e-5
/// relative, and final parameters within 1e-4 of the largest parameter magnitude (world sizes
/// sum the same gradients in another order: measured ~1e-7 and ~1e-6 after 12 Muon steps).
///
/// # Panics
/// When they differ, naming the step or tensor.
pub fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (
        lines(&a.join("metrics/train.jsonl")),
        lines(&b.join("metrics/train.jsonl")),
    );
    assert_eq!(ta.len(), tb.len(), "{what}: steps");
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!(x["step"], y["step"]);
        let (p, q) = (
            x["loss"].as_f64().expect("loss"),
            y["loss"].as_f64().expect("loss"),
        );
        assert!(
            (p - q).abs() <= 1e-5 * q.abs(),
            "{what}: step {} loss {p} vs {q}",
            x["step"]
        );
    }
    let (pa, pb) = (params(a), params(b));
    let scale = pb
        .iter()
        .flat_map(|(_, v)| v)
        .fold(0f32, |m, x| m.max(x.abs()));
    for ((name, x), (_, y)) in pa.iter().zip(&pb) {
        let err = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err <= 1e-4 * scale, "{what}: {name} differs by {err}");
    }
}

/// Checks a Prometheus exposition with `promtool check metrics`.
///
/// # Panics
/// When promtool is missing or rejects the text.
pub fn promtool(text: &str) {
    use std::io::Write;
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: .ci/run installs it");
    p.stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("promtool reads");
    let o = p.wait_with_output().expect("promtool runs");
    assert!(
        o.status.success(),
        "promtool rejected:\n{}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Waits until `ok` holds, polling.
///
/// # Panics
/// After [`T`].
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
