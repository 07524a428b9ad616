"""GPTBigCode (SantaCoder, StarCoder): one fused ``c_attn``, MQA (``multi_query=True``) or MHA.

Both of its layouts are the plugin's grouped layout: MQA's ``[q_0 .. q_(H-1) k v]`` is one K/V group, MHA's
``(H, 3 * head_dim)`` view is ``[q_h k_h v_h] x H``. So G = 1 and G = H are saved as GPTBigCode itself
(``multi_query`` flipped) and any other G runs the plugin's attention on the same layout.
"""

from transformers.models.gpt_bigcode import modeling_gpt_bigcode
from transformers.models.gpt_bigcode.configuration_gpt_bigcode import GPTBigCodeConfig

from .base import MixedFamily


def gpt_bigcode_attention_scaling(config, layer_idx: int) -> float:
    """GPTBigCode's score scale: 1/sqrt(head_dim) if ``scale_attn_weights``, else 1."""
    return (config.hidden_size // config.num_attention_heads) ** -0.5 if config.scale_attn_weights else 1.0


class GPTBigCodeFamily(MixedFamily):
    def own_kv_heads(self, config) -> int:  # its config's num_key_value_heads can be stale (set before n_head)
        return 1 if config.multi_query else self.num_heads(config)

    def saves_natively(self, config, dst_kv) -> bool:
        return dst_kv in (1, self.num_heads(config))

    def own_config_values(self, config, dst_kv):
        return {"multi_query": dst_kv == 1}

    def plugin_config_values(self, config, dst_kv):
        return {"multi_query": False}  # the plugin's num_key_value_heads holds G

    def check_config(self, config) -> None:
        super().check_config(config)
        if getattr(config, "add_cross_attention", False):
            raise ValueError(
                "GPTBigCode with add_cross_attention=True is not supported: only its self-attention can be converted"
            )


GPT_BIGCODE = GPTBigCodeFamily(
    "gpt_bigcode",
    ("gpt_bigcode",),
    notes="SantaCoder/StarCoder; learned positions; MQA and MHA saved natively, GQA through the plugin",
    attention_module="attn",
    qkv=("c_attn",),
    fused_layout="grouped",
    out_module="c_proj",
    resid_dropout="resid_dropout",
    dropout_config="attn_pdrop",
    attention_class=modeling_gpt_bigcode.GPTBigCodeAttention,
    model_classes=(
        modeling_gpt_bigcode.GPTBigCodeModel,
        modeling_gpt_bigcode.GPTBigCodeForCausalLM,
        modeling_gpt_bigcode.GPTBigCodeForSequenceClassification,
        modeling_gpt_bigcode.GPTBigCodeForTokenClassification,
    ),
    config_class=GPTBigCodeConfig,
    attention_scaling=gpt_bigcode_attention_scaling,
    own_counts="G = 1 (`multi_query=True`) and G = H",
)
