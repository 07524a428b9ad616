"""Families derived from transformers itself: a tiny model of a model_type, read for the native pattern.

A model type whose config holds ``num_key_value_heads`` and whose decoder layers each have one attention class
with separate ``q_proj``/``k_proj``/``v_proj`` and an output projection (or a fused ``[q | k | v]`` ``qkv_proj``)
is the same case as Llama: a variant is the family's own model with fewer K/V heads, and conversion only
regroups K/V rows. ``derive_declaration`` builds tiny models of the type on the meta device, with 2 K/V heads and
with 1, and reads the declaration off their modules and shapes (which tensors change with the K/V heads, which
norms have one slice per K/V head or per query head); where the type departs from the pattern it raises
``Refused`` with the reason. ``scripts/derive_families.py`` writes every type's verdict to ``derived.py``, and
``tests/test_derived_families.py`` proves each derived type (exact identity, expansion and pooling, the cache,
reload by plain transformers).

Why a checked-in list rather than a derivation at ``family_for`` time: a structural match is not a proof.
``family_for`` stays a dictionary lookup, every type it accepts is one the test matrix proves, and a model type
newer than the list is refused by name until it is derived and proven.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import torch

from .base import KEY_NORM_FLAGS, NativeFamily, NativeFusedFamily


@dataclass(frozen=True)
class DerivedFamily(NativeFamily):
    """A native family declared by ``derive_declaration`` from transformers' own modules, one per model_type.

    Attributes:
        fixed_heads: parameters of the attention with one entry per query head that no module holds (attention
            sinks, per-head gates); query heads then keep their order (no ``grouping='similarity'``).
    """

    fixed_heads: tuple[str, ...] = ()
    refused_settings: tuple[tuple[str, object, str], ...] = ()

    @property
    def permutable(self) -> bool:
        return not self.fixed_heads

    def check_config(self, config) -> None:
        super().check_config(config)
        check_settings(self, config)


@dataclass(frozen=True)
class DerivedFusedFamily(NativeFusedFamily):
    """A derived native family whose q, k and v share one fused ``[q | k | v]`` projection."""

    fixed_heads: tuple[str, ...] = ()
    refused_settings: tuple[tuple[str, object, str], ...] = ()

    @property
    def permutable(self) -> bool:
        return not self.fixed_heads

    def check_config(self, config) -> None:
        super().check_config(config)
        check_settings(self, config)


def check_settings(family, config) -> None:
    """Refuse a config with a setting the derivation found to build another attention (``refused_settings``:
    ``(field, value, reason)``, e.g. Cohere's ``use_qk_norm=True``, whose key norm has one row per K/V head)."""
    for field, value, reason in family.refused_settings:
        if getattr(config, field, None) == value:
            raise ValueError(f"{family.name} with {field}={value!r} is not supported: {reason}")


HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 2, 4, 2, 16, 96
INTERMEDIATE, EXPERTS, EXPERT_INTERMEDIATE, WINDOW = 128, 4, 32, 4

# config fields shrunk wherever the model type's config has them (value: the tiny size)
TINY_SIZES = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "vocab_size": VOCAB,
    "intermediate_size": INTERMEDIATE,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "sliding_window": WINDOW,
    "attention_chunk_size": WINDOW,
    # mixtures of experts: few small experts, two per token, the first layer dense where a type has one
    "num_experts": EXPERTS,
    "num_local_experts": EXPERTS,
    "n_routed_experts": EXPERTS,
    "moe_num_experts": EXPERTS,
    "num_experts_per_tok": 2,
    "moe_k": 2,
    "moe_topk": 2,
    "top_k_experts": 2,
    "moe_intermediate_size": EXPERT_INTERMEDIATE,
    "shared_expert_intermediate_size": EXPERT_INTERMEDIATE,
    "expert_ffn_hidden_size": EXPERT_INTERMEDIATE,
    "intermediate_size_mlp": INTERMEDIATE,
    "n_group": 1,
    "topk_group": 1,
    "max_window_layers": 1,
    "first_k_dense_replace": 1,
    "num_dense_layers": 1,
    "moe_layer_start_index": 1,
    "moe_layer_end_index": LAYERS - 1,
    "decoder_sparse_step": 1,
    "router_jitter_noise": 0.0,
    # dropouts off: equivalence is checked in eval mode, but some types apply them regardless
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "embedding_dropout": 0.0,
}
# per-type changes to the tiny config, each with the reason
TINY_OVERRIDES = {
    "dots1": {"n_shared_experts": 1},  # its default None builds no shared expert
    "zaya": {"num_experts_per_tok": 1},  # the only value its config accepts
}
# types refused by hand: those whose tiny model transformers cannot build (the reasons read off their configs and
# modeling code), and any derived type that fails the equivalence matrix (with what failed)
KNOWN_DEPARTURES = {
    "bamba": "hybrid: Mamba-2 mixer layers with a few attention layers (layers_block_type)",
    "falcon_h1": "hybrid: a Mamba-2 mixer next to the attention in every layer",
    "recurrent_gemma": "hybrid: RG-LRU recurrent blocks with local attention (block_types)",
    "zamba": "hybrid: Mamba layers with one attention block shared across layers",
    "lfm2_moe": "hybrid: short-convolution layers with attention (layer_types 'conv'), as LFM2",
    "qwen4_exp_text": "hybrid: linear-attention layers with indexed attention (layer_types)",
    "gemma3n_text": "K/V caches shared across layers (num_kv_shared_layers), AltUp and per-layer inputs",
    "gemma4_text": "head_dim and K/V heads vary per layer (per_layer_config)",
    "gemma4_unified_text": "head_dim and K/V heads vary per layer (per_layer_config)",
    "gemma4_assistant": "an assistant (draft) model that reads the K/V of a Gemma 4 target model",
    "dots3_note_text": "K/V heads vary per layer (per_layer_config)",
    # fails the matrix: transformers' own model does not run on the tiny config
    "dory": "unproven: transformers' own Dory fails on a tiny random model (its attention scores and mask differ "
    "in length, RuntimeError in the eager attention)",
}
PER_LAYER_LISTS = ("mlp_layer_types", "no_rope_layers", "num_attention_heads_per_layer", "intermediate_size")


