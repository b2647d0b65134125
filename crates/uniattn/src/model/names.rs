//! Hugging Face tensor names, in one place: the model loads and saves its weights under them,
//! GGUF import maps llama.cpp's names onto them, and conversion and plans select modules by
//! role ([`Module`]) rather than by matching strings.

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// A decoder layer's modules, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Q,
    K,
    V,
    O,
    /// UniAttn's compensation W_c, under the reference code's name `v2_proj`.
    Wc,
    QNorm,
    KNorm,
    /// The norm before attention.
    AttnNorm,
    /// Gemma's norm of the attention's output.
    AttnPostNorm,
    /// The norm before the MLP.
    MlpNorm,
    /// Gemma's norm of the MLP's output.
    MlpPostNorm,
    Gate,
    Up,
    Down,
}

impl Module {
    /// The module's path inside its layer. Llama-style families call the MLP's input norm
    /// `post_attention_layernorm`; Gemma uses that name for the attention's post-norm and calls
    /// the MLP's input norm `pre_feedforward_layernorm`.
    pub fn path(self, gemma: bool) -> &'static str {
        match self {
            Module::Q => "self_attn.q_proj",
            Module::K => "self_attn.k_proj",
            Module::V => "self_attn.v_proj",
            Module::O => "self_attn.o_proj",
            Module::Wc => "self_attn.v2_proj",
            Module::QNorm => "self_attn.q_norm",
            Module::KNorm => "self_attn.k_norm",
            Module::AttnNorm => "input_layernorm",
            Module::AttnPostNorm => "post_attention_layernorm",
            Module::MlpNorm if gemma => "pre_feedforward_layernorm",
            Module::MlpNorm => "post_attention_layernorm",
            Module::MlpPostNorm => "post_feedforward_layernorm",
            Module::Gate => "mlp.gate_proj",
            Module::Up => "mlp.up_proj",
            Module::Down => "mlp.down_proj",
        }
    }

    /// The module's name without its block (`q_proj`, `input_layernorm`), as reports print it.
    pub fn short(self) -> &'static str {
        let p = self.path(false);
        p.rsplit_once('.').map_or(p, |(_, m)| m)
    }

    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Module::QNorm
                | Module::KNorm
                | Module::AttnNorm
                | Module::AttnPostNorm
                | Module::MlpNorm
                | Module::MlpPostNorm
        )
    }
}

/// `model.layers.{layer}.{module}` without the `.weight`/`.bias` suffix.
pub fn module(layer: usize, m: Module, gemma: bool) -> String {
    format!("model.layers.{layer}.{}", m.path(gemma))
}

/// The module's weight tensor.
pub fn weight(layer: usize, m: Module, gemma: bool) -> String {
    format!("{}.weight", module(layer, m, gemma))
}

/// The module's bias tensor.
pub fn bias(layer: usize, m: Module, gemma: bool) -> String {
    format!("{}.bias", module(layer, m, gemma))
}

/// The decoder layer a tensor name belongs to (`model.layers.{layer}.…`), if any.
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split_once('.')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names transformers' Llama/Qwen2 and Gemma models use.
    #[test]
    fn names_are_transformers_names() {
        assert_eq!(weight(3, Module::MlpNorm, false), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(weight(3, Module::MlpNorm, true), "model.layers.3.pre_feedforward_layernorm.weight");
        assert_eq!(weight(3, Module::AttnPostNorm, true), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(bias(0, Module::Q, false), "model.layers.0.self_attn.q_proj.bias");
        assert_eq!(weight(7, Module::Wc, false), "model.layers.7.self_attn.v2_proj.weight");
        assert_eq!(layer_of(&weight(12, Module::Down, true)), Some(12));
        assert_eq!((layer_of(EMBED), layer_of(FINAL_NORM), layer_of("model.layers.x.q")), (None, None, None));
        assert_eq!(
            (Module::Q.short(), Module::Wc.short(), Module::AttnNorm.short()),
            ("q_proj", "v2_proj", "input_layernorm")
        );
    }
}
