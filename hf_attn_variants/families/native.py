"""Families whose own config holds ``num_key_value_heads``: a variant is the family's own model.

Each declaration names the transformers model_types it covers; they all keep separate
``self_attn.{q,k,v,o}_proj`` projections, so conversion only regroups the rows of ``k_proj`` and ``v_proj``.
"""

from .base import NativeFamily

LLAMA = NativeFamily("llama", ("llama",), notes="RoPE; SmolLM2 and Llama 2/3 checkpoints")
MISTRAL = NativeFamily("mistral", ("mistral",), notes="RoPE, sliding window")
QWEN2 = NativeFamily("qwen2", ("qwen2",), notes="q/k/v biases (regrouped like the weights)")
QWEN3 = NativeFamily("qwen3", ("qwen3",), notes="per-head q/k RMSNorm (shared by all heads, unchanged)")

NATIVE_FAMILIES = (LLAMA, MISTRAL, QWEN2, QWEN3)
