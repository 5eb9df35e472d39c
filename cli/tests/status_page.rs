//! The coordinator's status page in a real browser (Debian's headless `chromium`) against a
//! real three-worker cluster: the page updates live, the step advances, a worker killed
//! mid-run turns up as evicted with its reason, and the page asks nothing of any address but
//! the coordinator's. Alongside, the operator metrics the same run exports: `promtool` accepts
//! them, goodput counts the redone step as badput, and MFU is the FLOP count of
//! `scripts/bench/flops.py` over the measured throughput.
//!
//! Without chromium the browser part is skipped with a message, unless `ELF_REQUIRE_CHROMIUM=1`
//! (set by `.ci/run`), where a missing browser fails the test.

use std::path::PathBuf;
use std::process::Command;

use elf_e2e::browser::{self, Visit};
use elf_e2e::process::http_get;
use elf_e2e::{Elf, FT, T, promtool, repo_root, serial, wait_for};
use serde_json::Value;

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

/// Peak FLOP/s per worker given to the coordinator (any positive number: MFU scales by it).
const PEAK: f64 = 1e11;

/// The step at which worker w2 kills itself mid-step (the first page visit comes long before).
const KILL_AT: u64 = 60;

/// Virtual milliseconds a visit lets the page run (the page polls `/status` every second).
const WAIT_MS: u64 = 3000;

/// The text of the element with `id` in a dumped DOM (the element holds text only).
fn text_of(dom: &str, id: &str) -> String {
    let key = format!("id=\"{id}\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no element id={id} in the page\n{dom}"));
    let open = at + dom[at..].find('>').expect("a closed tag") + 1;
    let close = open + dom[open..].find('<').expect("an end tag");
    dom[open..close].to_string()
}

/// The number in the element with `id`.
fn number_of(dom: &str, id: &str) -> u64 {
    let t = text_of(dom, id);
    t.parse()
        .unwrap_or_else(|e| panic!("id={id} holds {t:?}, not a step: {e}"))
}

/// How many times the page has rendered a `/status` answer.
fn refreshes(dom: &str) -> u64 {
    let at = dom.find("id=\"updated\"").expect("the updated element");
    let tag = &dom[dom[..at].rfind('<').unwrap()..at + dom[at..].find('>').unwrap()];
    let key = "data-refreshes=\"";
    let v = &tag[tag.find(key).expect("data-refreshes") + key.len()..];
    v[..v.find('"').unwrap()].parse().expect("a count")
}

/// Loads the page and checks it stayed on the coordinator's origin.
fn look(http: &str, screenshot: Option<&std::path::Path>) -> Visit {
    let origin = format!("http://{http}");
    let v = browser::visit(&format!("{origin}/"), WAIT_MS, screenshot).expect("chromium visit");
    let outside = browser::requests_outside(&v.requests, &origin);
    assert!(
        outside.is_empty(),
        "the page asked for addresses other than the coordinator's: {outside:?}"
    );
    assert!(
        v.requests.iter().any(|r| r.ends_with("/status")),
        "the page never fetched /status: {:?}",
        v.requests
    );
    assert!(
        refreshes(&v.dom) >= 2,
        "the page did not refresh live\n{}",
        v.dom
    );
    v
}

fn status(http: &str) -> Value {
    serde_json::from_str(&http_get(http, "/status")).expect("/status is JSON")
}

/// The metric samples of an exposition whose series starts with `prefix` (`name{labels}`).
fn samples(text: &str, prefix: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .expect("a sample value")
        })
        .collect()
}

fn sample(text: &str, series: &str) -> f64 {
    let v = samples(text, series);
    assert_eq!(v.len(), 1, "{series}: {v:?}\n{text}");
    v[0]
}

