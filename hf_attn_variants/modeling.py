"""The plugin's attention with G K/V heads, and the variant model classes built around it.

Families that cannot hold fewer K/V heads natively (GPT-2 and the like) get a thin subclass of each of
their own model classes: it builds the family's model, then swaps each attention module for a
``VariantAttention`` that reuses the original's children except the fused q/k/v projection, which it
rebuilds for G K/V heads. Module names, and so state-dict keys, stay the family's own.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D


def grouped_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    upcast: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that reads each K/V head once instead of copying it for every query head.

    The H/G query heads of a group are stacked against their shared K/V head, so the cache is never
    expanded to H heads. With G = H this is exactly transformers' eager attention.
    """
    batch, num_heads, q_len, head_dim = query.shape
    num_kv = key.shape[1]
    group = num_heads // num_kv
    if scaling is None:
        scaling = head_dim**-0.5
    stacked = query.reshape(batch, num_kv, group * q_len, head_dim)  # (batch, kv_heads, group * q_len, head_dim)
    if upcast:
        with torch.autocast(query.device.type, enabled=False):
            scores = torch.matmul(stacked.float(), key.float().transpose(-1, -2)) * scaling
    else:
        scores = torch.matmul(stacked, key.transpose(-1, -2)) * scaling
    scores = scores.view(batch, num_kv, group, q_len, -1)  # (batch, kv_heads, group, q_len, kv_len)
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]  # (batch, 1 or heads, q_len, kv_len)
        mask = mask.unsqueeze(2) if mask.shape[1] == 1 else mask.reshape(mask.shape[0], num_kv, group, q_len, -1)
        scores = scores + mask
    probs = nn.functional.softmax(scores, dim=-1).to(value.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(
        probs.view(batch, num_kv, group * q_len, -1), value
    )  # (batch, kv_heads, group * q_len, head_dim)
    out = out.view(batch, num_heads, q_len, head_dim).transpose(1, 2)  # (batch, q_len, heads, head_dim)
    return out, probs.view(batch, num_heads, q_len, -1)


def resized_projection(proj: nn.Module, out_features: int) -> nn.Module:
    """A projection like ``proj`` (``nn.Linear`` or GPT-2's ``Conv1D``) with ``out_features`` outputs."""
    weight = proj.weight
    with torch.device(weight.device):
        if isinstance(proj, Conv1D):
            new = Conv1D(out_features, proj.nx)
        else:
            new = nn.Linear(proj.in_features, out_features, bias=proj.bias is not None)
    return new.to(weight.dtype)


class VariantAttention(nn.Module):
    """Causal self-attention with ``num_key_value_heads`` K/V heads for a plugin family.

    Follows transformers' attention forward: project, reshape to heads, cache update, the kernel from
    ``ALL_ATTENTION_FUNCTIONS`` for ``config._attn_implementation`` (eager by default), output projection.
    """

    def __init__(self, config, original: nn.Module, family):
        super().__init__()
        self.config = config
        self.layer_idx = original.layer_idx
        self.num_heads = family.num_heads(config)
        self.num_key_value_heads = family.num_kv_heads(config)
        self.head_dim = family.head_dim(config)
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = family.attention_scaling(config, self.layer_idx)
        self.upcast = bool(family.upcast_flag and getattr(config, family.upcast_flag, False))
        self.is_causal = True
        self._qkv_sizes = family.qkv_sizes(config, self.num_key_value_heads)
        self._qkv_name = family.fused_qkv.rsplit(".", 1)[-1]
        self._out_name = family.out_proj
        self._attn_dropout = family.attn_dropout
        self._resid_dropout = family.resid_dropout
        for name, child in original.named_children():
            if name == self._qkv_name:
                child = resized_projection(child, sum(self._qkv_sizes))
            self.add_module(name, child)

    def forward(self, hidden_states, cache=None, attention_mask=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        input_shape = hidden_states.shape[:-1]
        head_shape = (*input_shape, -1, self.head_dim)
        q, k, v = getattr(self, self._qkv_name)(hidden_states).split(self._qkv_sizes, dim=-1)
        q = q.view(head_shape).transpose(1, 2)  # (batch, heads, seq, head_dim)
        k = k.view(head_shape).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
        v = v.view(head_shape).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)

        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, grouped_eager_attention)
        dropout = getattr(self, self._attn_dropout).p if (self._attn_dropout and self.training) else 0.0
        extra = {"upcast": self.upcast} if attention is grouped_eager_attention else {}
        out, weights = attention(
            self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **extra, **kwargs
        )

        out = out.reshape(*input_shape, -1).contiguous()  # (batch, seq, heads * head_dim)
        out = getattr(self, self._out_name)(out)
        if self._resid_dropout:
            out = getattr(self, self._resid_dropout)(out)
        return out, weights


def install_variant_attention(model: nn.Module, family) -> None:
    """Swap every attention module of ``family`` inside ``model`` for a ``VariantAttention``."""
    for name, module in list(model.named_modules()):
        if type(module) is family.attention_class:
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            new = VariantAttention(model.config, module, family)
            setattr(parent, child_name, new)
            model._init_weights(getattr(new, new._qkv_name))


def make_variant_model_class(family, base_class: type, config_class: type) -> type:
    """A subclass of ``base_class`` whose attention modules hold ``config.num_key_value_heads`` K/V heads."""

    def __init__(self, config, *args, **kwargs):
        base_class.__init__(self, config, *args, **kwargs)
        install_variant_attention(self, family)

    prefix = family.config_class.__name__.removesuffix("Config")
    return type(
        f"{prefix}AttnVariant{base_class.__name__.removeprefix(prefix)}",
        (base_class,),
        {
            "__init__": __init__,
            "__doc__": f"{base_class.__name__} with grouped K/V heads (hf_attn_variants).",
            "__module__": __name__,
            "config_class": config_class,
            "_attn_variant_base": base_class,
            "_supports_flex_attn": True,  # VariantAttention dispatches every kernel through ALL_ATTENTION_FUNCTIONS
        },
    )
