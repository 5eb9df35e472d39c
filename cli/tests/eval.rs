//! Evaluation end to end: `elf sample` and `elf eval` on a checkpoint written by a real tiny
//! training run (unconditional generation scored by a GPT-2, the random one of
//! scripts/reference; conditional generation scored by BLEU/ROUGE on the committed de-en
//! pairs; the bad-input errors), and the coordinator's eval jobs during training. The tests
//! run one at a time: the eval-jobs test is a cluster of its own.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::Value;

fn root() -> PathBuf {
    elf_e2e::repo_root()
}

fn elf(args: &[&str]) -> Output {
    elf_e2e::run_in_repo(env!("CARGO_BIN_EXE_elf"), args)
}

use elf_e2e::{Elf, T, err_line, http_get, lines, ok, promtool, repo_root, serial};

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

/// A tiny run with checkpoints at steps 9 and 19 (shared by the tests).
fn run() -> &'static Path {
    static RUN: OnceLock<tempfile::TempDir> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        ok(&elf(&[
            "train",
            "--config",
            "configs/tiny.yaml",
            "--workers",
            "1",
            "--run-dir",
            dir.path().to_str().unwrap(),
            "--set",
            "checkpoint.interval_steps=10",
            // Eval jobs on rank 0 between steps: metrics/eval.jsonl for the plot.
            "--set",
            "eval.every_checkpoints=1",
            "--set",
            "eval.num_samples=2",
            "--set",
            "eval.gpt2=model/tests/fixtures/gpt2",
        ]));
        dir
    })
    .path()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn sample_writes_jsonl_for_every_sampling_config_and_is_deterministic() {
    let _serial = serial();
    let ckpt = run().join("checkpoints");
    let out = tempfile::tempdir().unwrap();
    let mut texts = vec![];
    for name in ["a.jsonl", "b.jsonl"] {
        let f = out.path().join(name);
        let stdout = ok(&elf(&[
            "sample",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--num",
            "5",
            "--batch",
            "2",
            "--out",
            f.to_str().unwrap(),
        ]));
        assert!(stdout.contains("wrote 10 samples of step 19"), "{stdout}");
        texts.push(std::fs::read_to_string(f).unwrap());
    }
    assert_eq!(texts[0], texts[1], "same seed, same samples");
    let rows: Vec<Value> = texts[0]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.len(),
        10,
        "5 samples × 2 sampling configs of tiny.yaml"
    );
    for r in &rows {
        assert!(r["run"].as_str().unwrap().ends_with("-uncond"));
        assert!(!r["tokens"].as_array().unwrap().is_empty());
    }
    // Conditional, from prompts.
    let f = out.path().join("cond.jsonl");
    ok(&elf(&[
        "sample",
        "--checkpoint",
        ckpt.join("step-000000009").to_str().unwrap(),
        "--input",
        "data/de-en/validation.jsonl",
        "--num",
        "3",
        "--out",
        f.to_str().unwrap(),
    ]));
    let first: Value =
        serde_json::from_str(std::fs::read_to_string(f).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["prompt"], "Externe Vergleichs-Engine für MediaWiki");
    assert!(first["run"].as_str().unwrap().ends_with("-cond"));
}

#[test]
fn eval_scores_unconditional_samples_with_gpt2_and_conditional_ones_with_bleu_rouge() {
    let _serial = serial();
    let ckpt = run().join("checkpoints");
    let out = tempfile::tempdir().unwrap();
    let gpt2 = root().join("model/tests/fixtures/gpt2");
    let stdout = ok(&elf(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--gpt2",
        gpt2.to_str().unwrap(),
        "--num-samples",
        "6",
        "--out",
        out.path().join("u").to_str().unwrap(),
    ]));
    assert!(stdout.contains("gen-ppl"), "{stdout}");
    let m = read_json(&out.path().join("u/metrics.json"));
    assert_eq!(m["step"], 19);
    let results = m["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        let ppl = r["ppl"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{r}");
        assert!(r["mean_entropy"].as_f64().unwrap() >= 0.0, "{r}");
        // The generations are beside the metrics, one file per sampling config.
        let gens = out
            .path()
            .join(format!("u/{}.jsonl", r["run"].as_str().unwrap()));
        assert_eq!(std::fs::read_to_string(gens).unwrap().lines().count(), 6);
    }
    // Conditional: BLEU and ROUGE on the committed de-en pairs; recomputed from the written
    // generations they agree with the table.
    ok(&elf(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--eval-file",
        "data/de-en/validation.jsonl",
        "--num-samples",
        "4",
        "--out",
        out.path().join("c").to_str().unwrap(),
    ]));
    let m = read_json(&out.path().join("c/metrics.json"));
    for r in m["results"].as_array().unwrap() {
        let gens: Vec<Value> = std::fs::read_to_string(
            out.path()
                .join(format!("c/{}.jsonl", r["run"].as_str().unwrap())),
        )
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        assert_eq!(gens.len(), 4);
        let hyps: Vec<&str> = gens.iter().map(|g| g["output"].as_str().unwrap()).collect();
        let refs: Vec<&str> = gens
            .iter()
            .map(|g| g["reference"].as_str().unwrap())
            .collect();
        let bleu = elf_model::metrics::bleu::corpus_bleu(&hyps, &refs).score;
        let rouge = elf_model::metrics::rouge::corpus_rouge(&hyps, &refs);
        assert_eq!(r["bleu"].as_f64().unwrap(), bleu);
        assert_eq!(r["rougeL"].as_f64().unwrap(), rouge.rouge_l);
        assert!(r.get("ppl").is_none());
    }
}

