//! The end of a run on the worker the coordinator names (rank 0 of the final quorum): the
//! final weights (`final.safetensors`) and a few samples from the EMA weights
//! (`samples.txt`), in the run folder.

use std::path::Path;

use anyhow::Context;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::data::TrainData;
use crate::generate::{generate, sweep};
use crate::replica::Replica;

/// Writes the final weights and samples of `replica` into `run_dir`.
///
/// # Errors
/// An unwritable run folder, or a prompt the collator rejects.
pub fn write_final<B: AutodiffBackend>(
    replica: &Replica<B>,
    data: &TrainData,
    run_dir: &Path,
    device: &B::Device,
) -> anyhow::Result<()> {
    let params =
        elf_model::weights::named_host_params::<B::InnerBackend, _>(&replica.model.valid());
    let path = run_dir.join("final.safetensors");
    elf_model::weights::write_safetensors(&path, &params)?;
    write_samples(replica, data, run_dir, device)
}

/// Generates the end-of-run samples from the EMA weights and writes them to the run folder.
fn write_samples<B: AutodiffBackend>(
    replica: &Replica<B>,
    ds: &TrainData,
    run_dir: &Path,
    device: &B::Device,
) -> anyhow::Result<()> {
    let c = &replica.config;
    let n = c.train.final_samples;
    if n == 0 {
        return Ok(());
    }
    let mut spec = sweep(&c.sampling_configs[0])[0];
    spec.steps = c.train.final_sample_steps;
    let prompts: Option<Vec<_>> = if ds.data.is_conditional() {
        Some(
            (0..n as u64)
                .map(|i| ds.data.row(i))
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    };
    let tokens = generate(
        &replica.ema,
        &replica.encoder,
        c,
        &ds.collator,
        prompts.as_deref(),
        n,
        &spec,
        (c.seed, 0),
        device,
    )?;
    let mut text = format!(
        "samples ({:?}, {} steps, EMA weights):\n",
        spec.method, spec.steps
    );
    for (i, t) in tokens.iter().enumerate() {
        let out = ds.tokenizer.decode(t);
        match &prompts {
            Some(p) => text.push_str(&format!(
                "[{i}] {} => {out}\n",
                p[i].input.clone().unwrap_or_default()
            )),
            None => text.push_str(&format!("[{i}] {out}\n")),
        }
    }
    std::fs::write(run_dir.join("samples.txt"), text)
        .with_context(|| format!("{}: cannot write samples.txt", run_dir.display()))?;
    Ok(())
}
