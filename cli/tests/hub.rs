//! Hub ids wherever a path is accepted, against a local server that serves the hub's layout
//! (`/api/{models,datasets}/<repo>/revision/<rev>`, `[/datasets]/<repo>/resolve/<commit>/<file>`,
//! range requests, bearer tokens): a model repo (`elf import`), a dataset repo (`data_path` of
//! `elf train`), a private repo needing `HF_TOKEN` (`elf eval --gpt2`), the offline mode, and a
//! download resumed from its `.incomplete` part. Nothing leaves loopback.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use elf_e2e::{err_line, ok};

mod common;
use common::{corpus_rows, flax_state};

fn root() -> PathBuf {
    elf_e2e::repo_root()
}

const TOKEN: &str = "hf_test_secret";

/// One repo: its kind (`models` or `datasets`), commit, files, and whether it needs the token.
struct Repo {
    kind: &'static str,
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
    private: bool,
}

/// Each request's path and `Range` header.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A hub-shaped HTTP/1.1 server on loopback; every request is logged.
struct Hub {
    url: String,
    log: Log,
}

fn serve(repos: BTreeMap<String, Repo>) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::new(Mutex::new(vec![]));
    let repos = Arc::new(repos);
    let l = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (repos, log) = (repos.clone(), l.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let (mut range, mut auth) = (None, None);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                    match k.trim().to_ascii_lowercase().as_str() {
                        "range" => range = Some(v.trim().to_string()),
                        "authorization" => auth = Some(v.trim().to_string()),
                        _ => {}
                    }
                }
                log.lock().unwrap().push((path.clone(), range.clone()));
                let (status, body, extra) = answer(&repos, &path, range, auth);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
                let _ = r.read(&mut [0u8; 0]);
            });
        }
    });
    Hub { url, log }
}

fn answer(
    repos: &BTreeMap<String, Repo>,
    path: &str,
    range: Option<String>,
    auth: Option<String>,
) -> (&'static str, Vec<u8>, String) {
    let not_found = (
        "404 Not Found",
        b"{\"error\":\"not found\"}".to_vec(),
        String::new(),
    );
    let authorised =
        |repo: &Repo| !repo.private || auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
    // /api/<kind>/<org>/<name>/revision/<rev>
    if let Some(rest) = path.strip_prefix("/api/") {
        let p: Vec<&str> = rest.split('/').collect();
        let [kind, org, name, "revision", _rev] = p[..] else {
            return not_found;
        };
        let Some(repo) = repos
            .get(&format!("{org}/{name}"))
            .filter(|r| r.kind == kind)
        else {
            return not_found;
        };
        if !authorised(repo) {
            return ("401 Unauthorized", b"{}".to_vec(), String::new());
        }
        let siblings: Vec<_> = repo
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({"sha": repo.commit, "siblings": siblings});
        return ("200 OK", body.to_string().into_bytes(), String::new());
    }
    // [/datasets]/<org>/<name>/resolve/<commit>/<file...>
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => ("datasets", r),
        None => ("models", &path[1..]),
    };
    let p: Vec<&str> = rest.splitn(5, '/').collect();
    let [org, name, "resolve", commit, file] = p[..] else {
        return not_found;
    };
    let Some(repo) = repos
        .get(&format!("{org}/{name}"))
        .filter(|r| r.kind == kind)
    else {
        return not_found;
    };
    if !authorised(repo) {
        return ("401 Unauthorized", vec![], String::new());
    }
    let Some(bytes) = repo.files.get(file).filter(|_| commit == repo.commit) else {
        return not_found;
    };
    match range.and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    }) {
        Some(from) => (
            "206 Partial Content",
            bytes[from..].to_vec(),
            format!(
                "Content-Range: bytes {from}-{}/{}\r\n",
                bytes.len() - 1,
                bytes.len()
            ),
        ),
        None => ("200 OK", bytes.clone(), String::new()),
    }
}

