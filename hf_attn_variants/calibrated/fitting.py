"""Fitting: a model's heads merged layer by layer from its calibration, with the head math of ``merging``.

Each attention layer is read in MHA form (a GQA source expanded exactly), its heads merged by
:func:`hf_attn_variants.merging.merge_layer` on the layer's input moments (recomputed on the partly converted
model with ``sequential``), optionally regrouped by similarity first, and written back; with ``sequential``
the output projection is then re-fitted by least squares to the source's output. The now equal heads of
each group are pooled by the plain conversion.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..merging import LayerHeads, merge_costs, merge_layer, similarity_groups
from .calibration import call_hidden_states, eval_mode, module_calls, replay_inputs, with_ones


@torch.no_grad()
def merge_heads(model, family, dst, kv_init, calibration, grouping, fit, sequential):
    """Merge each layer's heads in MHA form (the source expanded exactly), then pool the now equal heads."""
    with eval_mode(model):  # no dropout while the source is replayed
        merged = _merge_in_mha_form(model, family, dst, kv_init, calibration, grouping, fit, sequential)
    return merged.train(model.training)


def _merge_in_mha_form(model, family, dst, kv_init, calibration, grouping, fit, sequential):
    from ..convert import convert  # the exact expansion and the final pooling are plain conversions

    mha = convert(model, "mha")
    config = mha.config
    modules = family.attention_modules(mha)
    for _, module in modules:  # the expansion shares tensors with `model`, which must not change
        for param in module.parameters():
            param.data = param.data.clone()
    if set(calibration.moments) != {name for name, _ in modules}:
        raise ValueError(
            f"the calibration was made on another model: it covers {len(calibration.moments)} attention modules "
            f"({sorted(calibration.moments)[:2]}...), this model has {len(modules)} ({modules[0][0]}...)"
        )
    layout = family.head_layout(mha, config)
    sources = dict(family.attention_modules(model))
    for name, module in tqdm(modules, desc=f"merge K/V heads ({kv_init})", disable=len(modules) < 4):
        views = family.head_views(module, config)
        heads = _read_heads(views)
        source_cols = heads.o  # (H, hidden, head_dim), in the source's head order
        if sequential:  # what this layer sees once the layers before it are converted
            calls = module_calls(mha, module, calibration.input_ids)
            rows = [with_ones(call_hidden_states(call)) for call in calls]
            s = sum(x.T @ x for x in rows) / sum(len(x) for x in rows)
        else:
            s = calibration.moments[name].to(torch.float64)
        if grouping == "similarity":
            order = similarity_groups(merge_costs(heads, s, layout), dst).flatten()
            heads = heads.permute(order)
            for sliced in family.head_sliced:
                weight = getattr(module, sliced).weight
                weight.copy_(weight.unflatten(0, (len(order), -1))[order].flatten())
        keys, values = not family.keys_normed(config), not family.gated_outputs
        _write_heads(views, merge_layer(heads, s, layout, dst, kv_init, fit, keys=keys, values=values))
        if sequential:
            fit_output_projection(sources[name], module, family.out_module, calls, source_cols, views)
    return convert(mha, None, dst, "mean")


@torch.no_grad()
def fit_output_projection(source, variant, out_name, calls, source_cols, views) -> None:
    """Re-fit the variant attention's output projection, by least squares, to the source attention's output.

    Both attention modules replay ``calls`` (the variant's own inputs, from its converted earlier layers);
    the inputs of their output projections are collected, and the variant's projection becomes the one
    that maps its inputs closest to the source's output ``a_src @ W_src^T`` (``source_cols`` is
    ``W_src``'s columns per head, ``(H, hidden, head_dim)``).
    """
    gram, cross = 0, 0
    pairs = zip(
        replay_inputs(source, getattr(source, out_name), calls),
        replay_inputs(variant, getattr(variant, out_name), calls),
        strict=True,
    )
    for a_src, a_var in pairs:
        a_src = a_src.reshape(-1, a_src.shape[-1]).to(torch.float64).cpu()  # (tokens, H * head_dim)
        a_var = a_var.reshape(-1, a_var.shape[-1]).to(torch.float64).cpu()
        gram, cross = gram + a_var.T @ a_var, cross + a_var.T @ a_src
    w_src = source_cols.permute(1, 0, 2).flatten(1)  # (hidden, H * head_dim)
    ridge = 1e-6 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    w_var = torch.linalg.solve(gram + ridge, cross @ w_src.T).T  # (hidden, H * head_dim)
    views["o"].copy_(w_var.unflatten(1, views["o"].shape[1:]))


def _read_heads(views) -> LayerHeads:
    """The float64 ``LayerHeads`` of per-head views; a missing bias is a zero column."""

    def rows(part):
        weight, bias = views[part].to(torch.float64).cpu(), views[f"{part}_bias"]
        bias = torch.zeros(weight.shape[:2], dtype=torch.float64) if bias is None else bias.to(torch.float64).cpu()
        return torch.cat([weight, bias.unsqueeze(-1)], dim=-1)  # (H, head_dim, hidden + 1)

    o = views["o"].to(torch.float64, copy=True).cpu()  # (hidden, H, head_dim), never a view of the parameter
    return LayerHeads(rows("q"), rows("k"), rows("v"), o.permute(1, 0, 2))


def _write_heads(views, heads: LayerHeads) -> None:
    for part in "qkv":
        rows = getattr(heads, part)
        views[part].copy_(rows[..., :-1])
        if views[f"{part}_bias"] is not None:
            views[f"{part}_bias"].copy_(rows[..., -1])
    views["o"].copy_(heads.o.permute(1, 0, 2))
