//! Evaluation: perplexity on text files.
pub mod perplexity;
