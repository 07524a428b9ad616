"""Distillation: the merged model's attention weights trained end to end towards the source's next-token output.

Refinement (``refinement.py``) makes each attention layer reproduce the source's layer on its own; the errors
that remain still add up through the layers. Distillation closes that gap where it is measured, at the
output: a few Adam steps on the attention weights only (everything else frozen, shared with the source and
left untouched) that minimise the KL divergence from the source's next-token distribution to the
variant's, on the calibration blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .calibration import eval_mode

BATCH_SIZE = 4  # calibration blocks per step


def distill_attention(source, variant, family, input_ids: torch.Tensor, steps: int, lr: float, seed: int = 0) -> list:
    """Train ``variant``'s attention weights for ``steps`` Adam steps towards ``source``'s next-token output.

    Each step reads ``BATCH_SIZE`` of ``input_ids``' blocks (shuffled by ``seed``, one pass after another),
    runs the source (no gradient) and the variant on them, and lowers the mean over tokens of
    KL(source || variant). Only the variant's attention modules' parameters change; any of them that still
    shares memory with ``source`` is copied first, so the source is never modified.

    Returns:
        The loss of each step (a list of floats).
    """
    attention = [p for _, module in family.attention_modules(variant) for p in module.parameters()]
    _unshare(attention, source)
    chosen = {id(p) for p in attention}
    flags = {name: p.requires_grad for name, p in variant.named_parameters()}
    device = next(variant.parameters()).device
    optimizer = torch.optim.Adam(attention, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    with eval_mode(source, variant), torch.enable_grad():
        for p in variant.parameters():
            p.requires_grad_(id(p) in chosen)
        try:
            for _ in tqdm(range(steps), desc="distill attention"):
                if len(order) < min(BATCH_SIZE, len(input_ids)):
                    order += torch.randperm(len(input_ids), generator=generator).tolist()
                batch, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
                ids = input_ids[batch].to(device)
                with torch.no_grad():
                    target = F.log_softmax(source(input_ids=ids, use_cache=False).logits.float(), dim=-1)
                logits = variant(input_ids=ids, use_cache=False).logits.float()
                log_probs = F.log_softmax(logits, dim=-1).flatten(0, 1)
                loss = F.kl_div(log_probs, target.flatten(0, 1), log_target=True, reduction="batchmean")
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
        finally:
            for name, p in variant.named_parameters():
                p.requires_grad_(flags[name])
    return losses


def _unshare(params: list[torch.nn.Parameter], source) -> None:
    """Give each of ``params`` that shares memory with one of ``source``'s tensors its own copy."""
    theirs = {t.untyped_storage().data_ptr() for t in [*source.parameters(), *source.buffers()]}
    for p in params:
        if p.untyped_storage().data_ptr() in theirs:
            p.data = p.data.clone()
