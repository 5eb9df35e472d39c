//! Reading a config: YAML text to a typed value (the one place `serde_yaml_ng` is called),
//! `--set` overrides, the sampling YAML, and paths made absolute against the config's folder.
//!
//! Text is bounded before it is parsed (see `limits`), and every number in the parsed tree
//! must be finite before it becomes a typed value.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::limits::{self, MAX_CONFIG_BYTES, MAX_NESTING};
use super::{Config, ConfigError, ResolvedConfig, SamplingConfig};

impl Config {
    /// Reads, overrides, resolves and validates a config file.
    ///
    /// # Errors
    /// Names the file and the key for unreadable files, malformed YAML, unknown keys, wrong types,
    /// bad overrides, a missing sampling file and every violated invariant.
    pub fn load(path: &Path, overrides: &[String]) -> Result<ResolvedConfig, ConfigError> {
        let source = path.display().to_string();
        let text = read_limited(path, &source)?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_yaml(&text, &source, &base_dir, overrides)
    }

    /// Parses a config from YAML text; `source` names it in errors, `base_dir` anchors
    /// relative paths.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_yaml(
        text: &str,
        source: &str,
        base_dir: &Path,
        overrides: &[String],
    ) -> Result<ResolvedConfig, ConfigError> {
        let mut value = parse_yaml(text, source)?;
        if value.is_null() {
            value = Value::Mapping(Default::default());
        }
        for ov in overrides {
            apply_override(&mut value, ov)?;
        }
        let keys: Vec<String> = match &value {
            Value::Mapping(m) => m
                .keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
            _ => vec![],
        };
        batch_fallbacks(&mut value, source)?;
        encoder_from_name(&mut value, source)?;
        let mut config: Config = from_value(value, source)?;
        if let Some(p) = config.sampling_configs_path.clone() {
            let file = resolve_relative(base_dir, &p).ok_or_else(|| ConfigError::Parse {
                path: source.to_string(),
                message: format!(
                    "sampling_configs_path: {p} not found relative to {} or the working directory",
                    base_dir.display()
                ),
            })?;
            config.sampling_configs = load_sampling_configs(&file)?;
            // The resolved config is self-contained: it is shipped to workers as bytes.
            config.sampling_configs_path = None;
        }
        // Paths relative to the config's folder become absolute, so the resolved config means
        // the same thing wherever it is read (workers, a resumed coordinator, `config check`).
        for p in [
            &mut config.data_path,
            &mut config.eval_data_path,
            &mut config.encoder_checkpoint,
            &mut config.tokenizer_name,
            &mut config.eval.gpt2,
        ]
        .into_iter()
        .flatten()
        {
            // As `resolve` does: beside the config, else from the working directory. A path
            // left relative would be resolved again by every reader of the resolved config
            // (workers run elsewhere), and hash differently there.
            if !p.contains("://") && Path::new(p.as_str()).is_relative() {
                let beside = base_dir.join(p.as_str());
                if let Ok(abs) = beside
                    .canonicalize()
                    .or_else(|_| Path::new(p.as_str()).canonicalize())
                {
                    *p = abs.display().to_string();
                }
            }
        }
        config.validate(source)?;
        Ok(ResolvedConfig {
            config,
            source: source.to_string(),
            base_dir: base_dir.to_path_buf(),
            keys,
        })
    }
}

