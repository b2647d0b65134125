"""A model written by uniattn with a SuperBlock plan (https://arxiv.org/abs/2502.00439), for
transformers: `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`. It runs
the family's own modules (norms, projections, MLP, rotary embedding) in uniattn's layer order:

- a SuperBlock's lead (layer `lead` of a block [lead, end)) computes its softmax map
  softmax(Q K^T * scale + mask) in f32, as transformers' eager attention does;
- its reuse layers, by the plan's kind: `uniattn` multiplies the lead's map by their own V and
  adds the compensation `v2_proj(x)` (W_c); `softmax-only` the same without W_c; `cla` runs its
  own queries against the lead's keys and values; `layerdrop` adds nothing (the MLP still runs);
  `kv-heads` runs its own attention with fewer K/V heads (each the mean of a group of the dense
  model's; the lead is an ordinary layer).

Families: llama, mistral, qwen2, gemma2, gemma3 (text): the family's per-head Q/K norms,
post-norms, soft-capping, sliding windows and per-layer RoPE bases are applied as its own
modules do, and a reuse layer takes its lead's map under the lead's window. With `use_cache` (as
`generate` runs) a KV cache keeps what each layer's kind needs, as uniattn's engine does: full
layers their keys and values, UniAttn and softmax-only reuse layers their values only (a
zero-width key), CLA and dropped layers nothing (CLA reads its lead's). As transformers' own
models, `UniAttnForCausalLM` is a backbone (`UniAttnModel`, its `base_model`, which tools such as
TRL call for hidden states) plus the LM head, and supports activation checkpointing. Written into
each planned folder by uniattn; the reference code's names (`v2_proj`) are kept.
"""
import dataclasses
import importlib
import inspect

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:
    from .configuration_uniattn import UniAttnConfig
except ImportError:  # loaded as a plain module (tests)
    from configuration_uniattn import UniAttnConfig

SUPPORTED = ("llama", "mistral", "qwen2", "gemma2", "gemma3_text")
# What transformers calls the KV cache in model outputs and generation: `cache` from 5.2x on,
# `past_key_values` before.
CACHE = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
# Attention modules each reuse kind does not have (uniattn's plan.rs, ReuseSpec::drops); the
# per-head norms only where the family has them.
DROPS = {
    "uniattn": ("q_proj", "k_proj", "q_norm", "k_norm"),
    "softmax-only": ("q_proj", "k_proj", "q_norm", "k_norm"),
    "cla": ("k_proj", "v_proj", "k_norm"),
    "layerdrop": ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"),
    "kv-heads": (),
}


