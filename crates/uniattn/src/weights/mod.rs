//! Weights by Hugging Face name, whatever file they came from. GGUF tensors are renamed and
//! un-done from llama.cpp's conventions here, so the model sees one layout.
pub mod dequant;
pub mod gguf;
pub mod safetensors_io;

use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};
use gguf::GgufFile;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// Named tensors (on the CPU) plus the file they came from, for error messages.
pub struct WeightMap {
    pub source: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
}

impl WeightMap {
    /// Removes and returns a tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            Error::format(&self.source, format!("missing tensor {name} (expected shape {shape:?})"))
        })?;
        let got: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        if got != shape {
            return Err(Error::format(
                &self.source,
                format!("tensor {name} has shape {got:?}, but config.json implies {shape:?}"),
            ));
        }
        Ok(t)
    }

    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dequantizes every tensor of a GGUF file and maps it to its Hugging Face name.
    pub fn from_gguf(g: &GgufFile, cfg: &ModelConfig) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for name in g.tensors.keys() {
            let Some(hf) = hf_name(name, cfg.family) else {
                // Tables llama.cpp adds that a HF model computes on the fly (e.g. rope_freqs).
                continue;
            };
            let (data, shape) = g.read_f32(name)?;
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let mut t = Tensor::from_slice(&data).view(dims.as_slice());
            if cfg.family == Family::Llama || cfg.family == Family::Mistral {
                // llama.cpp interleaves the two RoPE halves of Q and K rows; undo it.
                let heads = if name.ends_with("attn_q.weight") {
                    Some(cfg.num_heads)
                } else if name.ends_with("attn_k.weight") {
                    Some(cfg.num_kv_heads)
                } else {
                    None
                };
                if let Some(h) = heads {
                    if shape.len() != 2 || !shape[0].is_multiple_of(2 * h) {
                        return Err(Error::format(
                            g.path(),
                            format!("tensor {name} has shape {shape:?}: expected 2 dims with rows a multiple of 2 x {h} heads"),
                        ));
                    }
                    t = unpermute_rope_rows(&t, h);
                }
            }
            if cfg.family.is_gemma() && hf.ends_with("norm.weight") {
                // llama.cpp stores Gemma's (1 + w) norm scale as w + 1.
                t -= 1.0;
            }
            tensors.insert(hf, t);
        }
        Ok(WeightMap { source: g.path().to_path_buf(), tensors })
    }
}

/// Inverse of llama.cpp's `permute(w, n_head)`: rows `[h, d/2, 2]` back to `[h, 2, d/2]`.
fn unpermute_rope_rows(w: &Tensor, heads: usize) -> Tensor {
    let size = w.size();
    let (rows, cols) = (size[0], size[1]);
    let h = heads as i64;
    w.view([h, rows / h / 2, 2, cols]).transpose(1, 2).reshape([rows, cols])
}

/// The Hugging Face name of a GGUF tensor, or `None` for tensors HF models do not store.
pub fn hf_name(gguf: &str, family: Family) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let gemma = family.is_gemma();
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Casts to the compute dtype and moves to the device.
pub fn to_device(t: Tensor, kind: Kind, device: tch::Device) -> Tensor {
    t.to_device(device).to_kind(kind).detach()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(h, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (h, d, cols) = (3i64, 8i64, 5i64);
        let w = Tensor::arange(h * d * cols, (Kind::Float, tch::Device::Cpu)).view([h * d, cols]);
        let permuted = w.view([h, 2, d / 2, cols]).transpose(1, 2).reshape([h * d, cols]);
        let back = unpermute_rope_rows(&permuted, h as usize);
        assert!(back.equal(&w));
    }

    #[test]
    fn gguf_names() {
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight", Family::Llama).unwrap(),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight", Family::Gemma3).unwrap(),
            "model.layers.3.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias", Family::Qwen2).unwrap(),
            "model.layers.0.self_attn.q_proj.bias"
        );
        assert_eq!(hf_name("rope_freqs.weight", Family::Llama), None);
    }
}
