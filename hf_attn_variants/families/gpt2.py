"""GPT-2: one fused ``Conv1D`` ``c_attn`` holding ``[q | k | v]`` in blocks, absolute positions."""

from transformers.models.gpt2 import modeling_gpt2
from transformers.models.gpt2.configuration_gpt2 import GPT2Config

from .base import PluginFamily


def gpt2_attention_scaling(config, layer_idx: int) -> float:
    """GPT-2's score scale: 1/sqrt(head_dim) if ``scale_attn_weights``, divided by layer_idx + 1 if asked."""
    scaling = (config.hidden_size // config.num_attention_heads) ** -0.5 if config.scale_attn_weights else 1.0
    if config.scale_attn_by_inverse_layer_idx:
        scaling /= float(layer_idx + 1)
    return scaling


class GPT2Family(PluginFamily):
    def check_config(self, config) -> None:
        super().check_config(config)
        if getattr(config, "add_cross_attention", False):
            raise ValueError(
                "GPT-2 with add_cross_attention=True is not supported: only its self-attention can be converted"
            )


GPT2 = GPT2Family(
    "gpt2",
    ("gpt2",),
    notes="learned positions; scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn kept",
    attention_module="attn",
    qkv=("c_attn",),
    fused_layout="blocks",
    out_module="c_proj",
    resid_dropout="resid_dropout",
    dropout_config="attn_pdrop",
    conv1d=True,
    attention_class=modeling_gpt2.GPT2Attention,
    model_classes=(
        modeling_gpt2.GPT2Model,
        modeling_gpt2.GPT2LMHeadModel,
        modeling_gpt2.GPT2ForSequenceClassification,
        modeling_gpt2.GPT2ForTokenClassification,
    ),
    config_class=GPT2Config,
    attention_scaling=gpt2_attention_scaling,
    upcast_flag="reorder_and_upcast_attn",
)
