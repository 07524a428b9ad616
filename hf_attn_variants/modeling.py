"""The plugin's attention with G K/V heads, and the variant model classes built around it.

Families whose own config cannot hold G K/V heads (GPT-2, OPT, GPT-NeoX, GPT-J, BLOOM; GPTBigCode and
old-architecture Falcon for 1 < G < H) get a thin subclass of each of their own model classes: it builds the
family's model, then swaps each attention module for a ``VariantAttention`` that reuses the original's children
except the projections whose rows depend on the K/V heads (k and v, or the fused q/k/v), which it rebuilds for
G K/V heads. Module names, and so state-dict keys, stay the family's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D

from .decoding import FAST_DECODE_ATTENTION, grouped_sdpa_attention


def grouped_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    upcast: bool = False,
    score_bias: torch.Tensor | None = None,
    divide_scores: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that reads each K/V head once instead of copying it for every query head.

    The H/G query heads of a group are stacked against their shared K/V head, so the cache is never
    expanded to H heads. With G = H this is exactly transformers' eager attention. ``upcast`` computes the
    scores in float32; ``score_bias`` ``(batch, heads, 1, kv_len)`` is a bias per query head (ALiBi), added
    to the scores as BLOOM does (``baddbmm``). ``divide_scores`` divides the scores by sqrt(head_dim) in place of
    ``scaling`` (Falcon's order; a division and a multiplication differ in the last bit).
    """
    batch, num_heads, q_len, head_dim = query.shape
    num_kv = key.shape[1]
    group = num_heads // num_kv
    if scaling is None:
        scaling = head_dim**-0.5
    stacked = query.reshape(batch, num_kv, group * q_len, head_dim)  # (batch, kv_heads, group * q_len, head_dim)
    if upcast and score_bias is not None:
        raise ValueError("grouped_eager_attention: upcast with a score_bias is not implemented")
    if upcast:
        with torch.autocast(query.device.type, enabled=False):
            scores = torch.matmul(stacked.float(), key.float().transpose(-1, -2))
            scores = scores / math.sqrt(head_dim) if divide_scores else scores * scaling
    elif score_bias is not None:
        kv_len = key.shape[-2]
        bias = score_bias[..., :kv_len].reshape(batch, num_kv, group, 1, kv_len)  # one row per query head
        bias = bias.expand(-1, -1, -1, q_len, -1).reshape(batch * num_kv, group * q_len, kv_len)
        scores = torch.baddbmm(
            bias,
            stacked.reshape(batch * num_kv, group * q_len, head_dim),
            key.reshape(batch * num_kv, kv_len, head_dim).transpose(-1, -2),
            alpha=scaling,
        ).view(batch, num_kv, group * q_len, kv_len)
    elif divide_scores:
        scores = torch.matmul(stacked, key.transpose(-1, -2)) / math.sqrt(head_dim)
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
        else:  # the family's own Linear subclass (Falcon's computes ``x @ W.T + b``)
            new = type(proj)(proj.in_features, out_features, bias=proj.bias is not None)
    return new.to(weight.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of every head of ``x`` (``(batch, heads, seq, head_dim)``).

    ``cos`` and ``sin`` are ``(batch, seq, rotary_dims)``. ``interleaved`` rotates pairs of neighbouring dims
    (GPT-J's rotate_every_two), otherwise the two halves (GPT-NeoX's and Llama's rotate_half).
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (batch, 1, seq, rotary_dims)
    rot, rest = x[..., : cos.shape[-1]], x[..., cos.shape[-1] :]
    if interleaved:
        turned = torch.stack((-rot[..., 1::2], rot[..., ::2]), dim=-1).flatten(-2)
    else:
        half = rot.shape[-1] // 2
        turned = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat([(rot * cos) + (turned * sin), rest], dim=-1)


@dataclass(frozen=True)
class AttentionParts:
    """What one plugin family's attention does besides project, cache and attend, as small functions.

    ``attention_parts`` resolves a family's declaration into these once per layer, so ``VariantAttention.forward``
    reads as transformers' attention forward and no two flags decide the same step.

    Attributes:
        scale: ``q -> (q, scaling)``: the query and the scaling the kernel applies (OPT scales the query itself).
        positions: ``(q, k, position_embeddings) -> (q, k)``: rotary positions, or none.
        kernel_options: ``(eager, alibi, batch) -> dict``: the kernel's extra keyword arguments (the eager one's
            float32 scores, Falcon's division, BLOOM's ALiBi bias, which only the eager kernel adds).
        finish: ``(module, out, residual) -> out``: after the output projection (dropout, BLOOM's residual).
    """

    scale: Callable
    positions: Callable
    kernel_options: Callable
    finish: Callable


def attention_parts(family, config, layer_idx: int) -> AttentionParts:
    """The :class:`AttentionParts` of ``family``'s attention at ``layer_idx`` of a model of ``config``."""
    return AttentionParts(
        scale=query_scaling(family.attention_scaling(config, layer_idx), family.scale_query),
        positions=rotary_positions(family),
        kernel_options=kernel_options(family, config),
        finish=output_finish(family, config),
    )


def query_scaling(scaling: float, scale_query: bool) -> Callable:
    if scale_query:  # OPT: the query is scaled before the kernel, which then gets 1.0
        return lambda q: (q * scaling, 1.0)
    return lambda q: (q, scaling)


def no_positions(q, k, position_embeddings):
    return q, k


def rotary_positions(family) -> Callable:
    """``(q, k, position_embeddings) -> (q, k)`` rotated as the family's RoPE does (identity without RoPE)."""
    if not family.rotary_style:
        return no_positions
    interleaved = family.rotary_style == "interleaved"

    def rotate(q, k, position_embeddings):
        cos, sin = family.rotary_cos_sin(position_embeddings)
        return apply_rotary(q, cos, sin, interleaved), apply_rotary(k, cos, sin, interleaved)

    return rotate


def kernel_options(family, config) -> Callable:
    """``(eager, alibi, batch) -> dict``: the keyword arguments the family's kernel takes beyond transformers'."""
    eager_only = {"upcast": family.eager_upcast(config), "divide_scores": family.divide_scores}
    heads = family.num_heads(config)

    def options(eager: bool, alibi, batch: int) -> dict:
        if not family.alibi:
            return eager_only if eager else {}
        if not eager:
            raise ValueError(f"{family.name} adds ALiBi in its eager attention only, not in this kernel")
        return {**eager_only, "score_bias": alibi.view(batch, heads, 1, -1)}  # (batch, heads, 1, kv_len)

    return options


def output_finish(family, config) -> Callable:
    """``(module, out, residual) -> out`` after the output projection: its dropout, BLOOM's residual add."""

    def finish(module, out, residual):
        if family.resid_dropout:
            out = getattr(module, family.resid_dropout)(out)
        if family.residual_dropout_config:  # BLOOM's dropout_add
            p = getattr(config, family.residual_dropout_config)
            out = residual + nn.functional.dropout(out, p=p, training=module.training)
        return out

    return finish


class VariantAttention(nn.Module):
    """Causal self-attention with ``num_key_value_heads`` K/V heads for a plugin family.

    Follows transformers' attention forward: project, reshape to heads, rotary positions (if the family has
    them), cache update, the kernel from ``ALL_ATTENTION_FUNCTIONS`` for ``config._attn_implementation``
    (``grouped_eager_attention`` for eager), output projection. What differs between families (separate or
    fused projections and their layout) comes from the adapter; what it does besides project, cache and attend
    (rotary positions, where the scale is applied, the kernel's extra options, the output's dropout and residual)
    from the :class:`AttentionParts` resolved from the adapter's declaration.
    """

    def __init__(self, config, original: nn.Module, family):
        super().__init__()
        self.config = config
        self.family = family
        self.layer_idx = original.layer_idx
        self.num_heads = family.num_heads(config)
        self.num_key_value_heads = family.num_kv_heads(config)
        self.head_dim = family.head_dim(config)
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = family.attention_scaling(config, self.layer_idx)
        self.parts = attention_parts(family, config, self.layer_idx)
        self.attention_dropout_p = family.attention_dropout(config)
        self.is_causal = True
        kv_rows = self.num_key_value_heads * self.head_dim
        q_rows = self.num_heads * self.head_dim
        if family.fused:
            self._qkv_sizes = [q_rows, kv_rows, kv_rows]
            resized = {family.qkv[0]: q_rows + 2 * kv_rows}
        else:
            resized = {name: kv_rows for name in family.kv_modules}
        self.resized = tuple(resized)
        for name, child in original.named_children():
            if name in resized:
                child = resized_projection(child, resized[name])
            self.add_module(name, child)

    def _project(self, hidden_states):
        """q ``(batch, seq, heads, head_dim)``, k and v ``(batch, seq, kv_heads, head_dim)``."""
        family, input_shape = self.family, hidden_states.shape[:-1]
        head_shape = (*input_shape, -1, self.head_dim)
        if not family.fused:
            return [getattr(self, name)(hidden_states).view(head_shape) for name in family.qkv]
        qkv = getattr(self, family.qkv[0])(hidden_states)
        if family.fused_layout == "blocks":
            return [t.view(head_shape) for t in qkv.split(self._qkv_sizes, dim=-1)]
        per_group = self.num_key_value_groups
        qkv = qkv.view(*input_shape, self.num_key_value_heads, per_group + 2, self.head_dim)  # per K/V group
        q = qkv[..., :per_group, :].reshape(*input_shape, self.num_heads, self.head_dim)
        return [q, qkv[..., per_group, :], qkv[..., per_group + 1, :]]

    def forward(
        self,
        hidden_states,
        residual=None,  # BLOOM's attention adds the residual itself
        cache=None,
        attention_mask=None,
        position_embeddings=None,
        past_key_values=None,
        layer_past=None,  # GPT-NeoX's and BLOOM's name for the cache
        alibi=None,  # BLOOM: (batch * heads, 1, kv_len), one score bias row per query head
        **kwargs,
    ):
        cache = next((c for c in (cache, past_key_values, layer_past) if c is not None), None)
        parts, input_shape = self.parts, hidden_states.shape[:-1]
        q, k, v = self._project(hidden_states)
        q, scaling = parts.scale(q)
        q = q.transpose(1, 2)  # (batch, heads, seq, head_dim)
        k = k.transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
        v = v.transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
        if position_embeddings is None and self.family.rotary_style:  # GPT-J's layers before transformers 5.24
            position_embeddings = self.family.position_embeddings(self, kwargs["position_ids"], q.dtype)
        q, k = parts.positions(q, k, position_embeddings)

        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, grouped_eager_attention)
        if attention is sdpa_attention_forward:  # one-token steps with the query heads stacked per K/V head
            attention = grouped_sdpa_attention
        dropout = self.attention_dropout_p if self.training else 0.0
        extra = parts.kernel_options(attention is grouped_eager_attention, alibi, input_shape[0])
        out, weights = attention(self, q, k, v, attention_mask, dropout=dropout, scaling=scaling, **extra, **kwargs)

        out = out.reshape(*input_shape, -1).contiguous()  # (batch, seq, heads * head_dim)
        out = getattr(self, self.family.out_module)(out)
        return parts.finish(self, out, residual), weights


def install_variant_attention(model: nn.Module, family) -> None:
    """Swap every attention module of ``family`` inside ``model`` for a ``VariantAttention``."""
    for name, module in list(model.named_modules()):
        if type(module) is family.attention_class:
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            new = VariantAttention(model.config, module, family)
            setattr(parent, child_name, new)
            for resized in new.resized:
                model._init_weights(getattr(new, resized))


def make_variant_model_class(family, base_class: type, config_class: type) -> type:
    """A subclass of ``base_class`` whose attention modules hold ``config.num_key_value_heads`` K/V heads."""

    def __init__(self, config, *args, **kwargs):
        fast = config._attn_implementation == FAST_DECODE_ATTENTION
        if fast:  # some families' layers pick a class per kernel they know (Falcon)
            config._attn_implementation = "sdpa"
        # the base class resolves the kernel (an unset one, as in a config read from disk, becomes sdpa or eager);
        # only the plugin's own kernel is put back, never the unset value (which would drop the causal mask)
        base_class.__init__(self, config, *args, **kwargs)
        install_variant_attention(self, family)  # VariantAttention looks the kernel up at each call
        if fast:
            self.config._attn_implementation = FAST_DECODE_ATTENTION

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
            # VariantAttention dispatches every kernel through ALL_ATTENTION_FUNCTIONS; ALiBi is in the eager one only
            "_supports_flex_attn": not family.alibi,
            # and so can switch kernels with set_attn_implementation (transformers decides this from the source of
            # the class's module, and caches it on the class, where a subclass would inherit the base's answer)
            "_can_set_attn_implementation_cached_value": not family.alibi,
        },
    )
