//! The paper's evaluation metrics (spec §6), matching the reference tools exactly: BLEU as
//! sacrebleu, ROUGE as rouge-score (with NLTK's Porter stemmer), unigram entropy, and the
//! generative-perplexity reduction.

pub mod bleu;
pub mod entropy;
pub mod perplexity;
pub mod porter;
pub mod rouge;
