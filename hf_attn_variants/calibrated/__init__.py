"""The calibrated-merge pipeline: calibration, fitting, refinement, on whole models.

``calibration``
    what each attention layer sees on some text (the moments ``E[x x^T]`` of its input, and the blocks).
``fitting``
    each layer's heads merged from those moments with the pure head math of ``hf_attn_variants.merging``
    (aligned/svd merges, least-squares re-fits, similarity grouping), and the output projection re-fitted
    to the source's output layer by layer (``sequential``).
``refinement``
    each merged attention layer trained briefly to reproduce the source's (``refine_steps``).
``distillation``
    the merged model's attention weights trained end to end towards the source's next-token output
    (``distill_steps``).

:func:`hf_attn_variants.convert` validates a request and calls :func:`merge_calibrated` when a recipe merges
heads from calibration statistics.
"""

from __future__ import annotations

from .calibration import Calibration, calibrate, calibration_for
from .distillation import distill_attention
from .fitting import merge_heads
from .refinement import refine_attention

__all__ = [
    "Calibration",
    "calibrate",
    "calibration_for",
    "distill_attention",
    "merge_calibrated",
    "merge_heads",
    "refine_attention",
]


def merge_calibrated(model, family, dst: int, recipe, calibration: Calibration):
    """``model`` with ``dst`` K/V heads merged as ``recipe`` (a resolved ``KVRecipe``) says, from ``calibration``."""
    merged = merge_heads(
        model, family, dst, recipe.kv_init, calibration, recipe.grouping, recipe.fit, recipe.sequential
    )
    if recipe.refine_steps:
        refine_attention(model, merged, family, calibration, recipe.refine_steps, recipe.refine_lr)
    if recipe.distill_steps:
        blocks = calibration.distillation_blocks()
        distill_attention(
            model, merged, family, blocks, recipe.distill_steps, recipe.distill_lr, recipe.calibration_seed
        )
    return merged
