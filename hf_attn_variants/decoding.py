"""The fast decode path: an sdpa kernel that reads each K/V head once, over the cached tokens only.

``attn_implementation="hav_sdpa"`` (registered with transformers' ``AttentionInterface`` when the package is
imported) is transformers' sdpa, except for one-token decode steps on the CPU, where it

- stacks the H/G query heads of each group against their shared K/V head (``(batch, G, H/G, head_dim)``
  queries, no ``enable_gqa``, no ``repeat_kv``): measured faster than sdpa's ``enable_gqa`` on the CPU
  (MQA at batch 8 x 8192: 16.3 ms of attention per step against 36.6 ms, the step profiles of
  ``python bench/decode.py``, plugin vs native DynamicCache);
- cuts a ``StaticCache``'s keys and values down to the positions the mask lets any sequence see (a static
  cache is as long as the longest generation; the slots after the current token are masked, and sdpa
  would otherwise read them all), and drops the mask when every remaining position is visible (sdpa's
  kernel without a mask is faster).

On other devices it is transformers' sdpa throughout (which uses ``enable_gqa`` where there is no mask and
stacks the heads where there is one): stacking is measured faster only on the CPU here, and looking at the
mask on an accelerator would wait for it. The plugin's own ``VariantAttention`` runs this kernel for
``attn_implementation="sdpa"`` too.

``enable_fast_decode(model)`` switches a model to it and makes ``generate()`` use a ``StaticCache``, which
appends each token in place (the default ``DynamicCache`` concatenates, copying the whole cache every step).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

FAST_DECODE_ATTENTION = "hav_sdpa"


def visible_prefix(attention_mask: torch.Tensor) -> int:
    """How many leading key positions any query of a boolean ``(batch, 1, q_len, kv_len)`` mask may see:
    one past the last position that is True in some row (``0`` when none is)."""
    seen = attention_mask.reshape(-1, attention_mask.shape[-1]).any(dim=0)
    return int(seen.nonzero().max()) + 1 if bool(seen.any()) else 0


def trimmed_to_visible(
    key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys, values and mask cut to the visible prefix of a boolean CPU mask, the mask dropped where it lets
    every row see every remaining position. Anything else is returned unchanged."""
    if attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.device.type != "cpu":
        return key, value, attention_mask
    visible = visible_prefix(attention_mask)
    if visible == 0:  # nothing to see: leave it to the kernel (fully masked rows)
        return key, value, attention_mask
    mask = attention_mask[..., :visible]
    key, value = key[:, :, :visible], value[:, :, :visible]
    return key, value, None if bool(mask.all()) else mask


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, with one-token decode steps computed on the K/V heads (see the module).

    ``query`` is ``(batch, heads, q_len, head_dim)``, ``key`` and ``value`` ``(batch, kv_heads, kv_len, head_dim)``;
    returns ``(batch, q_len, heads, head_dim)`` like every transformers attention function.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    special = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    measured = query.device.type == "cpu"  # where stacking was measured faster than enable_gqa
    if q_len != 1 or special or not measured or dropout > 0 or torch.compiler.is_compiling():
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    key, value, attention_mask = trimmed_to_visible(key, value, attention_mask)
    if attention_mask is not None and attention_mask.shape[1] != 1:  # a mask per head: not one to share
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    stacked = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        stacked, key, value, attn_mask=attention_mask, scale=scaling
    )  # (batch, kv_heads, heads / kv_heads, head_dim): a mask (batch, 1, 1, kv_len) broadcasts over the rows
    return out.reshape(batch, 1, heads, -1), None


AttentionInterface.register(FAST_DECODE_ATTENTION, grouped_sdpa_attention)
AttentionMaskInterface.register(FAST_DECODE_ATTENTION, sdpa_mask)


def enable_fast_decode(model, cache_implementation: str = "static"):
    """Switch ``model`` to the fast decode path; returns it.

    Sets ``attn_implementation="hav_sdpa"`` and ``model.generation_config.cache_implementation`` (``"static"``:
    transformers' ``StaticCache``, sized by each ``generate()`` call to its prompt plus ``max_new_tokens``; pass
    ``None`` to keep the ``DynamicCache``). Both are transformers' own settings, so ``generate()`` needs nothing
    more, and ``save_pretrained`` keeps the cache setting in ``generation_config.json``.
    """
    use_fast_kernel(model)
    model.generation_config.cache_implementation = cache_implementation
    return model


def use_fast_kernel(model):
    """Switch ``model`` to ``attn_implementation="hav_sdpa"``, or refuse by name where it cannot switch."""
    model.set_attn_implementation(FAST_DECODE_ATTENTION)
    if model.config._attn_implementation != FAST_DECODE_ATTENTION:  # transformers only warns
        raise ValueError(
            f"{type(model).__name__} cannot use attn_implementation={FAST_DECODE_ATTENTION!r}: its attention does not "
            "dispatch through transformers' AttentionInterface (transformers' own Falcon and BLOOM; BLOOM's ALiBi "
            "is eager-only in the plugin too). Convert Falcon to a variant (hav.convert) to use it."
        )
    return model
