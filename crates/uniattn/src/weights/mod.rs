//! Weights by Hugging Face name, whatever file they came from. GGUF tensors are renamed and
//! un-done from llama.cpp's conventions here, so the model sees one layout.
use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::model::names::{self, Module};
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
            let role = gguf_layer_tensor(name);
            let Some(hf) = hf_name(name, cfg.family) else {
                // Tables llama.cpp adds that a HF model computes on the fly (e.g. rope_freqs).
                continue;
            };
            let (data, shape) = g.read_f32(name)?;
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let mut t = Tensor::from_slice(&data).view(dims.as_slice());
            if cfg.family == Family::Llama || cfg.family == Family::Mistral {
                // llama.cpp interleaves the two RoPE halves of Q and K rows; undo it.
                let heads = match role {
                    Some((_, Module::Q, "weight")) => Some(cfg.num_heads),
                    Some((_, Module::K, "weight")) => Some(cfg.num_kv_heads),
                    _ => None,
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
            let is_norm = match role {
                Some((_, m, "weight")) => m.is_norm(),
                _ => name == "output_norm.weight",
            };
            if cfg.family.is_gemma() && is_norm {
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

/// A GGUF layer tensor's layer, module and suffix (`weight`, `bias`); `None` for the others.
fn gguf_layer_tensor(gguf: &str) -> Option<(usize, Module, &str)> {
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let m = match module {
        "attn_norm" => Module::AttnNorm,
        "attn_q" => Module::Q,
        "attn_k" => Module::K,
        "attn_v" => Module::V,
        "attn_output" => Module::O,
        "attn_q_norm" => Module::QNorm,
        "attn_k_norm" => Module::KNorm,
        "ffn_norm" => Module::MlpNorm,
        "post_attention_norm" => Module::AttnPostNorm,
        "post_ffw_norm" => Module::MlpPostNorm,
        "ffn_gate" => Module::Gate,
        "ffn_up" => Module::Up,
        "ffn_down" => Module::Down,
        _ => return None,
    };
    Some((layer.parse().ok()?, m, suffix))
}

/// The Hugging Face name of a GGUF tensor, or `None` for tensors HF models do not store.
pub fn hf_name(gguf: &str, family: Family) -> Option<String> {
    match gguf {
        "token_embd.weight" => Some(names::EMBED.into()),
        "output_norm.weight" => Some(names::FINAL_NORM.into()),
        "output.weight" => Some(names::LM_HEAD.into()),
        _ => {
            let (layer, m, suffix) = gguf_layer_tensor(gguf)?;
            Some(format!("{}.{suffix}", names::module(layer, m, family.is_gemma())))
        }
    }
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