/// `--seeds 1,2`: one evaluation per seed (each the same as a `--seed` run alone), then each
/// metric's mean and sample standard deviation over the seeds.
#[test]
fn eval_over_several_seeds_reports_each_metric_mean_and_spread() {
    let _serial = serial();
    let ckpt = run().join("checkpoints");
    let out = tempfile::tempdir().unwrap();
    let eval = |extra: &[&str], name: &str| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--eval-file",
            "data/de-en/validation.jsonl",
            "--num-samples",
            "4",
        ];
        args.extend(extra);
        let dir = out.path().join(name);
        args.extend(["--out", dir.to_str().unwrap()]);
        let stdout = ok(&elf(&args));
        (stdout, read_json(&dir.join("metrics.json")))
    };
    let (stdout, m) = eval(&["--seeds", "1,2"], "many");
    assert!(
        stdout.contains("mean ± sample standard deviation"),
        "{stdout}"
    );
    assert_eq!(m["seeds"], serde_json::json!([1, 2]));
    for (i, seed) in [1, 2].iter().enumerate() {
        let (_, alone) = eval(&["--seed", &seed.to_string()], &format!("alone-{seed}"));
        assert_eq!(m["per_seed"][i]["results"], alone["results"], "seed {seed}");
        let run = alone["results"][0]["run"].as_str().unwrap();
        assert!(
            out.path()
                .join(format!("many/seed-{seed}/{run}.jsonl"))
                .exists()
        );
    }
    for (k, summary) in m["summary"].as_array().unwrap().iter().enumerate() {
        for metric in ["bleu", "rouge1", "rouge2", "rougeL"] {
            let v: Vec<f64> = (0..2)
                .map(|i| m["per_seed"][i]["results"][k][metric].as_f64().unwrap())
                .collect();
            let s = &summary["metrics"][metric];
            let mean = (v[0] + v[1]) / 2.0;
            let std = ((v[0] - mean).powi(2) + (v[1] - mean).powi(2)).sqrt();
            assert!((s["mean"].as_f64().unwrap() - mean).abs() < 1e-12, "{s}");
            assert!((s["std"].as_f64().unwrap() - std).abs() < 1e-12, "{s}");
        }
    }
    let e = err_line(&elf(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--seed",
        "1",
        "--seeds",
        "1,2",
    ]));
    assert!(e.contains("--seeds"), "{e}");
}

#[test]
fn eval_bad_inputs_fail_with_one_clear_line() {
    let _serial = serial();
    let ckpt = run().join("checkpoints");
    // A folder with no manifest.
    let e = err_line(&elf(&["eval", "--checkpoint", run().to_str().unwrap()]));
    assert!(e.contains("not a committed checkpoint"), "{e}");
    // A malformed eval line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"input\": \"a\", \"output\": \"b\"}\n{\"input\": \"a\", \"outp\n",
    )
    .unwrap();
    let e = err_line(&elf(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--eval-file",
        bad.to_str().unwrap(),
    ]));
    assert!(e.contains("bad.jsonl") && e.contains("line 2"), "{e}");
    // A GPT-2 folder without its weights.
    let g = dir.path().join("gpt2");
    std::fs::create_dir(&g).unwrap();
    std::fs::copy(
        root().join("model/tests/fixtures/gpt2/config.json"),
        g.join("config.json"),
    )
    .unwrap();
    let e = err_line(&elf(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--gpt2",
        g.to_str().unwrap(),
    ]));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn plot_draws_the_loss_parts_and_the_eval_metrics_of_a_run() {
    let _serial = serial();
    let evals = std::fs::read_to_string(run().join("metrics/eval.jsonl")).unwrap();
    assert_eq!(evals.lines().count(), 2, "checkpoints 9 and 19 evaluated");
    let out = tempfile::tempdir().unwrap();
    let svg_path = out.path().join("p.svg");
    let stdout = ok(&elf(&[
        "plot",
        run().to_str().unwrap(),
        "--out",
        svg_path.to_str().unwrap(),
    ]));
    assert!(
        stdout.contains("(7 charts)"),
        "5 training charts, ppl and entropy: {stdout}"
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for title in [
        "loss parts (rescaled)",
        "learning rate",
        "eval: ppl",
        "eval: mean_entropy",
    ] {
        assert!(svg.contains(&format!(">{title}</text>")), "{title} missing");
    }
    // 20 training steps: the loss polyline has 20 points.
    let loss = svg.split("<polyline").nth(1).unwrap();
    let points = loss
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(points.split(' ').count(), 20);
    let e = err_line(&elf(&["plot", out.path().to_str().unwrap()]));
    assert!(e.contains("train.jsonl"), "{e}");
}

fn eval_settings(gpt2: &str) -> Vec<String> {
    [
        "checkpoint.interval_steps=5",
        "eval.every_checkpoints=2",
        "eval.at_end=true",
        "eval.num_samples=3",
        &format!("eval.gpt2={gpt2}"),
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.to_string()])
    .collect()
}

