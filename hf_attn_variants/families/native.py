"""Families whose own config holds ``num_key_value_heads``: a variant is the family's own model.

Each declaration names the transformers model_types it covers and where its projections live; conversion
only regroups the K/V rows (of ``k_proj``/``v_proj``, of the k and v blocks of a fused projection, and of
any other tensor with one slice per K/V head).
"""

from .base import NativeFamily, NativeFusedFamily


class StableLmFamily(NativeFamily):
    def check_config(self, config) -> None:
        super().check_config(config)
        if getattr(config, "qk_layernorm", False):
            raise ValueError(
                "StableLM with qk_layernorm=True is not supported: its key norms are one module per K/V head, "
                "which a conversion would have to add or remove, and pooling them is not exact"
            )


LLAMA = NativeFamily("llama", ("llama",), notes="RoPE; SmolLM2 and Llama 2/3 checkpoints")
MISTRAL = NativeFamily("mistral", ("mistral",), notes="RoPE, sliding window")
QWEN2 = NativeFamily("qwen2", ("qwen2",), notes="q/k/v biases (regrouped like the weights)")
QWEN3 = NativeFamily(
    "qwen3", ("qwen3",), notes="per-head q/k RMSNorm (shared by all heads, unchanged)", normed_keys=True
)
GEMMA = NativeFamily("gemma", ("gemma",), notes="head_dim independent of hidden size / heads")
GEMMA2 = NativeFamily(
    "gemma2", ("gemma2",), notes="logit soft-capping, alternating sliding-window layers, query_pre_attn_scalar"
)
GRANITE = NativeFamily("granite", ("granite",), notes="attention and residual multipliers")
STABLELM = StableLmFamily(
    "stablelm", ("stablelm",), notes="partial rotary, optional q/k/v biases; qk_layernorm=True refused"
)
PHI = NativeFamily(
    "phi", ("phi",), o_projection="self_attn.dense", notes="phi-1/2: partial rotary, biases, output `dense`"
)
OLMO2 = NativeFamily(
    "olmo2",
    ("olmo2",),
    kv_shaped=("self_attn.k_norm",),
    normed_keys=True,
    head_sliced=("q_norm", "k_norm"),
    notes="k_norm spans the whole K projection: its weight is regrouped with the K/V heads",
)
PHI3 = NativeFusedFamily("phi3", ("phi3",), notes="fused `qkv_proj` [q | k | v] saved natively")

NATIVE_FAMILIES = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, GRANITE, STABLELM, PHI, OLMO2, PHI3)