/// The reference's batch fallbacks (spec §3.5): `batch_size` is per device (per worker here)
/// and `-1` or `null` means unset; a `global_batch_size` of `-1` or `null` is
/// `batch_size · cluster.workers`. The resolved config holds the number.
fn batch_fallbacks(value: &mut Value, source: &str) -> Result<(), ConfigError> {
    let Value::Mapping(m) = value else {
        return Ok(());
    };
    let unset = |v: Option<&Value>| match v {
        None => None,
        Some(Value::Null) => Some(true),
        Some(v) => Some(v.as_i64() == Some(-1)),
    };
    if unset(m.get("batch_size")) == Some(true) {
        m.insert("batch_size".into(), Value::Null);
    }
    if unset(m.get("global_batch_size")) != Some(true) {
        return Ok(());
    }
    let workers = m
        .get("cluster")
        .and_then(|c| c.get("workers"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let per = m
        .get("batch_size")
        .and_then(Value::as_u64)
        .ok_or_else(|| ConfigError::Parse {
            path: source.to_string(),
            message: "global_batch_size: -1/null needs a per-worker batch_size to derive it from"
                .into(),
        })?;
    m.insert("global_batch_size".into(), Value::from(per * workers));
    Ok(())
}

/// The reference picks the encoder's shape by `encoder_model_name`; so do we when the config
/// has no `encoder` section of its own (which, when present, is the shape).
fn encoder_from_name(value: &mut Value, source: &str) -> Result<(), ConfigError> {
    let Value::Mapping(m) = value else {
        return Ok(());
    };
    if m.contains_key("encoder") {
        return Ok(());
    }
    let Some(name) = m.get("encoder_model_name").and_then(Value::as_str) else {
        return Ok(());
    };
    let err = |message: String| ConfigError::Parse {
        path: source.to_string(),
        message,
    };
    let short = name.rsplit('/').next().unwrap_or(name);
    // (d_model, d_kv, num_heads, d_ff, num_layers) of the HF configs.
    let dims = match short {
        "t5-small" => (512, 64, 8, 2048, 6),
        "t5-base" => (768, 64, 12, 3072, 12),
        "t5-large" => (1024, 64, 16, 4096, 24),
        n if n.starts_with("t5-v1_1") || n.starts_with("t5-efficient") => {
            return Err(err(format!(
                "encoder_model_name: {name} has a gated-GELU feed-forward, which this build's T5 encoder does not have (t5-small, t5-base and t5-large do)"
            )));
        }
        _ => {
            return Err(err(format!(
                "encoder_model_name: unknown encoder {name:?} (t5-small, t5-base or t5-large; or give its shape in an `encoder` section)"
            )));
        }
    };
    let (d_model, d_kv, num_heads, d_ff, num_layers) = dims;
    let mut e = serde_yaml_ng::Mapping::new();
    for (k, v) in [
        ("d_model", d_model),
        ("d_kv", d_kv),
        ("num_heads", num_heads),
        ("d_ff", d_ff),
        ("num_layers", num_layers),
    ] {
        e.insert(k.into(), Value::from(v as u64));
    }
    m.insert("encoder".into(), Value::Mapping(e));
    Ok(())
}

/// Reads a config file of at most [`MAX_CONFIG_BYTES`] without reading more than that.
fn read_limited(path: &Path, source: &str) -> Result<String, ConfigError> {
    let io = |e| ConfigError::Io {
        path: source.to_string(),
        source: e,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        let len = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(ConfigError::Parse {
            path: source.to_string(),
            message: limits::too_large("config", len),
        });
    }
    String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// Parses YAML into a value within the size and nesting limits, naming the source in the error.
fn parse_yaml(text: &str, source: &str) -> Result<Value, ConfigError> {
    let err = |message| ConfigError::Parse {
        path: source.to_string(),
        message,
    };
    limits::check(text, "config").map_err(err)?;
    serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))
}

/// The only place YAML becomes a typed value: straight from the tree, so numbers stay numbers
/// (NaN and infinities included, which JSON cannot carry) and errors name the key path.
fn from_value<T: serde::de::DeserializeOwned>(
    value: Value,
    source: &str,
) -> Result<T, ConfigError> {
    check_finite(&value, &mut String::new()).map_err(|message| ConfigError::Parse {
        path: source.to_string(),
        message,
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = if key == "." {
            inner
        } else {
            format!("{key}: {inner}")
        };
        ConfigError::Parse {
            path: source.to_string(),
            message,
        }
    })
}

/// Refuses a NaN or infinite number anywhere in `value`; `path` is its key path (as
/// `serde_path_to_error` writes them: `train.x`, `sampling_configs[0].cfgs[1]`), and the error
/// names it. Every float of every section is covered, present and future.
fn check_finite(value: &Value, path: &mut String) -> Result<(), String> {
    let len = path.len();
    match value {
        Value::Number(n) if !n.is_finite() => {
            let key = if path.is_empty() { "." } else { path.as_str() };
            return Err(format!("{key}: must be a finite number, got {n}"));
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                let _ = write!(path, "[{i}]");
                check_finite(v, path)?;
                path.truncate(len);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(s) => path.push_str(s),
                    other => path.push_str(
                        serde_yaml_ng::to_string(other)
                            .unwrap_or_default()
                            .trim_end(),
                    ),
                }
                check_finite(v, path)?;
                path.truncate(len);
            }
        }
        Value::Tagged(t) => check_finite(&t.value, path)?,
        _ => {}
    }
    Ok(())
}

/// Applies one `key=value` override; dotted keys reach into sections (`train.max_steps=10`).
fn apply_override(root: &mut Value, ov: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Parse {
        path: "--set".into(),
        message,
    };
    if ov.len() > MAX_CONFIG_BYTES {
        return Err(err(limits::too_large("override", ov.len() as u64)));
    }
    let (key, raw) = ov
        .split_once('=')
        .ok_or_else(|| err(format!("{ov:?}: expected key=value")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(err(format!("{ov:?}: empty key")));
    }
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() > MAX_NESTING {
        return Err(err(format!(
            "{}...: key nests {} levels, deeper than {MAX_NESTING}",
            parts[0],
            parts.len()
        )));
    }
    let raw = raw.trim();
    let value: Value = if raw.eq_ignore_ascii_case("none") {
        Value::Null
    } else {
        limits::check(raw, "value").map_err(|e| err(format!("{key}: {e}")))?;
        serde_yaml_ng::from_str(raw).map_err(|e| err(format!("{key}: {e}")))?
    };
    check_finite(&value, &mut key.to_string()).map_err(err)?;
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let map = match cur {
            Value::Mapping(m) => m,
            Value::Null => {
                *cur = Value::Mapping(Default::default());
                match cur {
                    Value::Mapping(m) => m,
                    _ => unreachable!(),
                }
            }
            _ => {
                return Err(err(format!(
                    "{key}: {} is not a section",
                    parts[..i].join(".")
                )));
            }
        };
        let k = Value::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        cur = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

/// Resolves `p` against the config's folder first, then the working directory; `None` when it
/// exists in neither.
pub fn resolve_relative(base_dir: &Path, p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    let beside = base_dir.join(path);
    if beside.exists() {
        return Some(beside);
    }
    path.exists().then(|| path.to_path_buf())
}

/// Loads a sampling YAML: a list of entries (or a mapping with a `sampling_configs` list).
///
/// # Errors
/// Names the file and the bad key.
pub fn load_sampling_configs(path: &Path) -> Result<Vec<SamplingConfig>, ConfigError> {
    let source = path.display().to_string();
    let text = read_limited(path, &source)?;
    let mut value = parse_yaml(&text, &source)?;
    if let Value::Mapping(m) = &mut value
        && let Some(list) = m.remove("sampling_configs")
    {
        value = list;
    }
    from_value(value, &source)
}
