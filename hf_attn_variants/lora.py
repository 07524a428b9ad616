"""LoRA for variant models through PEFT, with default target modules for every family.

PEFT keys its default LoRA targets by ``model_type``, so the plugin's own types (``attn_variant_gpt2``)
get none; :func:`register_peft_defaults` adds them. peft is imported only when LoRA is asked for.
"""

from __future__ import annotations

from .families import families, family_for


def register_peft_defaults() -> None:
    """Give PEFT default LoRA targets for the plugin's variant model types (native types keep PEFT's own)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    for family in families():
        model_types = list(family.model_types) + ([] if family.native else [family.variant_model_type])
        for model_type in model_types:
            mapping.setdefault(model_type, list(family.lora_target_modules))


def lora_config(config, r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05, target_modules=None, **kwargs):
    """A ``peft.LoraConfig`` for a causal LM with ``config``; by default it adapts every attention projection.

    ``config`` may be a model or its config. Keyword arguments pass through to ``LoraConfig``.
    """
    from peft import LoraConfig, TaskType

    register_peft_defaults()
    config = getattr(config, "config", config)
    family = family_for(config)
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules or family.lora_target_modules),
        fan_in_fan_out=family.lora_fan_in_fan_out,
        task_type=TaskType.CAUSAL_LM,
        **kwargs,
    )
