//! The end of a run on the worker the coordinator names (rank 0 of the final quorum): the
//! final weights, live (`final.safetensors`) and EMA (`final-ema.safetensors`), as the
//! reference saves both, and a few samples from the EMA weights (`samples.txt`), at the run
//! location (a URL or path: never this worker's own disk unless the run is there).

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use elf_store::Location;

use crate::data::TrainData;
use crate::generate::{generate, sweep};
use crate::replica::Replica;

/// Writes the final weights and samples of `replica` to the run location `run`.
///
/// # Errors
/// An unwritable run location, or a prompt the collator rejects.
pub fn write_final<B: AutodiffBackend>(
    replica: &Replica<B>,
    data: &TrainData,
    run: &Location,
    device: &B::Device,
) -> anyhow::Result<()> {
    use elf_model::weights::{named_host_params, to_safetensors};
    let live = named_host_params::<B::InnerBackend, _>(&replica.model.valid());
    run.join("final.safetensors")
        .put(to_safetensors(&live, None))?;
    let ema = named_host_params::<B::InnerBackend, _>(&replica.ema);
    run.join("final-ema.safetensors")
        .put(to_safetensors(&ema, None))?;
    write_samples(replica, data, run, device)
}

/// Generates the end-of-run samples from the EMA weights and writes them to the run folder.
fn write_samples<B: AutodiffBackend>(
    replica: &Replica<B>,
    ds: &TrainData,
    run: &Location,
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
    run.join("samples.txt").put(text.into_bytes())?;
    Ok(())
}
