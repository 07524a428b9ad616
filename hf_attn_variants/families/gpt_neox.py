"""GPT-NeoX / Pythia: one fused ``query_key_value`` interleaved per head, partial rotary (rotate_half)."""

from transformers.models.gpt_neox import modeling_gpt_neox
from transformers.models.gpt_neox.configuration_gpt_neox import GPTNeoXConfig

from .base import PluginFamily, head_dim_scaling

GPT_NEOX = PluginFamily(
    "gpt_neox",
    ("gpt_neox",),
    notes="Pythia; partial rotary (rotary_pct), use_parallel_residual; MHA is the family's own per-head layout",
    attention_module="attention",
    qkv=("query_key_value",),
    fused_layout="grouped",
    out_module="dense",
    dropout_config="attention_dropout",
    rotary_style="half",
    attention_scaling=head_dim_scaling,
    attention_class=modeling_gpt_neox.GPTNeoXAttention,
    model_classes=(
        modeling_gpt_neox.GPTNeoXModel,
        modeling_gpt_neox.GPTNeoXForCausalLM,
        modeling_gpt_neox.GPTNeoXForSequenceClassification,
        modeling_gpt_neox.GPTNeoXForTokenClassification,
        modeling_gpt_neox.GPTNeoXForQuestionAnswering,
    ),
    config_class=GPTNeoXConfig,
)
