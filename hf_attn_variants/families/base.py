"""Family adapters: where a family keeps its attention weights and how it counts K/V heads.

An adapter is a small declaration. ``NativeFamily`` covers families whose own config holds
``num_key_value_heads``: a variant is the family's own model with fewer K/V heads. ``PluginFamily``
covers families that always have as many K/V heads as query heads: a variant swaps the plugin's
``VariantAttention`` into the family's own model classes and is saved under a config registered by the
plugin. Both transform a checkpoint tensor by tensor, so one code path converts a model in memory, a
state dict, or a checkpoint on disk.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..heads import merge_grouped_qkv, regroup_kv_heads, split_fused, split_grouped_qkv
from ..merging import HeadLayout

# Bounds on a config's counts, checked before anything is sized from them: a config may come from anywhere, and
# 10**9 layers or heads would make a conversion or a cache plan grow without limit. They are far above any
# released model (about 200 layers, a few hundred query heads).
MAX_HEADS = 2**16
MAX_LAYERS = 2**12
HEAD_FIELDS = ("num_attention_heads", "n_head", "num_key_value_heads", "num_kv_heads", "n_head_kv")
LAYER_FIELDS = ("num_hidden_layers", "n_layer")
SIZE_FIELDS = ("hidden_size", "n_embd", "head_dim", "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size",
               "vocab_size", "max_position_embeddings", "n_positions")  # fmt: skip
# fields that may be None (the family's default)
OPTIONAL_FIELDS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "head_dim", "intermediate_size", "n_inner",
                   "ffn_hidden_size", "max_position_embeddings", "n_positions")  # fmt: skip
TORCH_DTYPES = ("float32", "bfloat16", "float16", "float64")  # the usual ones, named in errors
LEGACY_ROPE_TYPES = ("su", "mrope")  # older names that transformers' own configs still read (Phi-3, Qwen2-VL)


def check_count(where: str, name: str, value, bound: int | None = None) -> int:
    """``value``, checked to be a whole number from 1 to ``bound``.

    Raises:
        ValueError: anything else (0, a negative number, a float, a string, a bool, a number over ``bound``).
    """
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= (bound or value):
        return value
    kind = "" if isinstance(value, int) and not isinstance(value, bool) else f", not a {type(value).__name__}"
    limit = f"from 1 to {bound}" if bound else "of at least 1"
    raise ValueError(f"{where}: {name}={value!r} must be a whole number {limit}{kind}")


def check_config_values(values, where: str = "config") -> None:
    """Refuse a config (a ``config.json``'s dict or ``config.to_dict()``) whose head and layer counts, sizes, RoPE
    type, dtype or ``architectures`` no model could have, before transformers or anything else builds on them.

    Raises:
        ValueError: the first bad value, named with the valid choices.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{where} is a JSON {type(values).__name__}, not an object of config fields")
    for fields, bound in ((HEAD_FIELDS, MAX_HEADS), (LAYER_FIELDS, MAX_LAYERS), (SIZE_FIELDS, None)):
        for name in fields:
            if name in values and not (values[name] is None and name in OPTIONAL_FIELDS):
                check_count(where, name, values[name], bound)
    heads = next((values[n] for n in ("num_attention_heads", "n_head") if n in values), None)
    hidden = next((values[n] for n in ("hidden_size", "n_embd") if n in values), None)
    if heads and hidden and values.get("head_dim") is None and hidden % heads:
        choices = [h for h in range(1, min(hidden, MAX_HEADS) + 1) if hidden % h == 0]
        raise ValueError(
            f"{where}: hidden_size={hidden} is not a multiple of num_attention_heads={heads} (and no head_dim is "
            f"given); head counts that divide {hidden}: {choices}"
        )
    _check_rope(values, where)
    dtype = values.get("dtype", values.get("torch_dtype"))
    if isinstance(dtype, str) and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"{where}: dtype={dtype!r} is not a torch dtype; valid choices include {list(TORCH_DTYPES)}")
    names = values.get("architectures")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{where}: architectures={names!r} must be a list of model class names")


