//! `elf import` of a reference train state written by flax itself
//! (`scripts/reference/flax_state.py`: jax 0.4.38, flax 0.10.2, optax 0.2.5 from PyPI), then
//! every consumer of a checkpoint on the result: the tensors, `elf model forward` (EMA),
//! `elf sample` and `elf train --resume`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use elf_model::weights::{HostTensor, TensorFile, write_safetensors};

use elf_e2e::{err_line, ok};

mod common;
use common::flax_state;

fn root() -> PathBuf {
    elf_e2e::repo_root()
}

fn elf(args: &[&str]) -> std::process::Output {
    elf_e2e::run_in_repo(env!("CARGO_BIN_EXE_elf"), args)
}

fn all(f: &TensorFile) -> BTreeMap<String, HostTensor> {
    f.names()
        .into_iter()
        .filter(|n| n != "count")
        .map(|n| {
            let shape = f.shape(&n).unwrap();
            let data = f.get_f32(&n, &shape).unwrap();
            (n, HostTensor { shape, data })
        })
        .collect()
}

#[test]
fn a_flax_train_state_imports_whole_and_every_checkpoint_consumer_runs_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("flax");
    flax_state(&src, &[]);
    let ckpts = tmp.path().join("imported/checkpoints");
    let state = src.join("state.msgpack");
    let import = |out: &Path| {
        elf(&[
            "import",
            state.to_str().unwrap(),
            "--config",
            "configs/tiny.yaml",
            "--set",
            "train.max_steps=4",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let stdout = ok(&import(&ckpts));
    assert!(
        stdout.contains("committed step 1 (reference step 2, epoch 0)")
            && stdout.contains("EMA from ema_params1")
            && stdout.contains("optimiser moments from opt_state (count 2)"),
        "{stdout}"
    );

    // Every tensor is the flax state's, under our names: live, EMA, every Muon and Adam moment.
    let step = ckpts.join("step-000000001");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(step.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        (m["next_step"].as_u64(), m["optimizer_count"].as_u64()),
        (Some(2), Some(2))
    );
    let shard = TensorFile::open(&step.join(m["shards"][0]["file"].as_str().unwrap())).unwrap();
    let expected = all(&TensorFile::open(&src.join("expected.safetensors")).unwrap());
    let got = all(&shard);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, want) in &expected {
        assert_eq!(&got[name], want, "{name}");
    }
    ok(&elf(&["checkpoint", "verify", ckpts.to_str().unwrap()]));

    // `elf model forward --params <checkpoint>` runs the EMA weights: the same outputs as the
    // flax-written EMA tree given as a file.
    let ema: BTreeMap<String, HostTensor> = expected
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("ema/")?.to_string(), v.clone())))
        .collect();
    let ema_file = tmp.path().join("ema.safetensors");
    write_safetensors(&ema_file, &ema).unwrap();
    let e = ema["self_cond_proj/kernel"].shape[1];
    let (b, s) = (2, 8);
    let inputs = BTreeMap::from([
        (
            "u".to_string(),
            HostTensor {
                shape: vec![b, s, 2 * e],
                data: (0..b * s * 2 * e)
                    .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                    .collect(),
            },
        ),
        (
            "t".into(),
            HostTensor {
                shape: vec![b],
                data: vec![0.3, 0.8],
            },
        ),
        (
            "w".into(),
            HostTensor {
                shape: vec![b],
                data: vec![1.0, 2.5],
            },
        ),
    ]);
    let inp = tmp.path().join("inputs.safetensors");
    write_safetensors(&inp, &inputs).unwrap();
    let mut outs = vec![];
    for (params, name) in [(&ckpts, "a"), (&ema_file, "b")] {
        let o = tmp.path().join(format!("{name}.safetensors"));
        ok(&elf(&[
            "model",
            "forward",
            "--params",
            params.to_str().unwrap(),
            "--inputs",
            inp.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
        ]));
        outs.push(all(&TensorFile::open(&o).unwrap()));
    }
    assert_eq!(outs[0], outs[1]);
    // A parameter file with a tensor the model does not have is another model's: refused.
    let mut extra = ema.clone();
    extra.insert("extra/weight".into(), ema["blocks_0/norm1/weight"].clone());
    write_safetensors(&ema_file, &extra).unwrap();
    let e = err_line(&elf(&[
        "model",
        "forward",
        "--params",
        ema_file.to_str().unwrap(),
        "--inputs",
        inp.to_str().unwrap(),
        "--out",
        tmp.path().join("c.safetensors").to_str().unwrap(),
    ]));
    assert!(
        e.contains("\"extra/weight\" is not a parameter of the model"),
        "{e}"
    );
    assert!(outs[0]["logits"].data.iter().all(|x| x.is_finite()));

    // Sampling and resuming training both start from it.
    let samples = tmp.path().join("samples.jsonl");
    let stdout = ok(&elf(&[
        "sample",
        "--checkpoint",
        ckpts.to_str().unwrap(),
        "--num",
        "2",
        "--out",
        samples.to_str().unwrap(),
    ]));
    assert!(stdout.contains("of step 1"), "{stdout}");
    let run = tmp.path().join("run");
    ok(&elf(&[
        "train",
        "--config",
        "configs/tiny.yaml",
        "--set",
        "train.max_steps=4",
        "--workers",
        "1",
        "--run-dir",
        run.to_str().unwrap(),
        "--resume",
        step.to_str().unwrap(),
    ]));
    let resumed = run.join("checkpoints/step-000000003/manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&resumed).unwrap()).unwrap();
    assert_eq!(
        m["optimizer_count"].as_u64(),
        Some(4),
        "2 imported + 2 trained"
    );

    // Nothing is overwritten: a second import into the same root is refused.
    let e = err_line(&import(&ckpts));
    assert!(e.contains("already holds step-000000001"), "{e}");
}

