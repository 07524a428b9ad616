"""Conversion: a transform of a state dict plus a rewrite of the config, one path for every front end.

:func:`convert` validates the request and dispatches: pooling, first, random and exact duplication are
tensor-by-tensor transforms here; merges from calibration statistics run the pipeline of
``hf_attn_variants.calibrated``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from .calibrated import Calibration, merge_calibrated
from .families import family_for
from .recipe import POOL_METHODS, KVRecipe
from .variants import check_kv_init, resolve_num_kv_heads

logger = logging.getLogger(__name__)


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
        if not family.is_kv_tensor(key):
            converted[key] = tensor
            continue
        converted[key] = family.convert_tensor(key, tensor, config, num_key_value_heads, kv_init, seed)
        weights += key.endswith("weight")
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
    kv_init: KVRecipe | str | None = None,
    seed: int | None = None,
    *,
    calibration: Calibration | None = None,
    tokenizer=None,
    **recipe_options,
) -> PreTrainedModel:
    """``model`` in another attention variant, as a new model sharing every tensor that did not change.

    Args:
        model: a model of a supported family (a causal LM, a base model, or a classification head).
        attn_variant: ``mha``, ``gqa`` or ``mqa``; ``None`` derives it from ``num_key_value_heads``.
        num_key_value_heads: the K/V heads of the result (required for ``gqa``).
        kv_init: the recipe (:class:`hf_attn_variants.KVRecipe`), or a method or preset name: ``auto`` (the
            default: ``best`` when ``calibration`` or ``tokenizer`` is given, else ``mean``), ``fast``, ``best``,
            ``mean``, ``first``, ``random``, ``aligned``, ``svd``. More K/V heads are always exact copies.
        seed: the seed of ``kv_init="random"`` (the recipe's ``kv_init_seed``).
        calibration: statistics from :func:`hf_attn_variants.calibrate` (or a function of the resolved recipe
            returning them, called only if heads are merged); otherwise, where the recipe needs them, they are collected with
            ``tokenizer`` on the recipe's calibration text.
        tokenizer: the model's tokenizer, to calibrate on text.
        **recipe_options: fields of :class:`KVRecipe` (``grouping``, ``fit``, ``sequential``, ``refine_steps``,
            ``refine_lr``, ``calibration_samples`` ...), overriding those of ``kv_init``.

    Raises:
        ValueError: unsupported family, bad variant, head count, recipe or grouping, quantized model, a recipe
            that needs calibration without ``calibration`` or ``tokenizer``.
    """
    _check_not_quantized(model)
    config = model.config
    family = family_for(config)
    family.check_config(config)
    dst = resolve_num_kv_heads(attn_variant, num_key_value_heads, family.num_heads(config))
    if calibration is not None and not isinstance(calibration, Calibration) and not callable(calibration):
        raise ValueError(
            f"calibration must be a hf_attn_variants.Calibration (or a function returning one), got "
            f"{type(calibration).__name__}"
        )
    recipe = KVRecipe.build(kv_init, kv_init_seed=seed, **recipe_options)
    merging = dst % family.num_kv_heads(config) != 0  # fewer K/V heads (or a count that needs a merge)
    recipe = recipe.resolve(can_calibrate=calibration is not None or tokenizer is not None) if merging else recipe
    check_merge_options(family, recipe)
    if merging and recipe.needs_calibration:
        if calibration is None and tokenizer is not None:
            from .calibrated.calibration import calibrate

            calibration = calibrate(model, tokenizer, **recipe.calibrate_kwargs())
        if callable(calibration) and not isinstance(calibration, Calibration):
            calibration = calibration(recipe)  # built only now that heads are merged, as the resolved recipe says
        if calibration is None:
            raise ValueError(
                f"kv_init={recipe.kv_init!r} with {recipe.merge_kwargs()} merges heads from calibration statistics: "
                "pass tokenizer=... or calibration=hf_attn_variants.calibrate(model, tokenizer) (or use "
                "kv_init='mean' without fit, grouping, sequential, refine_steps or distill_steps)"
            )
        logger.info("converting to %d K/V heads with %s", dst, recipe.label())
        merged = merge_calibrated(model, family, dst, recipe, calibration)
        record_recipe(merged, recipe if merging else None, calibration)
        return merged
    new = _convert_pooled(model, family, config, dst, recipe)
    record_recipe(new, recipe if merging else None, None)
    return new


def record_recipe(model, recipe: KVRecipe | None, calibration) -> None:
    """Write how the K/V heads were made into the model's config (``attn_variant_recipe``, saved with it)."""
    if recipe is None:
        entry = {"kv_init": "exact duplication"}  # as many K/V heads or more: nothing is merged
    else:
        entry = recipe.describe()
        if not recipe.needs_calibration:  # calibration options of a pooling recipe did nothing
            entry = {k: v for k, v in entry.items() if not k.startswith("calibration_")}
        if calibration is not None:
            entry["calibration_text"] = calibration.source
            entry["calibration_tokens"] = calibration.tokens
            if recipe.distill_steps and calibration.generated_ids is not None:
                entry["generated_tokens"] = int(calibration.generated_ids.numel())
    model.config.attn_variant_recipe = entry


def _convert_pooled(model, family, config, dst: int, recipe: KVRecipe):
    """Tensor-by-tensor conversion (pooling, first, random, or exact duplication) into a new model."""
    kv_init = recipe.kv_init if recipe.kv_init in POOL_METHODS else "mean"  # expansion: the method is irrelevant
    target_config = family.target_config(config, dst)
    target_class = family.target_class(type(model), dst, config)
    state = convert_state_dict(model.state_dict(), config, dst, kv_init, recipe.kv_init_seed)

    with torch.device("meta"):
        new = target_class(target_config)
    new.load_state_dict(state, strict=True, assign=True)
    for name, buffer in list(new.named_buffers()):  # non-persistent buffers (rotary frequencies) are not in `state`
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            module = new.get_submodule(owner)
            if _has_buffer(model, name):
                module.register_buffer(leaf, model.get_buffer(name), persistent=False)
            else:  # the source's variant attention has none (GPT-J's position table before transformers 5.24)
                device = next(model.parameters()).device
                module.register_buffer(leaf, torch.empty_like(buffer, device=device), persistent=False)
                new._init_weights(module)  # fills it as the target class's own initialisation does
    new.tie_weights()
    if getattr(model, "generation_config", None) is not None:  # base models have none
        new.generation_config = copy.deepcopy(model.generation_config)
    new.train(model.training)
    return new


def _has_buffer(model, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    try:
        return leaf in model.get_submodule(owner)._buffers
    except AttributeError:
        return False


def check_merge_options(family, recipe: KVRecipe) -> None:
    """Refuse what this family cannot do with ``recipe``, naming the valid choices."""
    if recipe.grouping == "similarity" and not family.permutable:
        raise ValueError(
            f"grouping='similarity' reorders query heads, which {family.name} cannot do (its "
            f"{_fixed_heads(family)} belong to head positions); use grouping='contiguous'"
        )


def _fixed_heads(family) -> str:
    """What ties a family's query heads to their positions, for the error."""
    fixed = getattr(family, "fixed_heads", ())
    return f"per-head {', '.join(fixed)}" if fixed else "ALiBi slopes"
