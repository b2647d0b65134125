//! The transformer as the training graph sees it: building blocks, RoPE, the lead/reuse
//! attention variants. Incremental decoding with a KV cache is [`crate::engine`]'s.
pub mod attention;
pub mod names;
pub mod nn;
pub mod rope;
pub mod transformer;

pub use attention::{Attention, FullAttention, ReuseAttention};
pub use transformer::Transformer;