def config_class(model_type: str) -> type:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]


@contextlib.contextmanager
def quiet():
    """Silence transformers' and torch's warnings about the odd tiny sizes."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)


def tiny_config_values(defaults) -> dict:
    """The fields to give a config class whose default instance is ``defaults``, for a tiny model."""
    values = {k: v for k, v in TINY_SIZES.items() if hasattr(defaults, k)}
    layers = getattr(defaults, "num_hidden_layers", None)
    kept = list(range(LAYERS))
    layer_types = getattr(defaults, "layer_types", None)
    settable = not isinstance(getattr(type(defaults), "layer_types", None), property)
    if isinstance(layer_types, (list, tuple)) and layer_types and settable:
        distinct = list(dict.fromkeys(layer_types))
        kept = [layer_types.index(t) for t in distinct]  # one layer of each kind, in order
        if len(kept) < LAYERS:
            kept = sorted(set(kept) | set(range(LAYERS)))[:LAYERS]
        values["layer_types"] = [layer_types[i] for i in kept]
    values["num_hidden_layers"] = len(kept)
    for name in PER_LAYER_LISTS:
        found = getattr(defaults, name, None)
        if isinstance(found, (list, tuple)) and layers and len(found) == layers:
            small = {"num_attention_heads_per_layer": HEADS, "intermediate_size": INTERMEDIATE}.get(name)
            values[name] = [small if small is not None else found[i] for i in kept]
    return values


def tiny_config(model_type: str, **overrides):
    """A tiny random config of ``model_type``: 2 layers, hidden 64, 4 query heads, 2 K/V heads, vocab 96."""
    cls = config_class(model_type)
    with quiet():
        values = tiny_config_values(cls())
        values.update(TINY_OVERRIDES.get(model_type, {}))
        values.update(overrides)
        return cls(**values)


def tiny_meta_model(config):
    """The causal LM of ``config``, built on the meta device (no memory, no init)."""
    import transformers

    with quiet(), torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


# -- reading the declaration off a tiny model ------------------------------------------------------------
OUT_NAMES = ("o_proj", "out_proj", "dense")
LATENT = ("kv_a_proj_with_mqa", "kv_b_proj", "kv_a_proj", "q_a_proj")
RECURRENT = ("linear_attn", "mamba", "mixer", "conv", "recurrent", "temporal_block", "ssm")
LINEAR_ATTENTION = ("conv1d", "forget_gate", "A_log", "dt_bias", "in_proj", "lru", "rg_lru")
# layer kinds tried in a type's layer_types, to find those that build a layer without the native attention
LAYER_KINDS = ("full_attention", "sliding_attention", "chunked_attention", "linear_attention", "conv", "mamba",
               "attention", "recurrent", "hybrid", "moe")  # fmt: skip


class Refused(ValueError):
    """A model type the generic adapter cannot declare; the message is the reason, for the refused table."""


def decoder_layers(model, config) -> tuple[str, list]:
    """The name and the modules of ``model``'s decoder layers (the module list with one entry per layer)."""
    count = config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and name.rpartition(".")[2] == "layers":
            return name, list(module)
    raise Refused("no decoder-layer list (`layers`) with one module per num_hidden_layers")