/// Model FLOPs per token of `configs/tiny.yaml` from `scripts/bench/flops.py` itself
/// (L=32; ELF-T at hidden 32, depth 2: FFN int(int(4*32)*2/3); encoder d 32, 4x8 heads, d_ff
/// 64, 2 layers; bottleneck 32; 12 prefix tokens; decoder_prob 0.2).
fn tiny_flops_per_token() -> f64 {
    let script = "import sys; sys.path.insert(0, 'scripts/bench'); import flops; \
        print(repr(flops.elf_train_flops(L=32, n_prefix=12, d=32, depth=2, \
        ffn_inner=int(int(32*4)*2/3), enc_dim=32, bottleneck=32, vocab=32100, enc_inner=32, \
        enc_ff=64, enc_layers=2, decoder_prob=0.2)['required']['expected']))";
    let o = Command::new("python3")
        .args(["-c", script])
        .current_dir(repo_root())
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn chromium_present() -> bool {
    match browser::chromium() {
        Ok(_) => true,
        Err(e) if std::env::var("ELF_REQUIRE_CHROMIUM").as_deref() != Ok("1") => {
            eprintln!("skipping the browser part: {e}");
            false
        }
        Err(e) => panic!("{e} (ELF_REQUIRE_CHROMIUM=1)"),
    }
}

#[test]
fn the_status_page_follows_a_run_that_loses_a_worker() {
    let _serial = serial();
    let with_browser = chromium_present();
    let tmp = tempfile::tempdir().unwrap();
    let peak = PEAK.to_string();
    let mut extra: Vec<&str> = FT.to_vec();
    extra.extend([
        "--set",
        "checkpoint.interval_steps=25",
        "--peak-flops",
        &peak,
    ]);
    // Long enough to outlast the test; the processes are killed when it ends. Worker w2
    // SIGKILLs itself at step KILL_AT before its first ring exchange, so no survivor can apply
    // that step: the new quorum must redo it.
    let fault = format!("kill@{KILL_AT}:0");
    let mut run = ELF.cluster_env(tmp.path(), 3, 100_000, &extra, &[], &|i| {
        if i == 2 {
            vec![("ELF_FAILPOINT_RING", fault.clone())]
        } else {
            vec![]
        }
    });
    let (_, http) = run.addresses();
    let page = http_get(&http, "/");
    assert!(
        page.contains("Content-Security-Policy") && !page.contains("src=\"http"),
        "the page is not self-contained"
    );
    run.coordinator.wait_event("step", T);

    // Before the kill, three workers: MFU is the flops.py count over the measured rate.
    wait_for("a few steps", || {
        status(&http)["progress"]["committed_steps"]
            .as_u64()
            .is_some_and(|s| s >= 4)
    });
    let s = status(&http);
    assert_eq!(s["state"], "training", "{s}");
    assert_eq!(s["quorum"]["world_size"], 3, "{s}");
    let p = &s["progress"];
    let (rate, flops, mfu) = (
        p["tokens_per_s"].as_f64().unwrap(),
        p["model_flops_per_s"].as_f64().unwrap(),
        p["mfu"].as_f64().unwrap(),
    );
    let per_token = tiny_flops_per_token();
    assert!(
        (flops / rate / per_token - 1.0).abs() < 1e-9,
        "FLOP/s {flops} over tokens/s {rate} is not flops.py's {per_token} per token"
    );
    assert!(
        (mfu * 3.0 * PEAK / flops - 1.0).abs() < 1e-9,
        "mfu {mfu} is not {flops} / (3 x {PEAK})"
    );
    for w in s["workers"].as_array().unwrap() {
        assert!(w["rank"].is_u64(), "a member without a rank: {w}");
        assert!(
            w["last_timings"]["compute_seconds"].as_f64().unwrap() > 0.0,
            "{w}"
        );
        assert!(w["straggler_ratio"].as_f64().unwrap() > 0.0, "{w}");
    }

    // The page follows the run.
    let mut first_step = 0;
    if with_browser {
        let a = look(&http, None);
        first_step = number_of(&a.dom, "step");
        assert!(first_step < KILL_AT, "the first visit came after the kill");
        assert_eq!(text_of(&a.dom, "state"), "training");
        for w in ["w0", "w1", "w2"] {
            assert!(
                a.dom
                    .contains(&format!("data-worker=\"{w}\" data-state=\"member\""))
                    || a.dom
                        .contains(&format!("data-worker=\"{w}\" data-state=\"straggler\"")),
                "no member row for {w}\n{}",
                a.dom
            );
        }
        let b = look(&http, None);
        assert!(
            number_of(&b.dom, "step") > first_step,
            "the step did not advance between two visits"
        );
    }

    // w2 kills itself mid-run; the survivors evict it, redo the step and carry on.
    let code = run.workers[2].wait_exit(T);
    assert!(!code.success(), "w2 was not killed: {code}");
    assert!(run.workers[2].logs().contains("failpoint: ring fault"));
    wait_for("w2 among the departed", || {
        status(&http)["departed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["worker"] == "w2" && d["how"] == "evicted")
    });
    wait_for("steps after the eviction", || {
        let s = status(&http);
        s["quorum"]["world_size"] == 2
            && s["progress"]["committed_steps"].as_u64().unwrap() >= KILL_AT + 4
    });
    let s = status(&http);
    let gone = s["departed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["worker"] == "w2")
        .unwrap()
        .clone();
    let cause = gone["cause"].as_str().unwrap().to_string();
    let reason = gone["reason"].as_str().unwrap().to_string();
    assert!(
        ["heartbeat_timeout", "worker_failed"].contains(&cause.as_str()) && !reason.is_empty(),
        "{gone}"
    );
    let kinds: Vec<&str> = s["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    for k in ["quorum", "evicted", "redone"] {
        assert!(kinds.contains(&k), "no {k} in the timeline: {kinds:?}");
    }

    // Goodput: the step lost with w2 was redone, and counted as badput; so was the healing.
    let g = &s["goodput"];
    let bad = |c: &str| g["badput_seconds"][c].as_f64().unwrap_or(0.0);
    assert!(bad("redone_steps") > 0.0, "{g}");
    assert!(bad("healing") > 0.0, "{g}");
    assert!(bad("startup") > 0.0, "{g}");
    assert!(g["goodput_seconds"].as_f64().unwrap() > 0.0, "{g}");

    if with_browser {
        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        let c = look(&http, Some(&shot));
        assert!(number_of(&c.dom, "step") > first_step);
        assert!(
            c.dom.contains("data-worker=\"w2\" data-state=\"evicted\""),
            "w2 is not shown as evicted\n{}",
            c.dom
        );
        let shown = format!("evicted ({})", cause.replace('_', " "));
        assert!(
            c.dom.contains(&shown),
            "no {shown:?} on the page\n{}",
            c.dom
        );
        assert!(
            c.dom.contains(&html_escape(&reason)),
            "the eviction's reason {reason:?} is not on the page"
        );
        for k in ["evicted", "redone"] {
            assert!(
                c.dom.contains(&format!("data-kind=\"{k}\"")),
                "no {k} event on the page's timeline"
            );
        }
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
        eprintln!("screenshot: {}", shot.display());
    }

    // The metrics operators scrape.
    let m = http_get(&http, "/metrics");
    promtool(&m);
    for name in [
        "elf_build_info{",
        "elf_run_info{",
        "elf_step_duration_seconds_bucket{",
        "elf_allreduce_duration_seconds_bucket{",
        "elf_tokens_total ",
        "elf_mfu_ratio ",
        "elf_progress_ratio ",
        "elf_eta_seconds ",
        "elf_goodput_ratio ",
        "elf_straggler_ratio{rank=\"0\"}",
        "elf_straggler_ratio{rank=\"1\"}",
    ] {
        assert!(!samples(&m, name).is_empty(), "no {name} in /metrics\n{m}");
    }
    assert!(samples(&m, "elf_straggler_ratio{rank=\"2\"}").is_empty());
    assert_eq!(
        sample(&m, &format!("elf_evictions_total{{cause=\"{cause}\"}}")),
        1.0
    );
    assert!(sample(&m, "elf_steps_redone_total ") >= 1.0);
    assert!(sample(&m, "elf_quorum_changes_total{cause=\"peer_lost\"}") >= 1.0);
    assert!(sample(&m, "elf_badput_seconds_total{cause=\"redone_steps\"}") > 0.0);
    let steps = sample(&m, "elf_steps_committed_total ");
    let tokens = sample(&m, "elf_tokens_total ");
    assert_eq!(
        tokens,
        steps * 24.0 * 32.0,
        "tokens = steps x batch 24 x L 32"
    );
}

/// The page's escaping of text (`esc` in status.html) for the characters a reason can hold.
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
