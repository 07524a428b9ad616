"""BLOOM: one fused ``query_key_value`` interleaved per head, ALiBi, the residual added inside the attention."""

from transformers.models.bloom import modeling_bloom
from transformers.models.bloom.configuration_bloom import BloomConfig

from .base import PluginFamily, head_dim_scaling


class BloomFamily(PluginFamily):
    def check_config(self, config) -> None:
        super().check_config(config)
        if config.pretraining_tp > 1 and config.slow_but_exact:
            raise ValueError(
                f"BLOOM with slow_but_exact=True and pretraining_tp={config.pretraining_tp} is not supported: "
                "transformers then sums the output projection in pretraining_tp slices, which the variant "
                "attention does not reproduce; load it with slow_but_exact=False"
            )


BLOOM = BloomFamily(
    "bloom",
    ("bloom",),
    notes="ALiBi slopes stay with their query heads; eager attention only, as in transformers; "
    "slow_but_exact with pretraining_tp > 1 refused",
    attention_module="self_attention",
    qkv=("query_key_value",),
    fused_layout="grouped",
    out_module="dense",
    dropout_config="attention_dropout",
    alibi=True,
    residual_dropout_config="hidden_dropout",
    attention_scaling=head_dim_scaling,
    attention_class=modeling_bloom.BloomAttention,
    model_classes=(
        modeling_bloom.BloomModel,
        modeling_bloom.BloomForCausalLM,
        modeling_bloom.BloomForSequenceClassification,
        modeling_bloom.BloomForTokenClassification,
        modeling_bloom.BloomForQuestionAnswering,
    ),
    config_class=BloomConfig,
)
