//! Evaluation: perplexity and bits per byte on text files, and multiple-choice tasks scored
//! by log-likelihood as lm-evaluation-harness scores them.
pub mod loglikelihood;
pub mod multiple_choice;
pub mod perplexity;
pub mod tasks;