/// The reference's own writer (flax 0.10.2's `save_checkpoint`, an Orbax folder): `elf import`
/// names the converter, and the converted file imports to the very same tensors.
#[test]
fn an_orbax_folder_imports_through_the_converter() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("flax");
    flax_state(&src, &["--orbax"]);
    let orbax = src.join("orbax");
    let import = |from: &Path, out: &str| {
        elf(&[
            "import",
            from.to_str().unwrap(),
            "--config",
            "configs/tiny.yaml",
            "--out",
            tmp.path().join(out).to_str().unwrap(),
        ])
    };
    // The output folder resolves to its highest checkpoint_<step>, which is Orbax.
    let e = err_line(&import(&orbax, "a"));
    assert!(
        e.contains("checkpoint_2: an Orbax checkpoint folder: convert it with `python scripts/reference/orbax_to_msgpack.py"),
        "{e}"
    );
    let converted = tmp.path().join("converted.msgpack");
    let o = Command::new("python3")
        .arg(root().join("scripts/reference/orbax_to_msgpack.py"))
        .args([orbax.to_str().unwrap(), converted.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = ok(&import(&converted, "b"));
    assert!(
        stdout.contains("optimiser moments from opt_state (count 2)"),
        "{stdout}"
    );
    let step = tmp.path().join("b/step-000000001");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(step.join("manifest.json")).unwrap()).unwrap();
    let shard = TensorFile::open(&step.join(m["shards"][0]["file"].as_str().unwrap())).unwrap();
    assert_eq!(
        all(&shard),
        all(&TensorFile::open(&src.join("expected.safetensors")).unwrap())
    );
}