/// Runs `elf` against the hub at `hub` with the cache under `home` (and `env` on top).
fn elf(hub: &Hub, home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_elf"));
    c.args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn hub_ids_resolve_through_the_cache_with_tokens_offline_mode_and_resumed_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let state = flax_state(&tmp.path().join("flax"), &[]);
    let rows = corpus_rows(32);
    let gpt2 = root().join("model/tests/fixtures/gpt2");
    let gpt2_files: BTreeMap<String, Vec<u8>> =
        ["config.json", "model.safetensors", "tokenizer.json"]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(gpt2.join(f)).unwrap()))
            .collect();
    let commit = |c: char| std::iter::repeat_n(c, 40).collect::<String>();
    let hub = serve(BTreeMap::from([
        (
            "elf-test/ELF-T-flax".to_string(),
            Repo {
                kind: "models",
                commit: commit('a'),
                // The legacy flax writer names its files checkpoint_<step>.
                files: BTreeMap::from([("checkpoint_2".to_string(), state.clone())]),
                private: false,
            },
        ),
        (
            "elf-test/tiny-text".to_string(),
            Repo {
                kind: "datasets",
                commit: commit('b'),
                files: BTreeMap::from([("data/train.jsonl".to_string(), rows.into_bytes())]),
                private: false,
            },
        ),
        (
            "elf-test/private-gpt2".to_string(),
            Repo {
                kind: "models",
                commit: commit('c'),
                files: gpt2_files,
                private: true,
            },
        ),
    ]));
    let home = tmp.path().join("hf");

    // A model repo: the whole repo resolves to its highest checkpoint_<step>.
    let ckpts = tmp.path().join("imported");
    let stdout = ok(&elf(
        &hub,
        &home,
        &[],
        &[
            "import",
            "elf-test/ELF-T-flax",
            "--config",
            "configs/tiny.yaml",
            "--out",
            ckpts.to_str().unwrap(),
        ],
    ));
    assert!(stdout.contains("committed step 1"), "{stdout}");
    let snapshot = home.join(format!(
        "hub/models--elf-test--ELF-T-flax/snapshots/{}",
        commit('a')
    ));
    assert_eq!(std::fs::read(snapshot.join("checkpoint_2")).unwrap(), state);
    assert_eq!(
        std::fs::read_to_string(home.join("hub/models--elf-test--ELF-T-flax/refs/main")).unwrap(),
        commit('a')
    );

    // A dataset repo as data_path: the run trains on it, and its resolved config names the
    // commit it read.
    let run = tmp.path().join("run");
    ok(&elf(
        &hub,
        &home,
        &[],
        &[
            "train",
            "--config",
            "configs/tiny.yaml",
            "--set",
            "data_path=elf-test/tiny-text/data/train.jsonl",
            "--set",
            "train.max_steps=2",
            "--run-dir",
            run.to_str().unwrap(),
        ],
    ));
    let cfg = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        cfg.contains(&format!(
            "datasets--elf-test--tiny-text/snapshots/{}/data/train.jsonl",
            commit('b')
        )),
        "{cfg}"
    );

    // A private repo: refused without the token, naming HF_TOKEN; read with it.
    let eval = |env: &[(&str, &str)]| {
        elf(
            &hub,
            &home,
            env,
            &[
                "eval",
                "--checkpoint",
                ckpts.to_str().unwrap(),
                "--gpt2",
                "elf-test/private-gpt2",
                "--num-samples",
                "2",
                "--out",
                tmp.path().join("eval").to_str().unwrap(),
            ],
        )
    };
    let e = err_line(&eval(&[]));
    assert!(
        e.contains("--gpt2") && e.contains("401") && e.contains("HF_TOKEN"),
        "{e}"
    );
    let stdout = ok(&eval(&[("HF_TOKEN", TOKEN)]));
    assert!(stdout.contains("gen-ppl"), "{stdout}");

    // Offline: the cache answers without a request; what it lacks is a clear error.
    let before = hub.log.lock().unwrap().len();
    let offline = [("HF_HUB_OFFLINE", "1")];
    let again = tmp.path().join("offline");
    ok(&elf(
        &hub,
        &home,
        &offline,
        &[
            "import",
            "elf-test/ELF-T-flax",
            "--config",
            "configs/tiny.yaml",
            "--out",
            again.to_str().unwrap(),
        ],
    ));
    let e = err_line(&elf(
        &hub,
        &home,
        &offline,
        &[
            "import",
            "elf-test/ELF-T-flax/checkpoint_9",
            "--config",
            "configs/tiny.yaml",
            "--out",
            again.to_str().unwrap(),
        ],
    ));
    assert!(
        e.contains("HF_HUB_OFFLINE is set and the cache has no checkpoint_9"),
        "{e}"
    );
    assert_eq!(
        hub.log.lock().unwrap().len(),
        before,
        "offline mode made a request"
    );

    // An interrupted download resumes from its .incomplete part with a range request.
    let fresh = tmp.path().join("hf2");
    let part = fresh.join(format!(
        "hub/models--elf-test--ELF-T-flax/snapshots/{}/checkpoint_2.incomplete",
        commit('a')
    ));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let half = state.len() / 2;
    std::fs::write(&part, &state[..half]).unwrap();
    ok(&elf(
        &hub,
        &fresh,
        &[],
        &[
            "import",
            "elf-test/ELF-T-flax",
            "--config",
            "configs/tiny.yaml",
            "--out",
            tmp.path().join("resumed").to_str().unwrap(),
        ],
    ));
    assert!(
        hub.log
            .lock()
            .unwrap()
            .iter()
            .any(|(p, r)| p.ends_with("/checkpoint_2")
                && r.as_deref() == Some(&format!("bytes={half}-"))),
        "no range request"
    );
    assert_eq!(
        std::fs::read(part.with_file_name("checkpoint_2")).unwrap(),
        state
    );
    assert!(!part.exists());

    // An unknown repo is named.
    let e = err_line(&elf(
        &hub,
        &home,
        &[],
        &[
            "import",
            "elf-test/nope",
            "--config",
            "configs/tiny.yaml",
            "--out",
            again.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("elf-test/nope") && e.contains("404"), "{e}");
}
