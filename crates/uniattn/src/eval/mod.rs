//! Evaluation: perplexity and bits per byte on text files, and multiple-choice tasks scored
//! by log-likelihood as lm-evaluation-harness scores them.
pub mod arrow;
pub mod loglikelihood;
pub mod mc_task;
pub mod medmcqa;
pub mod mmlu;
pub mod multiple_choice;
pub mod perplexity;
pub mod tasks;