def _check_rope(values, where: str) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for name in ("rope_parameters", "rope_scaling"):
        rope = values.get(name)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise ValueError(f"{where}: {name}={rope!r} must be an object (with a rope_type) or null")
        per_layer_type = rope and all(isinstance(v, dict) for v in rope.values())  # Gemma 3: one per layer type
        for params in rope.values() if per_layer_type else [rope]:
            kind = params.get("rope_type", params.get("type"))
            valid = ["default", *sorted(ROPE_INIT_FUNCTIONS)]
            if kind is not None and kind not in valid and kind not in LEGACY_ROPE_TYPES:
                raise ValueError(f"{where}: {name} rope_type={kind!r} is not one of {valid}")


ROTARY_STYLES = (None, "half", "interleaved")  # how RoPE pairs the dims of a head (None: no RoPE)
KEY_NORM_FLAGS = ("qk_layernorm", "use_qk_norm")  # config flags that add norms on the keys


@dataclass(frozen=True)
class FamilyDocs:
    """How a family is described in the README's table of families (``families_table``); no conversion reads it.

    Attributes:
        saved_as: how a variant is saved.
        layout: how the family stores q, k and v.
        notes: the family's departures worth a line.
    """

    saved_as: str
    layout: str
    notes: str


@dataclass(frozen=True)
class FamilyAdapter:
    """What the conversion needs to know about one model family.

    Attributes:
        name: the family's name in tables and errors.
        model_types: the transformers ``model_type`` values it covers.
        notes: one line for the README's table of families.
        normed_keys: the family normalises keys after projecting them (calibrated merging then keeps
            its query projections and averages the keys; values are merged as usual).
        head_sliced: modules of the attention (relative to it) holding one weight slice per query head,
            reordered with the heads.
        gated_outputs: each head's attention output is scaled per dim before the output projection (a gate or a
            norm with heads x head_dim weights): calibrated merging then averages the values instead of turning
            them (an orthogonal map on a value would not pass through the gate).
    """

    name: str
    model_types: tuple[str, ...]
    notes: str = ""
    normed_keys: bool = False  # keys are normalised after projection: a map on them would not pass the norm
    head_sliced: tuple[str, ...] = ()  # modules in the attention with one weight slice per query head
    gated_outputs: bool = False  # attention outputs scaled per dim before the output projection

    native: ClassVar[bool] = True  # saved as the family's own model_type with fewer K/V heads

    def describe(self) -> FamilyDocs:
        """The family's row of the README's table: how a variant is saved, the q/k/v layout, the notes."""
        return FamilyDocs(saved_as="native (own model_type, fewer K/V heads)", layout="separate", notes=self.notes)

    def declaration_errors(self) -> list[str]:
        """What is wrong in this declaration (empty when it is valid); ``register_family`` refuses the others."""
        if self.rotary_style not in ROTARY_STYLES:
            return [f"rotary_style={self.rotary_style!r} is not one of {list(ROTARY_STYLES)}"]
        return []

    # -- head counts read off a config ------------------------------------------------------------------
    def num_heads(self, config) -> int:
        return config.num_attention_heads

    def num_kv_heads(self, config) -> int:
        return getattr(config, "num_key_value_heads", None) or self.num_heads(config)

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // self.num_heads(config)

    def num_layers(self, config) -> int:
        return config.num_hidden_layers

    def check_config(self, config) -> None:
        """Raise ``ValueError`` for a configuration of this family that is not valid or cannot be converted exactly.

        Here: the head and layer counts (whole numbers, within ``MAX_HEADS``/``MAX_LAYERS``, K/V heads dividing
        the query heads), sizes, RoPE type and dtype. A family with more to check extends it, calling
        ``super().check_config(config)`` first.
        """
        where = f"{self.name} config"
        check_config_values(config.to_dict(), where)
        heads = check_count(where, "num_attention_heads", self.num_heads(config), MAX_HEADS)
        kv_heads = check_count(where, "num_key_value_heads", self.num_kv_heads(config), MAX_HEADS)
        check_count(where, "num_hidden_layers", self.num_layers(config), MAX_LAYERS)
        check_count(where, "head_dim", self.head_dim(config))
        if kv_heads > heads or heads % kv_heads:
            choices = [g for g in range(1, heads + 1) if heads % g == 0]
            raise ValueError(
                f"{where}: num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}; "
                f"valid choices: {choices}"
            )

    # -- weights --------------------------------------------------------------------------------------
    def is_kv_tensor(self, key: str) -> bool:
        """Whether the checkpoint tensor ``key`` depends on the K/V heads (so a conversion changes it)."""
        return bool(self._kv_key.search(key))

    def convert_tensor(self, key, tensor, config, dst_kv, kv_init, seed=0) -> torch.Tensor:
        """The K/V tensor ``key`` (one ``is_kv_tensor`` accepts) regrouped for ``dst_kv`` K/V heads.

        Raises:
            ValueError: ``key`` is not a K/V tensor, or the tensor does not fit the config (its dtype, its rows).
        """
        if not self.is_kv_tensor(key):
            raise ValueError(f"{key}: not a K/V tensor of the {self.name} family; only those are converted")
        return self._convert_kv(key, tensor, config, dst_kv, kv_init, seed)

    def _convert_kv(self, key, tensor, config, dst_kv, kv_init, seed) -> torch.Tensor:
        raise NotImplementedError

    def kv_tensor_shape(self, key, shape, dtype, config, dst_kv) -> tuple[int, ...]:
        """The shape of the K/V tensor ``key`` (of ``shape`` and ``dtype`` in a checkpoint of ``config``) with
        ``dst_kv`` K/V heads, read without its data: the conversion runs on the meta device, so it checks what
        the real one does (a floating-point dtype, rows that fit the config).

        Raises:
            ValueError: the tensor does not fit the config.
        """
        meta = torch.empty(shape, dtype=dtype, device="meta")
        return tuple(self.convert_tensor(key, meta, config, dst_kv, "first").shape)

    def check_kv_tensor(self, key, shape, dtype, config) -> None:
        """Refuse the K/V tensor ``key`` of ``shape`` and ``dtype`` if a conversion of ``config``'s checkpoint
        would (an integer dtype, rows that do not fit the config), from the header alone.

        Raises:
            ValueError: the tensor does not fit the config.
        """
        self.kv_tensor_shape(key, shape, dtype, config, self.num_kv_heads(config))

    def kv_weight_count(self, config) -> int:
        """How many weight tensors (biases aside) of a whole model ``convert_tensor`` changes."""
        raise NotImplementedError

    # -- training -------------------------------------------------------------------------------------
    def projections(self, parts: str) -> tuple[str, ...]:
        """Module names (relative to a decoder layer) of the attention projections ``parts`` (letters of 'qkvo').

        Raises:
            ValueError: ``parts`` names no projection, or splits projections the family fuses.
        """
        raise NotImplementedError

    @property
    def lora_target_modules(self) -> tuple[str, ...]:
        """PEFT's default LoRA targets for this family's variants: every attention projection."""
        return self.projections("qkvo")

    @property
    def lora_fan_in_fan_out(self) -> bool:
        """Whether LoRA must transpose (GPT-2's ``Conv1D`` stores weights ``(in, out)``)."""
        return False

    @staticmethod
    def _check_parts(parts: str) -> str:
        if not parts or set(parts) - set("qkvo"):
            raise ValueError(f"projections {parts!r}: give letters of 'qkvo' (e.g. 'kv' or 'qkvo')")
        return parts

    def _fused_projections(self, parts: str, fused: str, out: str) -> tuple[str, ...]:
        """``projections`` of a family whose q, k and v live in the one module ``fused``."""
        qkv = set(self._check_parts(parts)) & set("qkv")
        if qkv and qkv != set("qkv"):
            raise ValueError(
                f"{self.name} fuses q, k and v in one projection ({fused}), so {''.join(sorted(qkv))!r} "
                "cannot be trained alone; choose 'qkvo' or 'all'"
            )
        return tuple(([fused] if qkv else []) + ([out] if "o" in parts else []))

    def qkv_sizes(self, config, kv_heads) -> list[int]:
        """Rows of q, k and v in a fused ``[q | k | v]`` projection with ``kv_heads`` K/V heads."""
        d = self.head_dim(config)
        return [self.num_heads(config) * d, kv_heads * d, kv_heads * d]

    def _convert_fused(self, key, tensor, config, dst_kv, kv_init, seed, out_dim=0):
        """A fused ``[q | k | v]`` tensor (rows along ``out_dim``) with its k and v blocks regrouped."""
        rows = tensor.movedim(out_dim, 0)  # (q + k + v rows, *rest)
        q, k, v = split_fused(rows, self.qkv_sizes(config, self.num_kv_heads(config)))
        k = self._regroup(key + ":k", k, config, dst_kv, kv_init, seed)
        v = self._regroup(key + ":v", v, config, dst_kv, kv_init, seed)
        return torch.cat([q, k, v]).movedim(0, out_dim).contiguous()

    # -- per-head views of a model in MHA form (merging heads with calibration) -------------------------
    @property
    def rotary_style(self) -> str | None:
        """How the family's RoPE pairs the dims of a head (``half``, ``interleaved``; ``None``: no RoPE)."""
        return "half"

    @property
    def permutable(self) -> bool:
        """Whether query heads may be reordered (not with ALiBi, whose slopes belong to head positions)."""
        return True

    @property
    def attention_module(self) -> str:
        """The attention module's name in a decoder layer."""
        raise NotImplementedError

    @property
    def out_module(self) -> str:
        """The output projection's name in the attention module."""
        raise NotImplementedError

    def keys_normed(self, config) -> bool:
        """Whether keys are normalised after projection (``normed_keys``, or a ``qk_layernorm``/``use_qk_norm`` flag
        set)."""
        return self.normed_keys or any(getattr(config, flag, False) is True for flag in KEY_NORM_FLAGS)

    def attention_modules(self, model) -> list[tuple[str, torch.nn.Module]]:
        """``(name, module)`` of every attention module of ``model``, in layer order."""
        name = self.attention_module
        return [(n, m) for n, m in model.named_modules() if n == name or n.endswith("." + name)]

    def head_views(self, attention, config) -> dict[str, torch.Tensor | None]:
        """Views of an MHA-form attention module's parameters, per head, writable in place.

        ``q``, ``k``, ``v``: ``(H, head_dim, hidden)``; ``q_bias``, ``k_bias``, ``v_bias``: ``(H, head_dim)`` or
        ``None``; ``o``: ``(hidden, H, head_dim)``, the output projection's columns.
        """
        raise NotImplementedError

    def head_layout(self, model, config) -> HeadLayout:
        """Which dims of a head the family's RoPE rotates together."""
        if self.rotary_style is None:
            return HeadLayout.rotary(self.head_dim(config), 0, None)
        # the frequencies the model computes with; a config's rotary_dim only where it keeps none (GPT-J)
        found = {2 * int(b.numel()) for n, b in model.named_buffers() if n.endswith("inv_freq")}
        if not found and getattr(config, "rotary_dim", None):
            found = {config.rotary_dim}
        if len(found) != 1:
            raise ValueError(f"{self.name}: cannot tell the rotary dims of the model (inv_freq sizes {found})")
        dims = found.pop()
        return HeadLayout.rotary(self.head_dim(config), dims, self.rotary_style)

    def _per_head(self, module, config, conv1d=False):
        """``module``'s weight rows ``(H, head_dim, in)`` and bias ``(H, head_dim)`` (views)."""
        rows = module.weight.T if conv1d else module.weight
        shape = (self.num_heads(config), self.head_dim(config))
        bias = None if module.bias is None else module.bias.unflatten(0, shape)
        return rows.unflatten(0, shape), bias

    def _fused_views(self, module, config, grouped: bool, conv1d=False) -> dict:
        rows = module.weight.T if conv1d else module.weight  # (3 H d, in)
        heads, d = self.num_heads(config), self.head_dim(config)
        shape = (heads, 3, d) if grouped else (3, heads, d)
        weight = rows.unflatten(0, shape)
        bias = None if module.bias is None else module.bias.unflatten(0, shape)
        views = {}
        for i, part in enumerate("qkv"):
            views[part] = weight[:, i] if grouped else weight[i]
            views[f"{part}_bias"] = None if bias is None else (bias[:, i] if grouped else bias[i])
        return views

    def _out_view(self, module, config, conv1d=False) -> torch.Tensor:
        cols = module.weight.T if conv1d else module.weight  # (hidden, H d)
        return cols.unflatten(1, (self.num_heads(config), self.head_dim(config)))

    # -- the converted model --------------------------------------------------------------------------
    def target_config(self, config, dst_kv):
        """The config of ``config``'s model with ``dst_kv`` K/V heads (same attention implementation)."""
        target = self._target_config(config, dst_kv)
        target._attn_implementation_internal = getattr(config, "_attn_implementation_internal", None)
        return target

    def _target_config(self, config, dst_kv):
        raise NotImplementedError

    def saves_natively(self, config, dst_kv) -> bool:
        """Whether the variant of ``config``'s model with ``dst_kv`` K/V heads is saved as the family's own model
        (its own model_type and config), which plain transformers loads without the plugin."""
        return True

    def own_config_values(self, config, dst_kv) -> dict:
        """The fields of the family's own config that give it ``dst_kv`` K/V heads (a ``dst_kv`` it
        ``saves_natively``)."""
        raise NotImplementedError

    def target_class(self, model_class: type, dst_kv: int, config) -> type:
        raise NotImplementedError

    @staticmethod
    def config_values(config) -> dict:
        """``config`` as a dict, less a GGUF quantization record (GGUF weights load dequantized)."""
        values = config.to_dict()
        quantization = values.get("quantization_config") or {}
        if quantization.get("quant_method") == "gguf":
            del values["quantization_config"]
        return values

    def _regroup(self, key, rows, config, dst_kv, kv_init, seed):
        if not rows.dtype.is_floating_point:  # pooled as integers, heads would be silently truncated
            raise ValueError(
                f"{key}: a K/V tensor of dtype {str(rows.dtype).removeprefix('torch.')}; only floating-point K/V "
                "weights can be regrouped (a quantized or damaged checkpoint? save it in float32, bfloat16 or float16)"
            )
        src_kv, head_dim = self.num_kv_heads(config), self.head_dim(config)
        if rows.shape[0] != src_kv * head_dim:
            raise ValueError(
                f"{key}: {rows.shape[0]} K/V rows, but the config says {src_kv} K/V heads x head_dim {head_dim} = "
                f"{src_kv * head_dim}; the checkpoint does not match its config"
            )
        generator = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
        return regroup_kv_heads(
            rows, self.num_heads(config), self.num_kv_heads(config), dst_kv, kv_init, generator=generator
        )


