//! Reading a config: YAML text to a typed value (the one place `serde_yaml_ng` is called),
//! `--set` overrides, the sampling YAML, and paths made absolute against the config's folder.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::{Config, ConfigError, ResolvedConfig, SamplingConfig};

impl Config {
    /// Reads, overrides, resolves and validates a config file.
    ///
    /// # Errors
    /// Names the file and the key for unreadable files, malformed YAML, unknown keys, wrong types,
    /// bad overrides, a missing sampling file and every violated invariant.
    pub fn load(path: &Path, overrides: &[String]) -> Result<ResolvedConfig, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source_err| ConfigError::Io {
            path: source.clone(),
            source: source_err,
        })?;
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
        })
    }
}

/// Parses YAML into a value, naming the source in the error.
fn parse_yaml(text: &str, source: &str) -> Result<Value, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        path: source.to_string(),
        message: e.to_string(),
    })
}

/// The only place YAML becomes a typed value.
fn from_value<T: serde::de::DeserializeOwned>(
    value: Value,
    source: &str,
) -> Result<T, ConfigError> {
    // Through JSON text, because serde_yaml_ng's `Value` deserializer does not report key paths.
    let text = serde_json::to_string(&value).map_err(|e| ConfigError::Parse {
        path: source.to_string(),
        message: e.to_string(),
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let key = e.path().to_string();
        // Drop serde_json's "at line 1 column N": positions in the JSON re-encoding mean nothing.
        let inner = e.inner().to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
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

/// Applies one `key=value` override; dotted keys reach into sections (`train.max_steps=10`).
fn apply_override(root: &mut Value, ov: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Parse {
        path: "--set".into(),
        message,
    };
    let (key, raw) = ov
        .split_once('=')
        .ok_or_else(|| err(format!("{ov:?}: expected key=value")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(err(format!("{ov:?}: empty key")));
    }
    let raw = raw.trim();
    let value: Value = if raw.eq_ignore_ascii_case("none") {
        Value::Null
    } else {
        serde_yaml_ng::from_str(raw).map_err(|e| err(format!("{key}: {e}")))?
    };
    let parts: Vec<&str> = key.split('.').collect();
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
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        path: source.clone(),
        source: e,
    })?;
    let mut value = parse_yaml(&text, &source)?;
    if let Value::Mapping(m) = &mut value
        && let Some(list) = m.remove("sampling_configs")
    {
        value = list;
    }
    from_value(value, &source)
}