#[test]
fn a_state_for_another_model_or_with_unknown_leaves_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("flax");
    flax_state(&src, &["--no-opt"]);
    let state = src.join("state.msgpack");
    let out = tmp.path().join("ckpts");
    let import = |set: &[&str]| {
        let mut args = vec![
            "import",
            state.to_str().unwrap(),
            "--config",
            "configs/tiny.yaml",
            "--out",
            out.to_str().unwrap(),
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        elf(&args)
    };
    // A deeper model than the state's: the first parameter it lacks is named.
    let e = err_line(&import(&["model_dims.depth=3"]));
    assert!(
        e.contains("params/blocks_2/") && e.contains("is missing"),
        "{e}"
    );
    // A narrower bottleneck: the mis-shaped tensor is named with both shapes.
    let e = err_line(&import(&["bottleneck_dim=16"]));
    assert!(
        e.contains("text_proj/proj1/kernel: shape [32, 32], the config's model has [32, 16]"),
        "{e}"
    );
    // Without opt_state the moments start at zero, and the import says so.
    let o = import(&[]);
    let stdout = ok(&o);
    assert!(
        stdout.contains("optimiser moments zero (no opt_state)"),
        "{stdout}"
    );
    // Bytes that are not msgpack name the file and the byte.
    let junk = tmp.path().join("junk.msgpack");
    std::fs::write(&junk, [0x81, 0xa1, b'w']).unwrap();
    let e = err_line(&elf(&[
        "import",
        junk.to_str().unwrap(),
        "--config",
        "configs/tiny.yaml",
        "--out",
        tmp.path().join("other").to_str().unwrap(),
    ]));
    assert!(
        e.contains("junk.msgpack: not a flax msgpack state: byte 3"),
        "{e}"
    );
}

/// The reference's encoder pickle (spec §2.5's tree, `(in, out)` kernels, wrapped in
/// `{"params": ...}`) made from the HF test encoder, converted back by
/// `scripts/reference/t5_pickle_to_hf.py`: the same tensors, and the model runs on it.
#[test]
fn the_reference_encoder_pickle_converts_to_the_hf_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = root().join("model/tests/fixtures/t5_encoder.safetensors");
    let pkl = tmp.path().join("t5_encoder_jax.pkl");
    let writer = r#"
import pickle, sys
from safetensors.numpy import load_file
d = load_file(sys.argv[1])
enc = {}
def put(path, v):
    node = enc
    *parents, leaf = path.split("/")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = v
put("shared/embedding", d["shared.weight"])
put("encoder/final_layer_norm/weight", d["encoder.final_layer_norm.weight"])
put("encoder/block_0/layer_0/SelfAttention/relative_attention_bias/rel_embedding",
    d["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])
for l in range(2):
    h = f"encoder.block.{l}.layer"
    f = f"encoder/block_{l}"
    put(f"{f}/layer_0/layer_norm/weight", d[f"{h}.0.layer_norm.weight"])
    put(f"{f}/layer_1/layer_norm/weight", d[f"{h}.1.layer_norm.weight"])
    for x in "qkvo":
        put(f"{f}/layer_0/SelfAttention/{x}/kernel", d[f"{h}.0.SelfAttention.{x}.weight"].T)
    for x in ("wi", "wo"):
        put(f"{f}/layer_1/DenseReluDense/{x}/kernel", d[f"{h}.1.DenseReluDense.{x}.weight"].T)
with open(sys.argv[2], "wb") as fh:
    pickle.dump({"params": enc}, fh)
"#;
    let py = |args: &[&str]| {
        let o = Command::new("python3")
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    py(&["-c", writer, hf.to_str().unwrap(), pkl.to_str().unwrap()]);
    let out = tmp.path().join("model.safetensors");
    let said = py(&[
        "scripts/reference/t5_pickle_to_hf.py",
        pkl.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(said.contains("20 tensors"), "{said}");
    let (want, got) = (
        all(&TensorFile::open(&hf).unwrap()),
        all(&TensorFile::open(&out).unwrap()),
    );
    assert_eq!(got, want);

    // An unknown leaf is named, not dropped.
    let bad = tmp.path().join("bad.pkl");
    py(&[
        "-c",
        "import pickle,sys,numpy as np; d=pickle.load(open(sys.argv[1],'rb')); d['params']['encoder']['extra']={'kernel': np.zeros((2,2))}; pickle.dump(d, open(sys.argv[2],'wb'))",
        pkl.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    let o = Command::new("python3")
        .args([
            "scripts/reference/t5_pickle_to_hf.py",
            bad.to_str().unwrap(),
            tmp.path().join("bad.safetensors").to_str().unwrap(),
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("encoder/extra/kernel: not a T5 encoder weight"),
        "{e}"
    );
}
