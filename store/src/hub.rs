//! Hugging Face hub ids wherever a path is accepted: `org/name[@revision][/path/in/repo]`,
//! resolved to a local file or folder in the hub's own cache, with the hub's conventions:
//!
//! * `HF_ENDPOINT` (default `https://huggingface.co`): the server;
//! * `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`: the cache, laid out
//!   as the Python client lays it out (`models--org--name/refs/<revision>` holding the commit,
//!   `snapshots/<commit>/<path>`), so a cache filled by either client serves the other (ours
//!   writes plain files where Python writes links into `blobs/`);
//! * `HF_TOKEN` (else the `HF_HOME/token` file): a bearer token for private and gated repos;
//! * `HF_HUB_OFFLINE=1`: no request at all; the cache answers, or the error names what is not in it.
//!
//! The revision (a branch, tag or commit; default `main`) is resolved once to its commit, and
//! everything is read at that commit: [`Resolved::revision`] is what a run records. Downloads
//! go to `<file>.incomplete` beside their destination and resume from its length with a range
//! request; a file appears under its name only once complete.
//!
//! A spec is a hub id only when it is not a local path that exists, not a URL, and has the
//! `org/name` shape (as the reference decides: a path that exists locally is used as is).

use std::io::Write;
use std::path::{Path, PathBuf};

/// What kind of repo an id names (the hub keeps them in separate namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repo (checkpoints, encoders, scorers).
    Model,
    /// A dataset repo (`data_path`, `eval_data_path`).
    Dataset,
}

impl RepoKind {
    fn plural(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }
}

/// A hub id resolved to the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The local file or folder.
    pub path: PathBuf,
    /// `org/name`.
    pub repo: String,
    /// The commit everything was read at.
    pub revision: String,
}

/// A hub failure, naming the repo, file or setting.
#[derive(Debug, thiserror::Error)]
#[error("{id}: {message}")]
pub struct HubError {
    /// The id as given.
    pub id: String,
    /// What went wrong.
    pub message: String,
}

/// The parts of an id.
#[derive(Debug, PartialEq)]
struct Id<'a> {
    repo: String,
    revision: &'a str,
    sub: &'a str,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses `org/name[@revision][/sub/path]`; `None` when the spec does not have that shape.
fn parse(spec: &str) -> Option<Id<'_>> {
    if spec.contains("://") || spec.starts_with('/') || spec.starts_with('.') {
        return None;
    }
    let mut parts = spec.splitn(3, '/');
    let org = parts.next()?;
    let name_rev = parts.next()?;
    let sub = parts.next().unwrap_or("");
    let (name, revision) = match name_rev.split_once('@') {
        Some((n, r)) => (n, r),
        None => (name_rev, "main"),
    };
    let sub_ok = sub
        .split('/')
        .all(|p| p.is_empty() || (p != ".." && p != "."));
    (name_ok(org) && name_ok(name) && name_ok(revision) && sub_ok).then(|| Id {
        repo: format!("{org}/{name}"),
        revision,
        sub: sub.trim_end_matches('/'),
    })
}

/// Returns true when `spec` would be resolved through the hub: not an existing local path, not
/// a URL, and of the `org/name[...]` shape.
pub fn is_hub_id(spec: &str) -> bool {
    !Path::new(spec).exists() && parse(spec).is_some()
}

struct Settings {
    endpoint: String,
    cache: PathBuf,
    token: Option<String>,
    offline: bool,
}

impl Settings {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache/huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache,
            token,
            offline,
        }
    }
}

