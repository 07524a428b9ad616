"""OPT: separate q/k/v/out projections (optionally with biases), learned positions, the query scaled first."""

from transformers.models.opt import modeling_opt
from transformers.models.opt.configuration_opt import OPTConfig

from .base import PluginFamily, head_dim_scaling

OPT = PluginFamily(
    "opt",
    ("opt",),
    notes="learned positions; the query is scaled before the kernel, as OPT does; enable_bias, do_layer_norm_before",
    attention_module="self_attn",
    qkv=("q_proj", "k_proj", "v_proj"),
    out_module="out_proj",
    dropout_config="attention_dropout",
    scale_query=True,
    attention_scaling=head_dim_scaling,
    attention_class=modeling_opt.OPTAttention,
    model_classes=(
        modeling_opt.OPTModel,
        modeling_opt.OPTForCausalLM,
        modeling_opt.OPTForSequenceClassification,
        modeling_opt.OPTForQuestionAnswering,
    ),
    config_class=OPTConfig,
)
