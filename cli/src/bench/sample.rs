//! `elf bench sample`: generated tokens/s of SDE sampling from a config's network on CPU,
//! against the same number of bare network evaluations measured in the same run.

use std::path::Path;
use std::time::Instant;

use crate::out;

pub fn bench_sample(
    config: &Path,
    batch: Option<usize>,
    steps: usize,
    reps: usize,
) -> anyhow::Result<()> {
    use burn::tensor::Tensor;
    use elf_model::backend::Cpu;
    use elf_model::elf::{Elf, Mode};
    use elf_model::sampler::{Condition, SampleSpec, sample};
    use elf_shared::config::{SamplingMethod, TimeSchedule};
    let rc = crate::load_config(config, &[])?;
    let c = &rc.config;
    let device = Default::default();
    let dims = elf_model::dims::ElfDims::from_config(c, elf_model::dims::T5_VOCAB);
    let model = Elf::<Cpu>::init(&dims, c.seed, &device);
    let (n, s, e) = (
        batch.unwrap_or(c.global_batch_size),
        c.max_length,
        c.encoder.d_model,
    );
    let cond = Condition {
        latents: Tensor::<Cpu, 3>::zeros([n, s, e], &device),
        mask: Tensor::zeros([n, s, 1], &device),
    };
    let spec = SampleSpec {
        method: SamplingMethod::Sde,
        steps,
        cfg: 1.0,
        sc_cfg: 3.0,
        schedule: TimeSchedule::LogitNormal,
        gamma: 1.5,
    };
    let p = elf_worker::generate::flow_params(c);
    let sync = |t: Tensor<Cpu, 2, burn::tensor::Int>| t.into_data();
    sync(sample(&model, &cond, &spec, &p, (0, 0)));
    let t0 = Instant::now();
    for r in 0..reps {
        sync(sample(&model, &cond, &spec, &p, (0, r as u64 + 1)));
    }
    let sample_s = t0.elapsed().as_secs_f64() / reps as f64;
    // The anchor: the network evaluations alone (steps − 1 + 1 denoiser passes, one decoder pass).
    let u = Tensor::<Cpu, 3>::zeros([n, s, 2 * e], &device);
    let t = Tensor::<Cpu, 1>::full([n], 0.5, &device);
    let w = Tensor::<Cpu, 1>::full([n], 3.0, &device);
    let pass = |mode: Mode| {
        let o = model.forward(u.clone(), t.clone(), w.clone(), mode);
        match o.logits {
            Some(l) => drop(l.into_data()),
            None => drop(o.x.into_data()),
        }
    };
    pass(Mode::Denoise);
    let t0 = Instant::now();
    for _ in 0..reps {
        for _ in 0..steps {
            pass(Mode::Denoise);
        }
        pass(Mode::DecodeLogitsOnly);
    }
    let anchor_s = t0.elapsed().as_secs_f64() / reps as f64;
    let tokens = (n * s) as f64;
    out::line(format!(
        "bench sample {} (L = {s}, batch {n}): {steps}-step SDE sampling {:.0} ms per batch, {:.0} generated tokens/s; {} bare network passes {:.0} ms ({:.0} tokens/s); ratio = {:.2} (1 = no sampler overhead)",
        config.display(),
        sample_s * 1e3,
        tokens / sample_s,
        steps + 1,
        anchor_s * 1e3,
        tokens / anchor_s,
        anchor_s / sample_s
    ));
    Ok(())
}
