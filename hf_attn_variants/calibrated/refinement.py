"""Refinement: each attention layer of a merged model trained briefly to reproduce the source's attention."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .calibration import eval_mode, module_calls


def refine_attention(source, variant, family, calibration, steps: int, lr: float) -> None:
    """Train each attention layer of ``variant`` in turn to reproduce ``source``'s attention output.

    Layer by layer, from the first: the layer's inputs are collected on the calibration text through the
    already refined layers before it, the source's attention module gives the target on the same inputs,
    and Adam takes ``steps`` full passes over them on the layer's own weights (loss: squared error over the
    target's mean square). Nothing else changes.
    """
    sources = dict(family.attention_modules(source))
    with eval_mode(source, variant):
        for name, module in tqdm(family.attention_modules(variant), desc="refine attention layers"):
            calls = module_calls(variant, module, calibration.input_ids)
            with torch.no_grad():
                targets = [sources[name](*args, **kwargs)[0] for args, kwargs in calls]
            params = list(module.parameters())
            flags = [p.requires_grad for p in params]
            optimizer = torch.optim.Adam(params, lr=lr)
            with torch.enable_grad():
                for p in params:
                    p.requires_grad_(True)
                for _ in range(steps):
                    for (args, kwargs), target in zip(calls, targets, strict=True):
                        out = module(*args, **kwargs)[0]
                        loss = (out - target).pow(2).mean() / target.pow(2).mean().clamp(min=1e-12)
                        (loss / len(calls)).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