/// Resolves a hub id to a local file or folder at one commit, downloading what the cache lacks.
///
/// # Errors
/// A spec that is not a hub id, an unknown repo, revision or file, a private repo without a
/// token (naming `HF_TOKEN`), a file missing from the cache in offline mode, or a transfer or
/// cache write that failed (naming the file).
pub fn resolve(spec: &str, kind: RepoKind) -> Result<Resolved, HubError> {
    let err = |message: String| HubError {
        id: spec.to_string(),
        message,
    };
    let id = parse(spec).ok_or_else(|| err("not a hub id (org/name[@revision][/path])".into()))?;
    let s = Settings::from_env();
    let repo_dir = s
        .cache
        .join(format!("{}--{}", kind.plural(), id.repo.replace('/', "--")));
    let is_commit = id.revision.len() == 40 && id.revision.chars().all(|c| c.is_ascii_hexdigit());
    if s.offline {
        let commit = if is_commit {
            id.revision.to_string()
        } else {
            let r = repo_dir.join("refs").join(id.revision);
            std::fs::read_to_string(&r)
                .map(|c| c.trim().to_string())
                .map_err(|_| {
                    err(format!(
                        "HF_HUB_OFFLINE is set and the cache has no revision {} ({} is missing)",
                        id.revision,
                        r.display()
                    ))
                })?
        };
        let path = repo_dir.join("snapshots").join(&commit).join(id.sub);
        if !path.exists() {
            return Err(err(format!(
                "HF_HUB_OFFLINE is set and the cache has no {} at {commit} ({} is missing)",
                if id.sub.is_empty() {
                    "snapshot"
                } else {
                    id.sub
                },
                path.display()
            )));
        }
        return Ok(Resolved {
            path,
            repo: id.repo,
            revision: commit,
        });
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| err(format!("HTTP client: {e}")))?;
    let auth = |r: reqwest::RequestBuilder| match &s.token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let api = format!(
        "{}/api/{}/{}/revision/{}",
        s.endpoint,
        kind.plural(),
        id.repo,
        id.revision
    );
    let rt = crate::location::runtime();
    let info: serde_json::Value = rt.block_on(async {
        let resp = auth(client.get(&api))
            .send()
            .await
            .map_err(|e| err(format!("{api}: {e}")))?;
        match resp.status().as_u16() {
            200 => {
                let body = resp.bytes().await.map_err(|e| err(format!("{api}: {e}")))?;
                serde_json::from_slice(&body).map_err(|e| err(format!("{api}: not JSON: {e}")))
            }
            401 | 403 => Err(err(format!(
                "{api}: {} (a private or gated repo: set HF_TOKEN{})",
                resp.status(),
                if s.token.is_some() {
                    "; the one set is refused"
                } else {
                    ""
                }
            ))),
            404 => Err(err(format!(
                "{api}: no {} repo {} at revision {} (404)",
                &kind.plural()[..kind.plural().len() - 1],
                id.repo,
                id.revision
            ))),
            _ => Err(err(format!("{api}: {}", resp.status()))),
        }
    })?;
    let commit = info["sha"]
        .as_str()
        .filter(|c| c.len() == 40 && c.chars().all(|x| x.is_ascii_hexdigit()))
        .ok_or_else(|| err(format!("{api}: the answer has no commit sha")))?
        .to_string();
    let files: Vec<String> = info["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["rfilename"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let wanted: Vec<&String> = files
        .iter()
        .filter(|f| {
            id.sub.is_empty()
                || f.as_str() == id.sub
                || f.strip_prefix(id.sub).is_some_and(|r| r.starts_with('/'))
        })
        .collect();
    if wanted.is_empty() {
        return Err(err(format!(
            "{}@{commit} has no file or folder {:?}",
            id.repo, id.sub
        )));
    }
    let snapshot = repo_dir.join("snapshots").join(&commit);
    let write_err = |p: &Path, e: std::io::Error| err(format!("{}: {e}", p.display()));
    for f in wanted {
        if f.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(err(format!("the repo lists an unsafe file name {f:?}")));
        }
        let dst = snapshot.join(f);
        if dst.exists() {
            continue;
        }
        let prefix = if kind == RepoKind::Dataset {
            "/datasets"
        } else {
            ""
        };
        let url = format!("{}{prefix}/{}/resolve/{commit}/{f}", s.endpoint, id.repo);
        download(&client, &s.token, &url, &dst).map_err(|m| err(format!("{f}: {m}")))?;
    }
    let refs = repo_dir.join("refs");
    if !is_commit {
        std::fs::create_dir_all(&refs).map_err(|e| write_err(&refs, e))?;
        let r = refs.join(id.revision);
        std::fs::write(&r, &commit).map_err(|e| write_err(&r, e))?;
    }
    tracing::info!(repo = %id.repo, revision = id.revision, commit = %commit, "hub id resolved");
    Ok(Resolved {
        path: snapshot.join(id.sub),
        repo: id.repo,
        revision: commit,
    })
}

/// Downloads `url` to `dst` through `dst.incomplete`, resuming from what is already there.
fn download(
    client: &reqwest::Client,
    token: &Option<String>,
    url: &str,
    dst: &Path,
) -> Result<(), String> {
    let parent = dst.parent().expect("a snapshot file has a folder");
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let part = dst.with_extension(match dst.extension() {
        Some(e) => format!("{}.incomplete", e.to_string_lossy()),
        None => "incomplete".into(),
    });
    let have = std::fs::metadata(&part).map_or(0, |m| m.len());
    crate::location::runtime().block_on(async {
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let mut resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            401 | 403 => return Err(format!("{url}: {} (set HF_TOKEN)", resp.status())),
            _ => return Err(format!("{url}: {}", resp.status())),
        };
        let total = resp
            .content_length()
            .map(|n| n + if append { have } else { 0 });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&part)
            .map_err(|e| format!("{}: {e}", part.display()))?;
        let bar = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(
            dst.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        bar.set_position(if append { have } else { 0 });
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            file.write_all(&chunk)
                .map_err(|e| format!("{}: {e}", part.display()))?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        file.sync_all()
            .map_err(|e| format!("{}: {e}", part.display()))?;
        let got = std::fs::metadata(&part).map_or(0, |m| m.len());
        if let Some(t) = total
            && got != t
        {
            return Err(format!(
                "{url}: the transfer ended at {got} of {t} bytes (run again to resume)"
            ));
        }
        std::fs::rename(&part, dst).map_err(|e| format!("{}: {e}", dst.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_org_name_shape() {
        assert_eq!(
            parse("embedded-language-flows/ELF-B-owt"),
            Some(Id {
                repo: "embedded-language-flows/ELF-B-owt".into(),
                revision: "main",
                sub: ""
            })
        );
        assert_eq!(
            parse("org/t5@v1.0/sub/model.safetensors"),
            Some(Id {
                repo: "org/t5".into(),
                revision: "v1.0",
                sub: "sub/model.safetensors"
            })
        );
        for not in [
            "s3://bucket/key",
            "/abs/path",
            "./rel/path",
            "file.jsonl",
            "org/../x",
            "a b/c",
            "org/name/../../etc",
        ] {
            assert_eq!(parse(not), None, "{not}");
        }
    }
}
