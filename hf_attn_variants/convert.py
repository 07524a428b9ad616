"""Conversion: a transform of a state dict plus a rewrite of the config, one path for every front end."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from .families import family_for
from .variants import check_kv_init, resolve_num_kv_heads


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config,
    num_key_value_heads: int,
    kv_init: str = "mean",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The state dict of ``config``'s model with ``num_key_value_heads`` K/V heads.

    Tensors that do not depend on the K/V heads are passed through untouched (no copy).

    Raises:
        ValueError: the family is not supported, or the K/V projections found do not match the config.
    """
    family = family_for(config)
    family.check_config(config)
    check_kv_init(kv_init)
    converted, weights = {}, 0
    for key, tensor in state_dict.items():
        new = family.convert_tensor(key, tensor, config, num_key_value_heads, kv_init, seed)
        converted[key] = tensor if new is None else new
        weights += new is not None and key.endswith("weight")
    check_kv_weight_count(family, config, weights)
    return converted


def check_kv_weight_count(family, config, found: int) -> None:
    """Refuse a checkpoint in which the conversion changed ``found`` K/V weights, not the family's count."""
    expected = family.kv_weight_count(config)
    if found != expected:
        raise ValueError(
            f"found {found} K/V projection weights where a {family.name} model with "
            f"{family.num_layers(config)} layers has {expected}; is this checkpoint a {family.name} model?"
        )


def _quant_method(model) -> str | None:
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    return None if quantizer is None else str(getattr(method, "value", method))


def _check_not_quantized(model) -> None:
    method = _quant_method(model)
    if method not in (None, "gguf"):  # GGUF weights load dequantized
        raise ValueError(f"a model quantized with {method} cannot be converted; load it in a floating-point dtype")


def drop_gguf_record(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` without the GGUF quantizer record transformers leaves on it; its weights are already dense.

    Trainer refuses to train a model that looks quantized, so a GGUF-loaded model is trained through this.
    """
    if _quant_method(model) == "gguf":
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def convert(
    model: PreTrainedModel,
    attn_variant: str | None,
    num_key_value_heads: int | None = None,
    kv_init: str = "mean",
    seed: int = 0,
) -> PreTrainedModel:
    """``model`` in another attention variant, as a new model sharing every tensor that did not change.

    Args:
        model: a model of a supported family (a causal LM, a base model, or a classification head).
        attn_variant: ``mha``, ``gqa`` or ``mqa``; ``None`` derives it from ``num_key_value_heads``.
        num_key_value_heads: the K/V heads of the result (required for ``gqa``).
        kv_init: how fewer K/V heads are made from more: ``mean``, ``first``, ``random``. More K/V heads
            are always exact copies.
        seed: the seed of ``kv_init="random"``.

    Raises:
        ValueError: unsupported family, bad variant or head count, quantized model.
    """
    _check_not_quantized(model)
    config = model.config
    family = family_for(config)
    family.check_config(config)
    dst = resolve_num_kv_heads(attn_variant, num_key_value_heads, family.num_heads(config))
    check_kv_init(kv_init)
    target_config = family.target_config(config, dst)
    target_class = family.target_class(type(model), dst, config)
    state = convert_state_dict(model.state_dict(), config, dst, kv_init, seed)

    with torch.device("meta"):
        new = target_class(target_config)
    new.load_state_dict(state, strict=True, assign=True)
    for name, buffer in list(new.named_buffers()):  # non-persistent buffers (rotary frequencies) are not in `state`
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            new.get_submodule(owner).register_buffer(leaf, model.get_buffer(name), persistent=False)
    new.tie_weights()
    if getattr(model, "generation_config", None) is not None:  # base models have none
        new.generation_config = copy.deepcopy(model.generation_config)
    new.train(model.training)
    return new
