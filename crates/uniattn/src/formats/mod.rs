//! The files models come in: GGUF (metadata, tensors, quantized blocks) and safetensors, and
//! what a GGUF file's metadata says about the model and its tokenizer. The types they fill
//! (`ModelConfig`, `Tokenizer`, `WeightMap`) live with their concepts and know no file format.
pub mod dequant;
pub mod gguf;
pub mod gguf_model;
pub mod safetensors;
