"""The configuration of a model written by uniattn (https://arxiv.org/abs/2502.00439) with a
SuperBlock plan: its family's own configuration (`uniattn_base_model_type`) plus the plan
(`uniattn_plan`: half-open `blocks` [lead, end) and the `reuse` kind). Written into each planned
folder by uniattn; loaded with `trust_remote_code=True`."""
from transformers import AutoConfig, PretrainedConfig

OWN_KEYS = ("uniattn_base_model_type", "uniattn_plan", "auto_map", "architectures", "model_type")


class UniAttnConfig(PretrainedConfig):
    model_type = "uniattn"

    def __init__(self, uniattn_base_model_type="llama", uniattn_plan=None, **kwargs):
        self.uniattn_base_model_type = uniattn_base_model_type
        self.uniattn_plan = uniattn_plan or {"blocks": [], "reuse": "uniattn"}
        super().__init__(**kwargs)

    def base_config(self):
        """The family's configuration (LlamaConfig, Qwen2Config, ...) for the same sizes."""
        fields = {k: v for k, v in self.to_dict().items() if k not in OWN_KEYS}
        return AutoConfig.for_model(self.uniattn_base_model_type, **fields)
