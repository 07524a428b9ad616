"""Falcon: one fused ``query_key_value``, rotary (rotate_half) positions; ALiBi configs are refused.

Every Falcon layout is the plugin's grouped layout: the new (40B) architecture's ``[q .. q k v]`` per K/V group
with ``num_kv_heads`` groups, the old architecture's MQA ``[q_0 .. q_(H-1) k v]`` (one group) and its MHA
``[q_h k_h v_h] x H``. Saved as Falcon itself: G = H, and the old
architecture's G = 1 (``multi_query``). Everything else runs the plugin's attention, new-architecture GQA
included: transformers' new-architecture attention copies its G K/V heads to all H before caching them, so
a native GQA Falcon would cache as much as MHA.
"""

import math

from transformers.models.falcon import modeling_falcon
from transformers.models.falcon.configuration_falcon import FalconConfig

from .base import MixedFamily


def falcon_attention_scaling(config, layer_idx: int) -> float:
    """1 / sqrt(head_dim), as torch's sdpa computes its default scale (``head_dim ** -0.5`` differs in the last bit)."""
    return 1 / math.sqrt(config.hidden_size // config.num_attention_heads)


class FalconFamily(MixedFamily):
    def own_kv_heads(self, config) -> int:
        if config.new_decoder_architecture:
            return config.num_kv_heads
        return 1 if config.multi_query else self.num_heads(config)

    def saves_natively(self, config, dst_kv) -> bool:
        heads = self.num_heads(config)
        if config.new_decoder_architecture:
            # transformers' new-architecture attention broadcasts its K/V heads to all H before caching them, so
            # a native G < H would cache H heads and save nothing: those variants run the plugin's attention
            return dst_kv == heads
        return dst_kv in (1, heads)

    def own_config_values(self, config, dst_kv):
        if config.new_decoder_architecture:
            return {"num_kv_heads": dst_kv}
        return {"multi_query": dst_kv == 1, "num_kv_heads": self.num_heads(config)}

    def plugin_config_values(self, config, dst_kv):
        return {"multi_query": False, "num_kv_heads": dst_kv}  # old architecture, G K/V heads

    def check_config(self, config) -> None:
        super().check_config(config)
        if config.alibi:
            raise ValueError(
                "Falcon with alibi=True is not supported: its ALiBi attention (bias added before the scale, scores "
                "in float32, the bias folded into the mask for sdpa) is not what the variant attention computes; "
                "rotary Falcon (alibi=False) is supported"
            )
        if (
            config.model_type == "falcon"
            and not config.new_decoder_architecture
            and not config.multi_query
            and config.num_kv_heads != config.num_attention_heads
        ):
            raise ValueError(
                f"Falcon with new_decoder_architecture=False, multi_query=False and num_kv_heads={config.num_kv_heads} "
                f"(not num_attention_heads={config.num_attention_heads}) is not supported: transformers' own Falcon "
                "cannot run it"
            )


FALCON = FalconFamily(
    "falcon",
    ("falcon",),
    notes="rotary; new (num_kv_heads) and old (multi_query, parallel_attn) architectures, biases; alibi=True refused; "
    "new-architecture GQA runs the plugin's attention (transformers' own caches all H heads)",
    attention_module="self_attention",
    qkv=("query_key_value",),
    fused_layout="grouped",
    out_module="dense",
    rotary_style="half",
    divide_scores=True,
    attention_class=modeling_falcon.FalconAttention,
    model_classes=(
        modeling_falcon.FalconModel,
        modeling_falcon.FalconForCausalLM,
        modeling_falcon.FalconForSequenceClassification,
        modeling_falcon.FalconForTokenClassification,
        modeling_falcon.FalconForQuestionAnswering,
    ),
    config_class=FalconConfig,
    attention_scaling=falcon_attention_scaling,
    own_counts="G = H; G = 1 (`multi_query`) in the old architecture",
)
