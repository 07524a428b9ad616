"""What differs between the transformers minors the package supports (5.19 to 5.24), found by feature, in one place.

transformers 5.24 names the key/value cache ``cache`` (the forward's and ``generate``'s argument, the output's
field); earlier minors name it ``past_key_values``. Code that passes or reads a cache goes through
:func:`cache_kwargs` and :func:`output_cache` so it runs on both.

Before 5.24, GPT-J's attention makes its rotary ``(sin, cos)`` itself from the position ids (its layers pass no
``position_embeddings``) and its eager attention divides the float32 scores by sqrt(head_dim) instead of
multiplying them by the scale: :data:`GPTJ_ATTENTION_MAKES_POSITIONS`.
"""

from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.gptj import modeling_gptj

CACHE_ARGUMENT = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

GPTJ_ATTENTION_MAKES_POSITIONS = hasattr(modeling_gptj.GPTJAttention, "_attn")


def cache_kwargs(cache) -> dict:
    """The keyword argument that hands ``cache`` to a model's forward or ``generate`` in this transformers."""
    return {CACHE_ARGUMENT: cache}


def output_cache(outputs):
    """The cache a model's forward returned (``None`` if it returned none)."""
    return getattr(outputs, CACHE_ARGUMENT, None)
