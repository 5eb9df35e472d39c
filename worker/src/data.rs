//! The data side of a replica: the tokenizer, the training rows and the collator of a
//! resolved config.

use std::sync::Arc;

use elf_dataset::Dataset;
use elf_dataset::collate::Collator;
use elf_dataset::tokenizer::TextTokenizer;
use elf_shared::config::ResolvedConfig;

/// What a worker reads its slices from.
#[derive(Debug)]
pub struct TrainData {
    /// Tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Training rows.
    pub data: Box<dyn Dataset>,
    /// Row -> sequence.
    pub collator: Collator,
    /// CE vocabulary `V` (`len(tokenizer)`).
    pub vocab: usize,
}

impl TrainData {
    /// Opens the tokenizer and the training data of `rc`.
    ///
    /// # Errors
    /// A missing `data_path`, an unreadable dataset or tokenizer, or a tokenizer larger than
    /// the encoder's embedding table.
    pub fn open(rc: &ResolvedConfig) -> anyhow::Result<Self> {
        let c = &rc.config;
        let elf_dataset::Training { tokenizer, data } = elf_dataset::open_training(rc)?;
        let vocab = tokenizer.vocab_size();
        if vocab > c.encoder.vocab_size {
            anyhow::bail!(
                "{}: the tokenizer has {vocab} entries but the encoder embeds only {} (encoder.vocab_size)",
                rc.source,
                c.encoder.vocab_size
            );
        }
        let collator = Collator::from_config(c, vocab);
        Ok(Self {
            tokenizer,
            data,
            collator,
            vocab,
        })
    }
}