def merged_kv_heads(kv_heads):
    """The K/V heads a `kv-heads` reuse layer keeps (uniattn's plan.rs, merged_kv_heads): the
    largest divisor of the model's count no more than half; one head stays one."""
    return next((d for d in range(kv_heads // 2, 0, -1) if kv_heads % d == 0), kv_heads)


class UniAttnPreTrainedModel(PreTrainedModel):
    config_class = UniAttnConfig
    base_model_prefix = "model"
    # Activation checkpointing runs each layer of UniAttnModel's loop under the function
    # transformers sets (`gradient_checkpointing_enable()`, TRL's default).
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        # The family's own initialisation: it also sets the buffers loading does not fill
        # (Gemma's embedding scale).
        backbone = self if isinstance(self, UniAttnModel) else self.model
        backbone.family_model._init_weights(module)


class UniAttnModel(UniAttnPreTrainedModel):
    """The backbone (the model's `base_model`, which TRL and other tools call for hidden
    states): the family's embedding, decoder layers, final norm and rotary embedding, under their
    Hugging Face names, run in uniattn's layer order. Returns the final-normed hidden states."""

    def __init__(self, config):
        super().__init__(config)
        family = config.uniattn_base_model_type
        if family not in SUPPORTED:
            raise NotImplementedError(f"modeling_uniattn: family '{family}' is not supported here ({', '.join(SUPPORTED)})")
        base_cfg = config.base_config()
        base_cfg._attn_implementation = "eager"
        base = AutoModel.from_config(base_cfg)
        # Kept outside the module tree (its modules are ours, under their own names).
        self.__dict__["family_model"] = base
        self.family = importlib.import_module(type(base).__module__)
        self.embed_tokens, self.layers, self.norm = base.embed_tokens, base.layers, base.norm
        self.rotary_emb = base.rotary_emb
        plan = config.uniattn_plan
        self.kind = plan.get("reuse", "uniattn")
        if self.kind not in DROPS:
            raise ValueError(f"uniattn_plan.reuse: '{self.kind}' is not one of {', '.join(DROPS)}")
        self.lead_of = {}
        for lead, end in plan.get("blocks", []):
            for layer in range(lead + 1, end):
                self.lead_of[layer] = lead
                attn = self.layers[layer].self_attn
                for name in DROPS[self.kind]:
                    if hasattr(attn, name):
                        delattr(attn, name)
                if self.kind == "uniattn":
                    attn.v2_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
                if self.kind == "kv-heads":
                    merged = merged_kv_heads(config.num_key_value_heads)
                    for name in ("k_proj", "v_proj"):
                        old = getattr(attn, name)
                        setattr(attn, name, nn.Linear(config.hidden_size, merged * attn.head_dim, bias=old.bias is not None))
                    attn.num_key_value_groups = config.num_attention_heads // merged
        self.leads = set(self.lead_of.values())
        # Gemma 3's rotary embedding takes the layer's type (local and global RoPE bases).
        self.rope_by_type = "layer_type" in inspect.signature(self.rotary_emb.forward).parameters
        self.layer_types = getattr(base_cfg, "layer_types", None) or ["full_attention"] * base_cfg.num_hidden_layers
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _heads(self, attn, x, proj, n):
        b, t, _ = x.shape
        return proj(x).view(b, t, n, attn.head_dim).transpose(1, 2)

    def _probs(self, attn, q, k, mask):
        k = self.family.repeat_kv(k, attn.num_key_value_groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
        cap = getattr(attn, "attn_logit_softcapping", None)
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        return nn.functional.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)

    def _queries(self, attn, x, n, cos, sin):
        """Rotated queries after the family's per-head norm."""
        q = self._heads(attn, x, attn.q_proj, n)
        if hasattr(attn, "q_norm"):
            q = attn.q_norm(q)
        q, _ = self.family.apply_rotary_pos_emb(q, q, cos, sin)
        return q

    def _attend(self, attn, probs, v):
        out = torch.matmul(probs, self.family.repeat_kv(v, attn.num_key_value_groups))
        b, _, t, _ = out.shape
        return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _layer(self, i, h, lead_state, cache, cos, sin, mask):
        """Layer `i` on the residual stream `h`; returns the new stream and what a lead hands its
        block (its map, or for CLA its keys and values), else None."""
        cfg = self.config
        n_q = cfg.num_attention_heads
        layer = self.layers[i]
        handed = None
        attn = layer.self_attn
        # The layer's own K/V heads (fewer in a kv-heads reuse layer).
        n_kv = n_q // attn.num_key_value_groups
        x = layer.input_layernorm(h)
        if i in self.lead_of and self.kind != "kv-heads":
            if self.kind in ("uniattn", "softmax-only"):
                v = self._heads(attn, x, attn.v_proj, n_kv)
                if cache is not None:
                    _, v = cache.update(v[..., :0], v, i)
                out = self._attend(attn, lead_state, v)
                if self.kind == "uniattn":
                    out = out + attn.v2_proj(x)
            elif self.kind == "cla":
                k, v = lead_state
                q = self._queries(attn, x, n_q, cos, sin)
                out = self._attend(attn, self._probs(attn, q, k, mask), v)
            else:
                out = None
        else:
            q = self._queries(attn, x, n_q, cos, sin)
            k = self._heads(attn, x, attn.k_proj, n_kv)
            if hasattr(attn, "k_norm"):
                k = attn.k_norm(k)
            _, k = self.family.apply_rotary_pos_emb(k, k, cos, sin)
            v = self._heads(attn, x, attn.v_proj, n_kv)
            if cache is not None:
                k, v = cache.update(k, v, i)
            probs = self._probs(attn, q, k, mask)
            out = self._attend(attn, probs, v)
            if i in self.leads and self.kind != "kv-heads":
                handed = (k, v) if self.kind == "cla" else probs
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma: norms inside both branches
            if out is not None:
                h = h + layer.post_attention_layernorm(out)
            h = h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
        else:
            if out is not None:
                h = h + out
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, handed

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                past_key_values=None, cache=None, use_cache=None, **kwargs):
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t, _ = h.shape
        # As the families' configurations default it (uniattn's config.json need not say).
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if isinstance(cache, Cache) else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            else:
                position_ids = torch.arange(past, past + t, device=h.device).unsqueeze(0).expand(b, t)
        ropes = {}

        def rope(i):
            key = self.layer_types[i] if self.rope_by_type else None
            if key not in ropes:
                args = (key,) if self.rope_by_type else ()
                ropes[key] = self.rotary_emb(h, position_ids, *args)
            return ropes[key]

        # Queries at past..past+t against keys 0..past+t: causal, padding masked, and within a
        # sliding window where the layer has one.
        q_pos = torch.arange(past, past + t, device=h.device)[:, None]
        k_pos = torch.arange(past + t, device=h.device)[None, :]
        allowed = (k_pos <= q_pos)[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, -(past + t):]
        masks = {}

        def mask(attn):
            window = getattr(attn, "sliding_window", None)
            if window not in masks:
                a = allowed if window is None else allowed & (q_pos - k_pos < window)[None, None]
                masks[window] = torch.zeros(a.shape, dtype=h.dtype, device=h.device).masked_fill(~a, float("-inf"))
            return masks[window]

        lead_state = None
        checkpointing = self.gradient_checkpointing and self.training
        for i, layer in enumerate(self.layers):
            args = (i, h, lead_state, cache, *rope(i), mask(layer.self_attn))
            h, handed = self._gradient_checkpointing_func(self._layer, *args) if checkpointing else self._layer(*args)
            if handed is not None:
                lead_state = handed
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h), **{CACHE: cache if use_cache else None})


class UniAttnForCausalLM(UniAttnPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = UniAttnModel(config)
        base_cfg = config.base_config()
        self.lm_head = nn.Linear(base_cfg.hidden_size, base_cfg.vocab_size, bias=False)
        if base_cfg.tie_word_embeddings:  # as the family's own model (Gemma's default)
            self.lm_head.weight = self.model.embed_tokens.weight
        self.final_softcap = getattr(base_cfg, "final_logit_softcapping", None)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                past_key_values=None, cache=None, use_cache=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, cache=cache if cache is not None else past_key_values,
                         use_cache=use_cache)
        h = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep else slice(None)
        logits = self.lm_head(h[:, keep, :])
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE: getattr(out, CACHE)})

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, cache=None, past_key_values=None,
                                      use_cache=None, **kwargs):
        # With a cache only the tokens it does not hold yet run.
        cache = cache if cache is not None else past_key_values
        past = cache.get_seq_length() if isinstance(cache, Cache) else 0
        return {"input_ids": input_ids[:, past:], "attention_mask": attention_mask, CACHE: cache, "use_cache": use_cache}
