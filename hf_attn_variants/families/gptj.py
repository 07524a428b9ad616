"""GPT-J: separate q/k/v/out projections without biases, partial rotary on interleaved pairs (rotate_every_two)."""

import functools

from transformers.models.gptj import modeling_gptj
from transformers.models.gptj.configuration_gptj import GPTJConfig

from ..compat import GPTJ_ATTENTION_MAKES_POSITIONS
from .base import PluginFamily, head_dim_scaling


class GPTJFamily(PluginFamily):
    def check_config(self, config) -> None:
        super().check_config(config)
        head_dim = self.head_dim(config)
        rotary_dim = config.rotary_dim
        if rotary_dim is None or not 0 < rotary_dim <= head_dim or rotary_dim % 2:
            raise ValueError(
                f"GPT-J with rotary_dim={rotary_dim} is not supported: transformers' GPT-J rotates the first "
                f"rotary_dim dims of each head with rotary_dim/2 frequencies, which only runs for an even "
                f"rotary_dim in [2, head_dim={head_dim}] (its rotary module reads 0 as hidden_size)"
            )

    def eager_upcast(self, config) -> bool:
        return True  # GPT-J's eager attention always computes the scores in float32

    def rotary_cos_sin(self, position_embeddings):
        sin, cos = position_embeddings  # GPT-J passes (sin, cos), one value per pair of rotated dims
        return cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)

    def position_embeddings(self, module, position_ids, dtype):
        """``(sin, cos)`` as transformers before 5.24 made them in each GPT-J attention, from the same table."""
        table = sinusoidal_positions(module.config.max_position_embeddings, module.config.rotary_dim)
        sincos = table.to(position_ids.device)[position_ids].to(dtype)
        return sincos.chunk(2, dim=-1)


@functools.cache
def sinusoidal_positions(positions: int, dim: int):
    return modeling_gptj.create_sinusoidal_positions(positions, dim)


GPTJ = GPTJFamily(
    "gptj",
    ("gptj",),
    notes="partial rotary on interleaved pairs (rotate_every_two, rotary_dim); scores in float32 as GPT-J's eager; "
    "rotary_dim 0, odd or above head_dim refused (transformers' GPT-J cannot run them)",
    attention_module="attn",
    qkv=("q_proj", "k_proj", "v_proj"),
    out_module="out_proj",
    resid_dropout="resid_dropout",
    dropout_config="attn_pdrop",
    rotary_style="interleaved",
    attention_scaling=head_dim_scaling,
    divide_scores=GPTJ_ATTENTION_MAKES_POSITIONS,  # transformers before 5.24: its own eager divides the scores
    attention_class=modeling_gptj.GPTJAttention,
    model_classes=(
        modeling_gptj.GPTJModel,
        modeling_gptj.GPTJForCausalLM,
        modeling_gptj.GPTJForSequenceClassification,
        modeling_gptj.GPTJForQuestionAnswering,
    ),
    config_class=GPTJConfig,
)
