"""Model cards for converted checkpoints, rendered with huggingface_hub's ModelCard."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .families import family_for
from .heads import kv_cache_bytes_per_token
from .variants import variant_label

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"

_KV_INIT_NOTES = {
    "mean": "mean pooling of the K/V heads of each group (Ainslie et al. 2023)",
    "first": "the K/V head of each group's first query head",
    "random": "fresh random K/V projections",
    "aligned": "heads aligned by function-preserving rotations (per RoPE pair; orthogonal maps elsewhere), then "
    "averaged weighted by what reads them (hf_attn_variants.merging), from calibration statistics",
    "svd": "low-rank merge: the best shared key per RoPE pair and the top principal subspace of the values, each "
    "query and output projection re-fitted by least squares (hf_attn_variants.merging), from calibration statistics",
}


def render_model_card(
    model,
    source: str,
    source_kv_heads: int,
    kv_init: str | None = None,
    uptraining: str = "none",
    metrics: dict[str, float] | None = None,
    dataset: str = "held-out text",
    *,
    base_model: str | None = None,
    license: str | None = None,
    adapter: bool = False,
    dataset_id: str | None = None,
) -> ModelCard:
    """The card of ``model``, converted from ``source`` (which had ``source_kv_heads`` K/V heads).

    ``metrics`` (name -> value, each name distinct, e.g. ``{"perplexity after uptraining": 21.3}``) measured on
    ``dataset`` (its Hub id ``dataset_id`` where it has one) become the card's model-index eval results and a
    table in its body. ``base_model`` (the source's Hub id) and ``license`` (carried from the source) go into
    the metadata where known (``sources.source_metadata``); the relation is ``adapter`` for a LoRA adapter,
    else ``finetune`` (weights derived from the base model's, same architecture). How the K/V heads were made
    comes from the recipe the conversion recorded in the config (``attn_variant_recipe``); ``kv_init`` names it
    otherwise.
    """
    config = model.config
    family = family_for(config)
    heads, kv_heads = family.num_heads(config), family.num_kv_heads(config)
    layers, head_dim = family.num_layers(config), family.head_dim(config)
    source_bytes = kv_cache_bytes_per_token(layers, source_kv_heads, head_dim, 2)
    kv_bytes = kv_cache_bytes_per_token(layers, kv_heads, head_dim, 2)
    variant, source_variant = variant_label(heads, kv_heads), variant_label(heads, source_kv_heads)
    expanded = kv_heads >= source_kv_heads
    import_line = (
        "import hf_attn_variants  # registers the variant config\n"
        if str(config.model_type).startswith("attn_variant")
        else ""
    )
    model_name = f"{source.split(' (')[0]} — {variant}"
    metrics = {k: float(v) for k, v in (metrics or {}).items() if v is not None}
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        base_model_relation=("adapter" if adapter else "finetune") if base_model else None,
        license=license,
        datasets=[dataset_id] if dataset_id else None,
        eval_results=[_eval_result(name, value, dataset, dataset_id) for name, value in metrics.items()] or None,
        library_name="peft" if adapter else "transformers",
        tags=["hf_attn_variants", variant.split("-")[0].lower(), family.name],
        pipeline_tag="text-generation",
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        metrics=metrics,
        dataset=dataset,
        source=f"`{source}`",
        heads_line=heads_sentence(heads, kv_heads, source_kv_heads),
        variant=variant,
        source_variant=source_variant,
        num_key_value_heads=kv_heads,
        source_kv_heads=source_kv_heads,
        source_kv_bytes=source_bytes,
        kv_bytes=kv_bytes,
        kv_ratio=f"{kv_bytes / source_bytes:.3f}",
        weights_dtype=weights_dtype(config),
        kv_init=kv_words(config, kv_heads, source_kv_heads, kv_init),
        kv_init_note="" if expanded else _KV_INIT_NOTES.get(recorded_method(config, kv_init), ""),
        uptraining=uptraining,
        loading=f"{import_line}import transformers\nmodel = transformers.AutoModelForCausalLM.from_pretrained(PATH)",
        warning=""
        if expanded or uptraining != "none"
        else "pooled K/V heads change the model's function; quality drops until the model is uptrained.",
    )


def heads_sentence(heads: int, kv_heads: int, source_kv_heads: int) -> str:
    """What the attention became, in words (MHA and the source's own layout said as such)."""
    source = variant_label(heads, source_kv_heads)
    if kv_heads == source_kv_heads:
        return f"kept in its own layout, **{source}** ({heads} query heads, {kv_heads} K/V heads): weights unchanged"
    if kv_heads == heads:
        return f"converted to **MHA**: each of the {heads} query heads has its own K/V head (the source, {source}, had {source_kv_heads})"
    shared = f"{kv_heads} K/V head{'s' if kv_heads > 1 else ''}"
    variant = variant_label(heads, kv_heads)
    return f"converted to **{variant}** attention: {heads} query heads share {shared} (the source, {source}, had {source_kv_heads})"


def kv_words(config, kv_heads: int, source_kv_heads: int, kv_init: str | None = None) -> str:
    """How the K/V heads were made: unchanged, exact copies (more heads), or the recorded recipe."""
    if kv_heads == source_kv_heads:
        return "the source's own (unchanged)"
    if kv_heads > source_kv_heads:
        return "exact copies of the source's K/V heads (the model's function is unchanged)"
    return f"made by `{recipe_text(config, kv_init)}`"


def weights_dtype(config) -> str:
    """The dtype of the saved weights as the config records it (``torch.float32`` -> ``float32``)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).removeprefix("torch.") if dtype else "the source's"


def recorded_method(config, kv_init: str | None = None) -> str:
    """The K/V method the conversion recorded in ``config`` (or ``kv_init``, or ``mean``)."""
    return (getattr(config, "attn_variant_recipe", None) or {}).get("kv_init") or kv_init or "mean"


def recipe_text(config, kv_init: str | None = None) -> str:
    """The recorded recipe in words: ``svd, refine_steps=40, ... (preset auto -> best); calibrated on ...``."""
    from .recipe import KV_INIT_CHOICES, RECIPE_OPTIONS, KVRecipe

    recorded = getattr(config, "attn_variant_recipe", None)
    if not recorded or recorded.get("kv_init") not in KV_INIT_CHOICES:
        return kv_init or "mean"
    recipe = KVRecipe(**{k: v for k, v in recorded.items() if k in RECIPE_OPTIONS})
    recipe.preset = recorded.get("preset")
    text = recipe.label()
    if recorded.get("calibration_text"):
        text += f"; calibrated on {recorded['calibration_tokens']:,} tokens of {recorded['calibration_text']}"
    if recorded.get("generated_tokens"):
        text += f", distilled on them and {recorded['generated_tokens']:,} tokens the source wrote itself"
    return text


def _eval_result(name: str, value: float, dataset: str, dataset_id: str | None = None) -> EvalResult:
    metric_type = "accuracy" if "accuracy" in name else "perplexity"
    return EvalResult(
        task_type="text-generation",
        dataset_type=dataset_id or "text",
        dataset_name=dataset,
        metric_type=metric_type,
        metric_name=name,
        metric_value=round(value, 4),
    )
