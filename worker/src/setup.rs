//! Builds what a run needs from a resolved config: tokenizer, dataset, plan, collator, schedule
//! and the frozen encoder.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use elf_model::optim::Schedule;
use elf_model::t5::T5Encoder;
use elf_shared::config::ResolvedConfig;
use elf_shared::plan::Plan;

use elf_data::Dataset;
use elf_data::collate::Collator;
use elf_data::tokenizer::TextTokenizer;

/// The data side of a run.
#[derive(Debug)]
pub struct DataSetup {
    /// Tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Training rows.
    pub data: Box<dyn Dataset>,
    /// Which rows each step trains.
    pub plan: Plan,
    /// Row -> sequence.
    pub collator: Collator,
    /// CE vocabulary `V` (`len(tokenizer)`).
    pub vocab: usize,
    /// Steps in one epoch.
    pub steps_per_epoch: u64,
    /// Steps of the whole run (`train.max_steps`, else `epochs · steps_per_epoch`).
    pub total_steps: u64,
}

impl DataSetup {
    /// Opens the tokenizer and the training data of `rc`.
    ///
    /// # Errors
    /// A missing `data_path`, an unreadable dataset or tokenizer, or a batch the data cannot fill.
    pub fn open(rc: &ResolvedConfig) -> anyhow::Result<Self> {
        let c = &rc.config;
        let elf_data::Training {
            tokenizer,
            data,
            plan,
        } = elf_data::open_training(rc)?;
        let vocab = tokenizer.vocab_size();
        if vocab > c.encoder.vocab_size {
            anyhow::bail!(
                "{}: the tokenizer has {vocab} entries but the encoder embeds only {} (encoder.vocab_size)",
                rc.source,
                c.encoder.vocab_size
            );
        }
        let collator = Collator::from_config(c, vocab);
        let steps_per_epoch = plan.steps_per_epoch();
        let total_steps = c.train.max_steps.unwrap_or(steps_per_epoch * c.epochs);
        Ok(Self {
            tokenizer,
            data,
            plan,
            collator,
            vocab,
            steps_per_epoch,
            total_steps,
        })
    }

    /// Returns the learning-rate schedule of the run.
    pub fn schedule(&self, rc: &ResolvedConfig) -> Schedule {
        Schedule::from_config(&rc.config, self.steps_per_epoch, self.total_steps)
    }
}

/// Loads the frozen encoder: the configured HF checkpoint, or a seeded random one (with a
/// warning, since latents from random weights only suit tests and demos).
///
/// # Errors
/// A checkpoint that is missing or does not match `encoder`'s shape.
pub fn load_encoder<B: Backend>(
    rc: &ResolvedConfig,
    device: &B::Device,
) -> anyhow::Result<T5Encoder<B>> {
    let c = &rc.config;
    match &c.encoder_checkpoint {
        Some(p) => {
            let path = rc.resolve(p);
            if path.ends_with(".pkl") {
                anyhow::bail!(
                    "{}: encoder_checkpoint {path}: JAX pickles are not read; point it at the HF t5-small model.safetensors (see README)",
                    rc.source
                );
            }
            Ok(T5Encoder::load_hf(Path::new(&path), &c.encoder, device)?)
        }
        None => {
            tracing::warn!(
                seed = c.encoder.init_seed,
                "no encoder_checkpoint: using a seeded random T5 encoder (fine for tests and demos; use the real t5-small for real runs)"
            );
            Ok(T5Encoder::random(&c.encoder, device))
        }
    }
}
