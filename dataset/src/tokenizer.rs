//! The text tokenizer: the bundled t5-small `tokenizer.json` or any HF `tokenizer.json`.
//!
//! Texts are tokenised without special tokens (spec §3.1): no EOS is appended.

use std::path::Path;

use crate::DataError;

/// The t5-small tokenizer, compiled into the binary (see `assets/t5/README.md`).
const T5_JSON: &[u8] = include_bytes!("../../assets/t5/tokenizer.json");

/// A loaded tokenizer.
#[derive(Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
}

impl TextTokenizer {
    /// Returns the bundled t5-small tokenizer.
    pub fn t5() -> Self {
        let inner =
            tokenizers::Tokenizer::from_bytes(T5_JSON).expect("the bundled tokenizer.json parses");
        Self {
            inner,
            name: "t5-small (bundled)".into(),
        }
    }

    /// Loads a `tokenizer.json` file.
    ///
    /// # Errors
    /// A missing or malformed file, naming it.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let name = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| DataError::parse(name.as_str(), "not a tokenizer.json", e))?;
        Ok(Self { inner, name })
    }

    /// Returns the tokenizer a config names: `None`, `t5-small` or `t5-base` give the bundled one,
    /// anything else is a path to a `tokenizer.json` (or a folder holding one).
    ///
    /// # Errors
    /// As [`TextTokenizer::from_file`].
    pub fn for_config(name: Option<&str>, base_dir: &Path) -> Result<Self, DataError> {
        match name {
            None | Some("t5-small") | Some("t5-base") | Some("t5-large") => Ok(Self::t5()),
            Some(p) => {
                let mut path = Path::new(p).to_path_buf();
                if path.is_relative() && !path.exists() {
                    path = base_dir.join(p);
                }
                if path.is_dir() {
                    path = path.join("tokenizer.json");
                }
                Self::from_file(&path)
            }
        }
    }

    /// Returns the tokenizer's name for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns `len(tokenizer)`: the vocabulary including added tokens (32,100 for T5).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of one vocabulary entry (e.g. `<|endoftext|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes text without special tokens (spec §3.1).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// Decodes ids as the reference's `tokenizer.batch_decode(ids, skip_special_tokens=True)`
    /// does: special tokens skipped, then `clean_up_tokenization_spaces` (on by default in
    /// `transformers<4.45`, which the reference pins), so " ." reads "." and " 's" reads "'s".
    pub fn decode(&self, ids: &[u32]) -> String {
        clean_up_tokenization(&self.inner.decode(ids, true).unwrap_or_default())
    }
}

/// `transformers`' `PreTrainedTokenizerBase.clean_up_tokenization` (4.44): the spaces before
/// punctuation and English contractions removed, in this order.
pub fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |s, (from, to)| s.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_t5_matches_the_reference_ids() {
        let t = TextTokenizer::t5();
        assert_eq!(t.encode("Hello world"), vec![8774, 296]);
        assert_eq!(t.vocab_size(), 32100);
        assert_eq!(t.decode(&[8774, 296, 1, 0]), "Hello world");
    }
}