def _attention_of(layer) -> tuple[str, torch.nn.Module] | None:
    """``(name, module)`` of the layer's child with q/k/v (or fused qkv) projections, or ``None``."""
    for name, module in layer.named_children():
        children = dict(module.named_children())
        if {"k_proj", "v_proj"} <= set(children) or "qkv_proj" in children:
            return name, module
    return None


def _kind_of_layer(layer) -> str:
    """What a layer without the native attention has instead, for the reason."""
    for name, module in layer.named_children():
        inner = {n.rpartition(".")[2] for n, _ in module.named_modules()} | {
            n.rpartition(".")[2] for n, _ in module.named_parameters()
        }
        latent = [n for n in LATENT if n in inner]
        if latent:
            return f"multi-head latent attention ({', '.join(latent)}: K/V come from a shared latent, not K/V heads)"
        recurrent = sorted(inner & set(LINEAR_ATTENTION))
        if recurrent or any(word in name.lower() for word in RECURRENT):
            return f"linear attention or a state-space/convolution mixer (`{name}`: {', '.join(recurrent) or 'no K/V heads'})"
    return f"no attention with q/k/v projections (children: {', '.join(n for n, _ in layer.named_children())})"


def _missing_attention(layers, missing) -> Refused:
    kinds = sorted({_kind_of_layer(layers[i]) for i in missing})
    if len(missing) == len(layers):
        return Refused("; ".join(kinds))
    return Refused(f"hybrid: decoder layers {missing} of a tiny model have {'; '.join(kinds)}")


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def derive_declaration(model_type: str) -> dict:
    """The declaration of ``model_type``'s family, read off tiny models built on the meta device.

    Returns the keyword arguments of :class:`DerivedFamily` (name, model_types and the module names).

    Raises:
        Refused: the type departs from the native pattern; the message says where.
    """
    if model_type in KNOWN_DEPARTURES:
        raise Refused(KNOWN_DEPARTURES[model_type])
    declaration = _derive_or_refuse(model_type)
    refused = []
    for field, value in switchable_settings(model_type):
        try:
            other = _derive(model_type, probe=False, **{field: value})
        except Refused as reason:
            refused.append((field, value, str(reason)))
            continue
        except Exception:  # noqa: BLE001 - transformers builds no model with this setting: nothing to refuse
            continue
        different = [k for k in {**declaration, **other} if k not in UNCOMPARED and declaration.get(k) != other.get(k)]
        if "normed_keys" in different and (field in KEY_NORM_FLAGS or not other.get("normed_keys")):
            different.remove("normed_keys")  # keys_normed reads the flag; or keys taken as normed needlessly
        if different:
            refused.append((field, value, f"it declares {', '.join(dict.fromkeys(different))} differently"))
    if refused:
        declaration["refused_settings"] = tuple(refused)
        said = ", ".join(f"{field}={value}" for field, value, _ in refused)
        declaration["notes"] = ", ".join(filter(None, [declaration["notes"], f"refused with {said}"]))
    return declaration


UNCOMPARED = ("notes", "rotary_style", "gated_outputs")  # notes, and what only the type's probes tell
# bool config fields that change no attention module (the survey does not flip them)
NOT_ATTENTION_SETTINGS = {
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_cache", "tie_word_embeddings",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_encoder_decoder", "output_router_logits",
    "mlp_bias", "norm_topk_prob", "lm_head_bias", "use_bidirectional_attention", "use_sliding_window",
    "enable_moe_fp32_combine", "moe_apply_router_weight_on_input", "mup_enabled",
}  # fmt: skip


