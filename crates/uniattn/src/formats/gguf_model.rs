//! What a GGUF file's metadata says about the model: its hyper-parameters (`{arch}.*` keys) as a
//! [`ModelConfig`], and its tokenizer (`tokenizer.ggml.*`) rebuilt as a Hugging Face tokenizer.
use super::gguf::{GgufFile, Value};
use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value as Json};
use std::collections::HashMap;

/// `tokenizer.ggml.token_type` values of special tokens.
const GGUF_CONTROL: i64 = 3;
const GGUF_USER_DEFINED: i64 = 4;

impl ModelConfig {
    /// Reads the model hyper-parameters from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.req_str("general.architecture")?;
        let family = match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            _ => {
                return Err(Error::format(
                    g.path(),
                    format!("general.architecture: '{arch}' is not supported (llama, qwen2, gemma2, gemma3)"),
                ))
            }
        };
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = g.req_u64(&k("embedding_length"))? as usize;
        let heads = g.req_u64(&k("attention.head_count"))? as usize;
        let embd = g
            .tensors
            .get("token_embd.weight")
            .ok_or_else(|| Error::format(g.path(), "missing tensor token_embd.weight"))?;
        let window = g.opt_u64(&k("attention.sliding_window")).map(|w| w as usize);
        let head_dim =
            g.opt_u64(&k("attention.key_length")).map(|d| d as usize).unwrap_or(hidden / heads.max(1));
        let cfg = ModelConfig {
            family,
            vocab_size: embd.shape[0],
            hidden_size: hidden,
            intermediate_size: g.req_u64(&k("feed_forward_length"))? as usize,
            num_layers: g.req_u64(&k("block_count"))? as usize,
            num_heads: heads,
            num_kv_heads: g.opt_u64(&k("attention.head_count_kv")).map(|x| x as usize).unwrap_or(heads),
            head_dim,
            rms_norm_eps: g.req_f64(&k("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.opt_f64(&k("rope.freq_base")).unwrap_or(10_000.0),
            // llama.cpp hard-codes Gemma 3's local base; it is not in the metadata.
            rope_local_theta: (family == Family::Gemma3).then_some(10_000.0),
            max_position_embeddings: g.opt_u64(&k("context_length")).unwrap_or(4096) as usize,
            tie_word_embeddings: !g.tensors.contains_key("output.weight"),
            attention_bias: g.tensors.contains_key("blk.0.attn_q.bias"),
            sliding_window: if family.is_gemma() { window } else { None },
            sliding_window_pattern: match family {
                Family::Gemma3 => Some(6),
                Family::Gemma2 => Some(2),
                _ => None,
            },
            query_pre_attn_scalar: family.is_gemma().then_some(head_dim as f64),
            attn_logit_softcapping: g.opt_f64(&k("attn_logit_softcapping")),
            final_logit_softcapping: g.opt_f64(&k("final_logit_softcapping")),
            bos_token_id: g.opt_u64("tokenizer.ggml.bos_token_id").map(|x| x as u32),
            eos_token_ids: g
                .opt_u64("tokenizer.ggml.eos_token_id")
                .map(|x| vec![x as u32])
                .unwrap_or_default(),
        };
        cfg.validate(g.path())
    }
}

impl Tokenizer {
    /// Rebuilds the tokenizer from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let model = g.req_str("tokenizer.ggml.model")?;
        let strings = |key: &str| -> Result<Vec<&str>> {
            g.get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::format(path, format!("metadata {key}: missing or not an array")))?
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| Error::format(path, format!("metadata {key}: non-string entry")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_u64().map(|x| x as i64).unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let added: Vec<Json> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == GGUF_CONTROL || ty == GGUF_USER_DEFINED)
            .map(|(id, (tok, &ty))| {
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": ty == GGUF_CONTROL})
            })
            .collect();
        let vocab: serde_json::Map<String, Json> =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
        let tokenizer_json = match model {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?;
                let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
                gpt2_json(pre, vocab, &merges, added)
            }
            "llama" => {
                let scores: Vec<f64> = g
                    .get("tokenizer.ggml.scores")
                    .and_then(Value::as_array)
                    .ok_or_else(|| Error::format(path, "metadata tokenizer.ggml.scores: missing"))?
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0))
                    .collect();
                let unk = g.opt_u64("tokenizer.ggml.unknown_token_id").map(|i| tokens[i as usize]);
                spm_bpe_json(vocab, &tokens, &types, &scores, unk, added)
            }
            m => {
                return Err(Error::format(
                    path,
                    format!("metadata tokenizer.ggml.model: '{m}' is not supported (gpt2, llama)"),
                ))
            }
        };
        let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        let bos = g.opt_u64("tokenizer.ggml.bos_token_id").map(|x| x as u32);
        let mut eos: Vec<u32> =
            g.opt_u64("tokenizer.ggml.eos_token_id").map(|x| x as u32).into_iter().collect();
        // Chat models end a turn with a token the metadata does not call EOS.
        for t in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(i) = tokens.iter().position(|x| *x == t) {
                if !eos.contains(&(i as u32)) {
                    eos.push(i as u32);
                }
            }
        }
        let template = g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string);
        Self::from_json_text(tokenizer_json.to_string(), path, add_bos, bos, eos, template)
    }
}

/// The pre-tokenizer split that llama.cpp's `tokenizer.ggml.pre` names.
fn gpt2_json(pre: &str, vocab: serde_json::Map<String, Json>, merges: &[&str], added: Vec<Json>) -> Json {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
    let (normalizer, pre_tokenizer) = match pre {
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"},
                 "behavior": "Isolated", "invert": false},
                byte_level(false)]}),
        ),
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true)]}),
        ),
        _ => (Json::Null, byte_level(true)),
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": byte_level(true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    })
}

/// SentencePiece BPE as transformers converts it: merges are every split of a normal piece into
/// two pieces of the vocabulary, ranked by the merged piece's score (stable, ties by ids).
fn spm_bpe_json(
    vocab: serde_json::Map<String, Json>,
    tokens: &[&str],
    types: &[i64],
    scores: &[f64],
    unk: Option<&str>,
    added: Vec<Json>,
) -> Json {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(usize, usize, f64)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(1) != 1 {
            continue;
        }
        let mut local: Vec<(usize, usize, f64)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| {
                let (l, r) = piece.split_at(i);
                Some((*index.get(l)?, *index.get(r)?, scores[id]))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    let merges: Vec<[&str; 2]> = merges.iter().map(|&(l, r, _)| [tokens[l], tokens[r]]).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    })
}
