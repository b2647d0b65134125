//! The transformer: building blocks, RoPE, the two attention variants, the KV cache.
pub mod attention;
pub mod kv_cache;
pub mod nn;
pub mod rope;
pub mod transformer;

pub use attention::{Attention, FullAttention, ReuseAttention};
pub use kv_cache::KvCache;
pub use transformer::Transformer;