def switchable_settings(model_type: str) -> list[tuple[str, bool]]:
    """``(field, the other value)`` of every bool field of the type's config that may change its attention."""
    with quiet():
        defaults = config_class(model_type)()
    return [
        (k, not v)
        for k, v in sorted(defaults.to_dict().items())
        if isinstance(v, bool) and k not in NOT_ATTENTION_SETTINGS and not k.startswith("_")
    ]


def _derive_or_refuse(model_type: str, probe: bool = True, **overrides) -> dict:
    try:
        return _derive(model_type, probe, **overrides)
    except Refused:
        raise
    except Exception as error:  # noqa: BLE001 - whatever transformers raises on the tiny model is the reason
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise Refused(f"no tiny model can be built from its config ({type(error).__name__}: {first})") from None


def _derive(model_type: str, probe: bool = True, **overrides) -> dict:
    import transformers

    cls = config_class(model_type)
    with quiet():
        defaults = cls()
    if getattr(defaults, "is_encoder_decoder", False):
        raise Refused("encoder-decoder model: its causal LM is the decoder half of a seq2seq model")
    composite = [k for k, v in defaults.to_dict().items() if isinstance(v, dict) and "model_type" in v]
    if composite:
        raise Refused(f"composite config ({', '.join(composite)}): a wrapper of several models, not one decoder")
    if not hasattr(defaults, "num_key_value_heads"):
        raise Refused("its config has no num_key_value_heads: every layer has as many K/V heads as query heads")
    config = tiny_config(model_type, **overrides)
    fewer = tiny_config(model_type, **overrides, num_key_value_heads=1)
    model, other = tiny_meta_model(config), tiny_meta_model(fewer)
    if type(model) is not transformers.AutoModelForCausalLM._model_mapping[cls]:
        raise Refused(f"AutoModelForCausalLM builds {type(model).__name__}, not the type's own causal LM")
    layers_name, layers = decoder_layers(model, config)
    found = [_attention_of(layer) for layer in layers]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        raise _missing_attention(layers, missing)
    names, classes = {name for name, _ in found}, sorted({type(m).__name__ for _, m in found})
    if len(names) != 1 or len(classes) != 1:
        raise Refused(f"hybrid: its layers mix attention modules ({', '.join(sorted(names))}: {', '.join(classes)})")
    attention = names.pop()
    _check_other_layer_kinds(model_type, config, classes[0])
    return _declare(model_type, config, model, other, layers_name, attention, [m for _, m in found], probe)


def _check_other_layer_kinds(model_type, config, attention_class) -> None:
    """Refuse a type whose config can name a layer kind that builds no such attention (LFM2's ``conv`` layers)."""
    if not isinstance(getattr(config, "layer_types", None), list):
        return
    for kind in LAYER_KINDS:
        if kind in config.layer_types:
            continue
        try:
            other = tiny_meta_model(tiny_config(model_type, layer_types=[kind] * config.num_hidden_layers))
        except Exception:  # noqa: BLE001 - a kind the config does not accept
            continue
        _, layers = decoder_layers(other, config)
        found = _attention_of(layers[0])
        if found is None or type(found[1]).__name__ != attention_class:
            what = _kind_of_layer(layers[0]) if found is None else type(found[1]).__name__
            raise Refused(f"hybrid: its layer_types may hold {kind!r} layers, which have {what}")