@dataclass(frozen=True)
class NativeFamily(FamilyAdapter):
    """A family with separate q/k/v/o projections and ``num_key_value_heads`` in its own config.

    Attributes:
        rotary_style: how its RoPE pairs the dims of a head: ``half`` (``rotate_half``, Llama), ``interleaved``
            (adjacent dims, Cohere, GLM) or ``None`` (no RoPE). Calibrated merges turn each pair as one
            complex number, so a wrong pairing would change the function; derived families have it probed
            (``generic.rope_pairing``).
    """

    kv_projections: tuple[str, ...] = ("self_attn.k_proj", "self_attn.v_proj")
    q_projection: str = "self_attn.q_proj"
    o_projection: str = "self_attn.o_proj"
    kv_shaped: tuple[str, ...] = ()  # other modules whose weights have one slice per K/V head (OLMo-2's k_norm)
    rotary_style: str | None = "half"

    def __post_init__(self):
        parts = "|".join(re.escape(p) for p in self.kv_projections + self.kv_shaped)
        object.__setattr__(self, "_kv_key", re.compile(rf"(?:^|\.)(?:{parts})\.(?:weight|bias)$"))

    def _convert_kv(self, key, tensor, config, dst_kv, kv_init, seed):
        return self._regroup(key, tensor, config, dst_kv, kv_init, seed)

    def kv_weight_count(self, config) -> int:
        return len(self.kv_projections + self.kv_shaped) * self.num_layers(config)

    def projections(self, parts):
        k, v = self.kv_projections
        names = {"q": self.q_projection, "k": k, "v": v, "o": self.o_projection}
        return tuple(dict.fromkeys(names[p] for p in self._check_parts(parts)))

    @property
    def attention_module(self) -> str:
        return self.q_projection.rpartition(".")[0]

    @property
    def out_module(self) -> str:
        return self._local(self.o_projection)

    def _local(self, name: str) -> str:
        return name.rpartition(".")[2]

    def head_views(self, attention, config):
        views = {}
        for part, name in zip("qkv", (self.q_projection, *self.kv_projections), strict=True):
            views[part], views[f"{part}_bias"] = self._per_head(getattr(attention, self._local(name)), config)
        views["o"] = self._out_view(getattr(attention, self._local(self.o_projection)), config)
        return views

    def own_config_values(self, config, dst_kv):
        return {"num_key_value_heads": dst_kv}

    def _target_config(self, config, dst_kv):
        return config.__class__.from_dict({**self.config_values(config), **self.own_config_values(config, dst_kv)})

    def target_class(self, model_class, dst_kv, config):
        return model_class


