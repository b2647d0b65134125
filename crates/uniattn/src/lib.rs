//! UniAttn: softmax unification across SuperBlocks of layers for post-trained LLMs
//! (arXiv 2502.00439), with the model loading, inference and evaluation around it.
//!
//! The modules follow the data's path: [`config`] and [`plan`], [`weights`] (GGUF,
//! safetensors), [`tokenizer`], [`model`], [`calibrate`], [`train`] (on several GPUs: [`distributed`]), [`engine`] (KV cache, sampling,
//! batching), [`eval`], [`server`].
pub mod analyze;
pub mod cache;
pub mod calibrate;
pub mod config;
pub mod convert;
pub mod cuda;
pub mod data;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod eval;
pub mod formats;
pub mod fs;
pub mod loader;
pub mod model;
pub mod plan;
pub mod plan_search;
pub mod plot;
pub mod rng;
pub mod runtime;
pub mod savings;
pub mod server;
pub mod tokenizer;
pub mod train;
pub mod weights;

#[cfg(test)]
pub(crate) mod testing;

pub use error::{Error, Result};