def _declare(model_type, config, model, fewer, layers_name, attention, modules, probe) -> dict:
    children = dict(modules[0].named_children())
    latent = [n for n in LATENT if n in children]
    if latent:
        raise Refused(
            f"multi-head latent attention ({', '.join(latent)}): K/V come from a shared latent, not K/V heads"
        )
    out = next((n for n in OUT_NAMES if n in children), None)
    fused = "qkv_proj" in children and "k_proj" not in children
    projections = ["qkv_proj"] if fused else ["q_proj", "k_proj", "v_proj"]
    if out is None or any(p not in children for p in projections):
        raise Refused(f"attention `{attention}` lacks {[p for p in (*projections, 'o_proj') if p not in children]}")
    if any(type(children[p]) is not torch.nn.Linear for p in (*projections, out)):
        kinds = sorted({type(children[p]).__name__ for p in (*projections, out)} - {"Linear"})
        raise Refused(f"its attention projections are {kinds}, not torch.nn.Linear")
    heads, kv, d = config.num_attention_heads, config.num_key_value_heads, _head_dim(config)
    prefix = f"{layers_name}.0.{attention}."
    shapes, shapes_fewer = _shapes(model), _shapes(fewer)
    changed = sorted(n for n in shapes if shapes[n] != shapes_fewer.get(n))
    local = [n.removeprefix(prefix) for n in changed if n.startswith(prefix)]
    outside = [n for n in changed if not n.startswith(f"{layers_name}.")]
    if outside:
        raise Refused(f"tensors outside the decoder layers change with num_key_value_heads: {outside[:3]}")
    kv_modules = {"qkv_proj"} if fused else {"k_proj", "v_proj"}
    kv_shaped, extra = [], []
    for name in local:
        module = name.rpartition(".")[0]
        if module in kv_modules:
            continue
        if shapes[prefix + name] == (kv * d,) and "norm" in module and "." not in module:
            kv_shaped.append(module)
        else:
            extra.append(f"{name}{shapes[prefix + name]}")
    if extra:
        raise Refused(f"attention tensors with an unknown dependence on num_key_value_heads: {extra}")
    rows = {p: shapes[f"{prefix}{p}.weight"] for p in (*projections, out)}
    expected = {"qkv_proj": ((heads + 2 * kv) * d,), "q_proj": (heads * d,), "k_proj": (kv * d,), "v_proj": (kv * d,)}
    wrong = [f"{p}{rows[p]}" for p in projections if rows[p][:1] != expected[p]]
    if rows[out][1:] != (heads * d,):
        wrong.append(f"{out}{rows[out]}")
    if wrong:
        raise Refused(f"projection shapes {wrong} are not heads x head_dim ({heads} query, {kv} K/V heads of {d})")
    return _declaration(model_type, config, modules[0], attention, out, fused, sorted(set(kv_shaped)), d, probe)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _declaration(model_type, config, module, attention, out, fused, kv_shaped, d, probe) -> dict:
    heads = config.num_attention_heads
    own = {"qkv_proj", "q_proj", "k_proj", "v_proj", out}
    key_norms, head_sliced, fixed = [], [], []
    for name, child in module.named_children():
        weight = getattr(child, "weight", None)
        if name in own or not isinstance(weight, torch.Tensor):
            continue
        if "norm" in name and ("k" in name.rpartition("_")[0] or name in kv_shaped):
            key_norms.append(name)
        if name in kv_shaped or (weight.shape[:1] in ((heads,), (heads * d,)) and name not in kv_shaped):
            # one slice per query head (in MHA form, the K norm too); a bias would need reordering as well
            (fixed if getattr(child, "bias", None) is not None else head_sliced).append(name)
    fixed += [n for n, p in module.named_parameters(recurse=False) if p.shape[:1] in ((heads,), (heads * d,))]
    declaration = {"name": model_type, "model_types": (model_type,)}
    if fused:
        declaration["fused_qkv"] = f"{attention}.qkv_proj"
    else:
        declaration["q_projection"] = f"{attention}.q_proj"
        declaration["kv_projections"] = (f"{attention}.k_proj", f"{attention}.v_proj")
    declaration["o_projection"] = f"{attention}.{out}"
    if kv_shaped:
        declaration["kv_shaped"] = tuple(f"{attention}.{n}" for n in kv_shaped)
    if key_norms:
        declaration["normed_keys"] = True
    if head_sliced:
        declaration["head_sliced"] = tuple(sorted(head_sliced, key=lambda n: (n in kv_shaped, n)))
    if fixed:
        declaration["fixed_heads"] = tuple(sorted(fixed))
    style = rope_pairing(config) if probe else "half"  # a probe is a real model: once per type
    if style != "half":
        declaration["rotary_style"] = style
    if probe and not values_turn_freely(_class_name(declaration), declaration, config):
        declaration["gated_outputs"] = True
    params = {n for n, _ in module.named_parameters()}
    declaration["notes"] = _notes(model_type, config, params, kv_shaped, key_norms, fused, fixed, style)
    if declaration.get("gated_outputs"):
        declaration["notes"] = ", ".join(
            filter(None, [declaration["notes"], "outputs scaled per dim (values averaged)"])
        )
    return declaration