@dataclass(frozen=True)
class NativeFusedFamily(NativeFamily):
    """A native family whose q, k and v share one fused ``[q | k | v]`` projection (Phi-3's ``qkv_proj``)."""

    fused_qkv: str = "self_attn.qkv_proj"
    kv_projections: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "_kv_key", re.compile(rf"(?:^|\.){re.escape(self.fused_qkv)}\.(?:weight|bias)$"))

    def _convert_kv(self, key, tensor, config, dst_kv, kv_init, seed):
        return self._convert_fused(key, tensor, config, dst_kv, kv_init, seed)

    def kv_weight_count(self, config) -> int:
        return self.num_layers(config)

    @property
    def attention_module(self) -> str:
        return self.fused_qkv.rpartition(".")[0]

    def head_views(self, attention, config):
        views = self._fused_views(getattr(attention, self._local(self.fused_qkv)), config, grouped=False)
        views["o"] = self._out_view(getattr(attention, self._local(self.o_projection)), config)
        return views

    def projections(self, parts):
        return self._fused_projections(parts, self.fused_qkv, self.o_projection)

    def describe(self) -> FamilyDocs:
        return replace(super().describe(), layout=f"fused `{self.fused_qkv}` (q, k, v blocks)")


def head_dim_scaling(config, layer_idx: int) -> float:
    """The usual score scale of a plugin family: 1/sqrt(head_dim), the same in every layer."""
    return (config.hidden_size // config.num_attention_heads) ** -0.5


QKV_LAYOUTS = ("blocks", "grouped")  # rows of a fused q/k/v projection


@dataclass(frozen=True)
class PluginFamily(FamilyAdapter):
    """A family that always has H K/V heads; its variants run the plugin's ``VariantAttention``.

    What differs between such families is declared here; ``VariantAttention`` reads it.

    Attributes:
        attention_module: the attention module, relative to a decoder layer (``attn``, ``self_attn``).
        qkv: names of its q/k/v projections: three (``q_proj``, ``k_proj``, ``v_proj``) or one fused module.
        fused_layout: the rows of a fused projection: ``blocks`` ``[q | k | v]`` (GPT-2), or ``grouped``,
            interleaved per K/V group ``[q .. q k v] x G``, which with G = H is GPT-NeoX's per-head layout
            ``[q k v] x H`` (so MHA stays the family's own layout; see ``heads.split_grouped_qkv``).
        out_module: the output projection, in the attention module; resid_dropout: a dropout module applied after it, if any.
        dropout_config: the config field holding the dropout on attention probabilities.
        conv1d: the projections are GPT-2's ``Conv1D`` (weights stored ``(in, out)``).
        rotary_style: ``None``, ``half`` (rotate_half, GPT-NeoX) or ``interleaved`` (rotate_every_two, GPT-J), applied
            to the first ``cos.shape[-1]`` dims of each head, with cos/sin from ``rotary_cos_sin``.
        scale_query: the scale multiplies the projected query and the kernel gets 1.0 (OPT's order).
        alibi: the layer passes ``alibi``, one score bias row per query head (BLOOM); eager attention only.
        residual_dropout_config: the attention itself adds the layer's residual (its second argument) after
            the output projection, with the dropout of this config field (BLOOM's ``dropout_add``).
        attention_scaling: ``(config, layer_idx) -> float``, the factor applied to the attention scores.
        divide_scores: eager attention divides the scores by sqrt(head_dim) instead of multiplying them by
            ``attention_scaling`` (Falcon's ``/= sqrt(head_dim)``; the two differ in the last bit).
        upcast_flag: the config field that asks eager attention to compute scores in float32.
        attention_class: the family's own attention module class, replaced in variant models.
        model_classes: the family's model classes that get a variant subclass.
        config_class: the family's config class; the variant config subclasses it.
    """

    attention_module: str = ""
    qkv: tuple[str, ...] = ()
    fused_layout: str = "blocks"
    out_module: str = ""
    resid_dropout: str | None = None
    dropout_config: str | None = None
    conv1d: bool = False
    rotary_style: str | None = None
    scale_query: bool = False
    alibi: bool = False
    residual_dropout_config: str | None = None
    attention_scaling: object = None  # (config, layer_idx) -> float
    divide_scores: bool = False
    upcast_flag: str | None = None
    attention_class: type | None = None
    model_classes: tuple[type, ...] = ()
    config_class: type | None = None

    native: ClassVar[bool] = False

    def __post_init__(self):
        names = "|".join(re.escape(n) for n in self.kv_modules)
        key = rf"(?:^|\.){re.escape(self.attention_module)}\.(?:{names})\.(?:weight|bias)$"
        object.__setattr__(self, "_kv_key", re.compile(key))

    @property
    def fused(self) -> bool:
        return len(self.qkv) == 1

    @property
    def kv_modules(self) -> tuple[str, ...]:
        """The projections (names in the attention module) whose rows depend on the K/V heads."""
        return self.qkv if self.fused else self.qkv[1:]

    def describe(self) -> FamilyDocs:
        rows = {"blocks": "q, k, v blocks", "grouped": "[q k v] per head; a variant's: [q .. q k v] per K/V group"}
        fused = f"fused `{self.attention_module}.{self.qkv[0]}` ({rows[self.fused_layout]})" + (
            ", Conv1D" if self.conv1d else ""
        )
        return FamilyDocs(
            saved_as=f"plugin config `{self.variant_model_type}` (MHA: plain `{self.model_types[0]}`)",
            layout=fused if self.fused else "separate",
            notes=self.notes,
        )

    def declaration_errors(self) -> list[str]:
        """What is missing or wrong in this declaration (empty when it is complete)."""
        required = ("attention_module", "qkv", "out_module", "attention_class", "config_class", "model_classes")
        missing = [f for f in (*required, "attention_scaling") if not getattr(self, f)]
        if missing:
            return [f"does not declare {missing}"]
        errors = []
        if len(self.qkv) not in (1, 3):
            errors.append(f"qkv={self.qkv!r} must name one fused projection or three (q, k, v)")
        if self.fused_layout not in QKV_LAYOUTS:
            errors.append(f"fused_layout={self.fused_layout!r} is not one of {list(QKV_LAYOUTS)}")
        # pairs of flags that would decide the same step twice
        if self.scale_query and self.divide_scores:
            errors.append("sets scale_query and divide_scores: the scores would be scaled twice")
        if self.alibi and self.upcast_flag:
            errors.append("sets alibi and upcast_flag: the eager kernel adds ALiBi to scores in the model's dtype only")
        if self.residual_dropout_config and self.resid_dropout:
            errors.append("sets residual_dropout_config and resid_dropout: the output would be dropped out twice")
        return errors + super().declaration_errors()

    def attention_dropout(self, config) -> float:
        return float(getattr(config, self.dropout_config, 0.0) or 0.0) if self.dropout_config else 0.0

    def eager_upcast(self, config) -> bool:
        """Whether the eager kernel computes the scores in float32."""
        return bool(self.upcast_flag and getattr(config, self.upcast_flag, False))

    def rotary_cos_sin(self, position_embeddings):
        """``(cos, sin)``, each ``(batch, seq, rotary_dims)``, from the ``position_embeddings`` the layer passes."""
        return position_embeddings

    def position_embeddings(self, module, position_ids, dtype):
        """The ``position_embeddings`` of ``position_ids`` for ``module`` (the attention), for a transformers whose
        layers pass only the ids."""
        raise ValueError(f"{self.name}'s layers passed no position_embeddings to the attention")

    @property
    def variant_model_type(self) -> str:
        return f"attn_variant_{self.model_types[0]}"

    def _convert_kv(self, key, tensor, config, dst_kv, kv_init, seed):
        if not self.fused:
            return self._regroup(key, tensor, config, dst_kv, kv_init, seed)
        out_dim = -1 if (self.conv1d and tensor.ndim == 2) else 0
        if self.fused_layout == "blocks":
            return self._convert_fused(key, tensor, config, dst_kv, kv_init, seed, out_dim)
        rows = tensor.movedim(out_dim, 0)  # ((H + 2G) * head_dim, *rest), interleaved per K/V group
        heads = self.num_heads(config)
        q, k, v = split_grouped_qkv(rows, heads, self.num_kv_heads(config))
        k = self._regroup(key + ":k", k, config, dst_kv, kv_init, seed)
        v = self._regroup(key + ":v", v, config, dst_kv, kv_init, seed)
        return merge_grouped_qkv(q, k, v, heads).movedim(0, out_dim).contiguous()

    def kv_weight_count(self, config) -> int:
        return len(self.kv_modules) * self.num_layers(config)

    @property
    def permutable(self) -> bool:
        return not self.alibi

    def head_views(self, attention, config):
        if self.fused:
            views = self._fused_views(
                getattr(attention, self.qkv[0]), config, self.fused_layout == "grouped", self.conv1d
            )
        else:
            views = {}
            for part, name in zip("qkv", self.qkv, strict=True):
                views[part], views[f"{part}_bias"] = self._per_head(getattr(attention, name), config, self.conv1d)
        views["o"] = self._out_view(getattr(attention, self.out_module), config, self.conv1d)
        return views

    def projections(self, parts):
        names = [f"{self.attention_module}.{n}" for n in (*self.qkv, self.out_module)]
        if self.fused:
            return self._fused_projections(parts, *names)
        by_letter = dict(zip("qkvo", names, strict=True))
        return tuple(dict.fromkeys(by_letter[p] for p in self._check_parts(parts)))

    @property
    def lora_fan_in_fan_out(self) -> bool:
        return self.conv1d

    def saves_natively(self, config, dst_kv) -> bool:
        """MHA is the family's own model (no plugin needed to load it); other head counts need the plugin."""
        return dst_kv == self.num_heads(config)

    def own_config_values(self, config, dst_kv):
        return {}

    def _target_config(self, config, dst_kv):
        from .registry import variant_config_class

        values = self.config_values(config)
        values.pop("model_type", None)
        if self.saves_natively(config, dst_kv):
            values.pop("num_key_value_heads", None)
            return self.config_class.from_dict({**values, **self.own_config_values(config, dst_kv)})
        values.update(self.plugin_config_values(config, dst_kv))
        return variant_config_class(self).from_dict({**values, "num_key_value_heads": dst_kv})

    def plugin_config_values(self, config, dst_kv) -> dict:
        """Fields of the family's own config to set in a plugin variant's config (its own K/V head flags)."""
        return {}

    def target_class(self, model_class, dst_kv, config):
        from .registry import variant_model_classes

        base = getattr(model_class, "_attn_variant_base", model_class)
        if self.saves_natively(config, dst_kv):
            return base
        variants = variant_model_classes(self)
        if base not in variants:
            raise ValueError(
                f"{base.__name__} has no attention variant; supported {self.name} classes: "
                f"{sorted(c.__name__ for c in variants)}"
            )
        return variants[base]


@dataclass(frozen=True)
class MixedFamily(PluginFamily):
    """A plugin family whose own config holds some K/V head counts (a ``multi_query`` flag, a K/V head field).

    A variant whose G the family's own config can hold is saved as the family's own model; any other G runs
    the plugin's ``VariantAttention`` under the plugin's config, exactly as for a ``PluginFamily``. Subclasses
    say which G their config holds in ``saves_natively``, and its fields for them in ``own_config_values``.

    Attributes:
        own_counts: the G the family's own config holds, for the README's table.
    """

    own_counts: str = ""

    def num_kv_heads(self, config) -> int:
        if config.model_type == self.variant_model_type:
            return config.num_key_value_heads
        return self.own_kv_heads(config)

    def own_kv_heads(self, config) -> int:
        """The K/V heads of the family's own config (read off its flags, not ``num_key_value_heads``)."""
        raise NotImplementedError

    def describe(self) -> FamilyDocs:
        return FamilyDocs(
            saved_as=f"native for {self.own_counts}; other G: plugin config `{self.variant_model_type}`",
            layout=f"fused `{self.attention_module}.{self.qkv[0]}`, [q .. q k v] per K/V group "
            "(MHA: [q k v] per head; MQA: [q | k | v] blocks)",
            notes=self.notes,
        )