/// Eval jobs: every second committed checkpoint and the last one, on a dedicated eval worker
/// (training never runs them) and, without one, on rank 0 between steps; both write the same
/// results into the manifests, `metrics/eval.jsonl`, `/status` and Prometheus.
#[test]
fn eval_jobs_run_on_an_eval_worker_or_between_steps_and_land_in_the_manifests() {
    let _serial = serial();
    let gpt2 = repo_root()
        .join("model/tests/fixtures/gpt2")
        .display()
        .to_string();
    let settings = eval_settings(&gpt2);
    // A dedicated eval worker; jobs never fall back to the training workers.
    let a = tempfile::tempdir().unwrap();
    let mut extra: Vec<&str> = settings.iter().map(String::as_str).collect();
    extra.extend(["--set", "eval.on_training_workers=false"]);
    let mut run = ELF.cluster(a.path(), 1, 20, &extra);
    let (url, http) = run.addresses();
    let mut eval_worker = ELF.worker_with(
        "eval-worker",
        &url,
        "e0",
        &["--role", "eval"],
        &[("RAYON_NUM_THREADS", "1")],
    );
    let first = run.coordinator.wait_event("eval", T);
    assert_eq!(
        first["step"], 9,
        "every second checkpoint: steps 4, 9, 14, 19 -> 9, 19"
    );
    let status: Value = serde_json::from_str(&http_get(&http, "/status")).unwrap();
    assert_eq!(status["last_eval"]["step"], 9, "{status}");
    let metrics = http_get(&http, "/metrics");
    assert!(
        metrics.contains("elf_eval_value{metric=\"ppl\""),
        "{metrics}"
    );
    assert!(metrics.contains("elf_eval_jobs_total 1"), "{metrics}");
    promtool(&metrics);
    let s = eval_worker.wait_exit(T);
    assert!(s.success(), "eval worker failed\n{}", eval_worker.logs());
    // The eval worker hears DONE only after training is over.
    assert!(
        !run.workers_mention("evaluating"),
        "the training worker ran an eval job"
    );
    run.finish();
    let evals = lines(&a.path().join("metrics/eval.jsonl"));
    assert_eq!(
        evals
            .iter()
            .map(|e| e["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [9, 19]
    );
    for e in &evals {
        let step = e["step"].as_u64().unwrap();
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(
                a.path()
                    .join(format!("checkpoints/step-{step:09}/manifest.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(m["eval"]["results"], e["results"], "step {step}");
        assert_eq!(m["eval"]["worker"], "e0");
        for r in e["results"].as_array().unwrap() {
            assert!(r["ppl"].as_f64().unwrap() > 1.0, "{r}");
            assert_eq!(r["samples"], 3);
        }
    }
    let m14: Value = serde_json::from_str(
        &std::fs::read_to_string(a.path().join("checkpoints/step-000000014/manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(m14["eval"].is_null(), "step 14 is not evaluated");
    // No eval worker: rank 0 evaluates between steps, with the same results.
    let b = tempfile::tempdir().unwrap();
    let args: Vec<&str> = settings.iter().map(String::as_str).collect();
    ELF.train_args(b.path(), 1, &args, &[]);
    assert_eq!(lines(&b.path().join("metrics/eval.jsonl")), evals);
    let log = std::fs::read_to_string(b.path().join("logs/worker-0.log")).unwrap();
    assert!(log.contains("evaluating"), "{log}");
}