PROBE = "hav_rope_probe"  # an attention function that records the queries and keys it is given


def _record_queries_and_keys(module, query, key, value, attention_mask, **kwargs):
    _PROBED.append((query.detach(), key.detach()))
    return torch.zeros_like(query).transpose(1, 2).contiguous(), None  # no attention: positions stay apart


_PROBED: list[tuple[torch.Tensor, torch.Tensor]] = []


def rope_pairing(config) -> str | None:
    """How the model of ``config`` pairs the dims of a head in RoPE: ``half``, ``interleaved`` or ``None``.

    A tiny real model (random weights) reads one token at positions 0, 1 and 2 with an attention that outputs
    zeros, so every layer sees the same hidden state at each position and its query and key differ between
    positions by RoPE alone. A rotation keeps the length of each pair of dims it turns together: the pairing
    whose pair lengths stay the same at positions 0 and 2 in every layer is the one the model uses (``None``:
    no layer's query moves).

    Raises:
        Refused: the queries move, but neither ``rotate_half`` nor adjacent pairs keep their lengths.
    """
    import transformers

    from ..merging import HeadLayout

    transformers.AttentionInterface.register(PROBE, _record_queries_and_keys)
    with quiet():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=PROBE).eval()
    _PROBED.clear()
    try:
        with torch.no_grad():
            model(input_ids=torch.full((1, 3), 5))
        moved = [
            (x[..., 0, :], x[..., 2, :])
            for q, k in _PROBED
            for x in (q, k)
            if not torch.equal(x[..., 0, :], x[..., 2, :])
        ]
    finally:
        _PROBED.clear()
    if not moved:
        return None
    mismatch = {}
    for style in ("half", "interleaved"):
        worst = 0.0
        for before, after in moved:
            turned = (before != after).flatten(0, -2).any(0).nonzero()
            dims = int(turned.max()) + 1
            pairs = HeadLayout.rotary(before.shape[-1], dims + dims % 2, style).pairs
            lengths = [x[..., pairs[:, 0]].hypot(x[..., pairs[:, 1]]) for x in (before, after)]
            worst = max(worst, float((lengths[0] - lengths[1]).abs().max() / before.abs().max()))
        mismatch[style] = worst
    style = min(mismatch, key=mismatch.get)
    if mismatch[style] > 1e-3:
        raise Refused(
            "its RoPE pairs the dims of a head neither as rotate_half nor as adjacent pairs "
            f"(pair lengths change by {mismatch['half']:.2g} and {mismatch['interleaved']:.2g})"
        )
    return style


def values_turn_freely(cls_name: str, declaration: dict, config) -> bool:
    """Whether an orthogonal map on each value head, undone on the output projection, keeps the function.

    It does where each head's attention output goes to the output projection unchanged; it does not where a gate
    or a norm with one weight per dim (of heads x head_dim) scales it first (AFMoE's ``gate_proj``, BitNet's
    ``attn_sub_norm``). Tried on a tiny MHA model whose norm weights are random (at their initial ones, a per-dim
    norm weight would pass unnoticed), in float64.
    """
    import transformers

    family = globals()[cls_name](**{k: v for k, v in declaration.items() if k != "notes"})
    mha = tiny_config(declaration["name"], num_key_value_heads=config.num_attention_heads)
    generator = torch.Generator().manual_seed(0)
    with quiet():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(mha, attn_implementation="eager").eval()
        if getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
            model.set_experts_implementation("eager")  # grouped_mm takes no float64
        model.double()
        ids = torch.randint(3, VOCAB, (2, 8), generator=generator)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(0.5 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
            before = model(input_ids=ids).logits
            for _, attention in family.attention_modules(model):
                views = family.head_views(attention, mha)
                heads, dim = views["v"].shape[:2]
                turn = torch.linalg.qr(torch.randn(heads, dim, dim, generator=generator, dtype=torch.float64)).Q
                views["v"].copy_(turn @ views["v"])
                if views["v_bias"] is not None:
                    views["v_bias"].copy_((turn @ views["v_bias"].unsqueeze(-1)).squeeze(-1))
                views["o"].copy_(torch.einsum("ohd,hed->ohe", views["o"], turn))
            after = model(input_ids=ids).logits
    return bool((after - before).abs().max() < 1e-6 * before.abs().max().clamp(min=1))


def _notes(model_type, config, params, kv_shaped, key_norms, fused, fixed, style) -> str:
    """What the derived family has besides plain q/k/v/o projections, for the table of families."""
    notes = {"interleaved": ["RoPE on adjacent dims"], None: ["no RoPE"]}.get(style, [])
    if fused:
        notes.append("fused `qkv_proj` [q | k | v]")
    if any(n.endswith("bias") for n in params):
        notes.append("biases")
    if kv_shaped:
        notes.append("norm over the whole K projection (regrouped)")
    elif key_norms:
        notes.append("per-head q/k norms")
    if fixed:
        notes.append(f"per-head {', '.join(fixed)} (query heads keep their order)")
    if len(set(getattr(config, "layer_types", None) or ())) > 1:
        notes.append("mixed layer types (" + ", ".join(sorted(set(config.layer_types))) + ")")
    elif getattr(config, "sliding_window", None) and (getattr(config, "use_sliding_window", True)):
        notes.append("sliding window")
    rope = getattr(config, "rope_parameters", None) or {}
    factors = [
        r.get("partial_rotary_factor", 1.0)
        for r in (rope.values() if all(isinstance(v, dict) for v in rope.values()) and rope else [rope])
    ]
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0 or any(f != 1.0 for f in factors):
        notes.append("partial rotary")
    if any(
        getattr(config, f, None) for f in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    ):
        notes.append("mixture of experts")
    if model_type in TINY_OVERRIDES:
        notes.append("tested with " + ", ".join(f"{k}={v}" for k, v in TINY_OVERRIDES[model_type].items()))
    return ", ".join(notes)


# -- the survey of every causal-LM model type, written to derived.py ------------------------------------------
def causal_lm_model_types() -> list[str]:
    """Every model_type with a causal LM in transformers (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``), sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def survey(hand_written: set[str]) -> tuple[list[dict], dict[str, str]]:
    """The declarations of the causal-LM types not in ``hand_written`` that fit the pattern, and the reasons
    of the others, by model_type."""
    derived, refused = [], {}
    for model_type in causal_lm_model_types():
        if model_type in hand_written:
            continue
        try:
            derived.append(derive_declaration(model_type))
        except Refused as reason:
            refused[model_type] = str(reason)
    return derived, refused


def render_module(derived: list[dict], refused: dict[str, str]) -> str:
    """The source of ``derived.py``: one declaration per derived family, and the refused types."""
    import transformers

    lines = [
        f'"""Generated by scripts/derive_families.py with transformers {transformers.__version__}; do not edit.',
        "",
        "Every causal-LM model_type of transformers that no hand-written family covers: derived (each proven by",
        "tests/test_derived_families.py) or refused with the reason. Regenerate after a transformers upgrade.",
        '"""',
        "",
        "from .generic import " + ", ".join(sorted({_class_name(d) for d in derived}) or ["DerivedFamily"]),
        "",
        f"TRANSFORMERS_VERSION = {_literal(transformers.__version__)}",
        "",
        "DERIVED_FAMILIES = (",
    ]
    for declaration in derived:
        values, cls = dict(declaration), _class_name(declaration)
        fields = globals()[cls].__dataclass_fields__
        args = [_literal(values.pop("name")), _literal(values.pop("model_types"))]
        args += [f"{k}={_literal(v)}" for k, v in values.items() if v != fields[k].default]
        lines.append(f"    {cls}({', '.join(args)}),")
    lines += [")", "", "REFUSED = {"]
    lines += [f"    {_literal(t)}: {_literal(r)}," for t, r in refused.items()]
    lines += ["}", ""]
    return "\n".join(lines)


def _class_name(declaration: dict) -> str:
    return "DerivedFusedFamily" if "fused_qkv" in declaration else "DerivedFamily"


def _literal(value) -> str:
    """``value`` (a string, bool or tuple of strings) as Python source, with double quotes as ruff writes them."""
    import json

    if isinstance(value, tuple):
        return "(" + ", ".join(map(_literal, value)) + ("," if len(value) == 1 else "") + ")"
    return json.dumps(value) if isinstance(value, str) else repr(value)
