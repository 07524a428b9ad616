"""Merging K/V heads with calibration (issue 7): the head math, function preservation, every family, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

import hf_attn_variants as hav
from hf_attn_variants.calibrated.calibration import Calibration, calibration_blocks, collect_moments
from hf_attn_variants.calibrated.fitting import _read_heads, _write_heads
from hf_attn_variants.heads import regroup_kv_heads
from hf_attn_variants.merging import (
    HeadLayout,
    LayerHeads,
    merge_costs,
    merge_free,
    merge_group,
    merge_layer,
    merge_rotary,
    similarity_groups,
)

from .conftest import FAMILIES, HEADS, VOCAB, char_tokenizer, family_of, tiny_model

PERMUTABLE = [f for f in FAMILIES if family_of(f).permutable]


def random_ids(n=6, length=12, seed=3):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def calibration_of(model, n=6, length=12) -> Calibration:
    ids = random_ids(n, length)
    modules = hav.family_for(model.config).attention_modules(model)
    return Calibration(collect_moments(model, modules, ids, progress=False), ids, "random tokens")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def randomize_norms(model, seed=1) -> None:
    """Norm weights off their initial ones, so that a per-dim weight on a key or an output shows in a test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.5 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def rewrite_layers(model, change) -> None:
    """Apply ``change(LayerHeads, name) -> LayerHeads`` to every attention layer of an MHA-form ``model``."""
    family = hav.family_for(model.config)
    with torch.no_grad():
        for name, module in family.attention_modules(model):
            for param in module.parameters():  # a conversion shares unchanged tensors with its source
                param.data = param.data.clone()
            views = family.head_views(module, model.config)
            _write_heads(views, change(_read_heads(views), name))


# -- the pure head math ---------------------------------------------------------------------------------


def test_rotary_layouts_pair_the_dims_rope_rotates_together():
    half = HeadLayout.rotary(8, 8, "half")
    assert half.pairs.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]] and half.free.tolist() == []
    partial = HeadLayout.rotary(8, 4, "interleaved")
    assert partial.pairs.tolist() == [[0, 1], [2, 3]] and partial.free.tolist() == [4, 5, 6, 7]
    assert HeadLayout.rotary(8, 0, None).free.tolist() == list(range(8))
    with pytest.raises(ValueError, match=r"^rotary_dims=3 must be even and at most head_dim=8$"):
        HeadLayout.rotary(8, 3, "half")
    with pytest.raises(ValueError, match=r"^rotary style 'spiral' is not one of \['half', 'interleaved', None\]$"):
        HeadLayout.rotary(8, 4, "spiral")


@pytest.mark.parametrize("method", ["mean", "aligned", "svd"])
def test_equal_heads_merge_into_themselves(method):
    torch.manual_seed(0)
    head = torch.randn(1, 4, 7, dtype=torch.float64)
    feats, readers = head.expand(3, 4, 7), torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    s = torch.eye(7, dtype=torch.float64) + 0.1
    shared, align, maps = merge_free(feats, readers, s, method, fit=True)
    torch.testing.assert_close(maps @ shared, align @ feats)  # every head is recovered exactly
    keys = torch.complex(torch.randn(1, 3, 7), torch.randn(1, 3, 7)).to(torch.complex128).expand(3, 3, 7)
    shared, phase, coef = merge_rotary(keys, torch.ones(3, 3, dtype=torch.float64), s, method, fit=True)
    torch.testing.assert_close(coef.unsqueeze(-1) * shared, phase.unsqueeze(-1) * keys)


def test_svd_loses_less_than_mean_and_aligned_on_its_objective():
    torch.manual_seed(0)
    feats = torch.randn(3, 4, 9, dtype=torch.float64)
    readers = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    s = torch.eye(9, dtype=torch.float64)

    def loss(method):
        shared, align, maps = merge_free(feats, readers, s, method, fit=True)
        return float(((align @ feats - maps @ shared) ** 2).sum())

    assert loss("svd") < loss("aligned") < loss("mean")


def test_aligned_recovers_heads_that_differ_by_a_rotation():
    """Heads equal up to an orthogonal map (values) or a phase per pair (keys) merge without loss."""
    torch.manual_seed(0)
    base = torch.randn(4, 6, dtype=torch.float64)
    rotations = torch.linalg.qr(torch.randn(3, 4, 4, dtype=torch.float64)).Q
    feats = rotations @ base
    shared, align, maps = merge_free(
        feats, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), torch.eye(6, dtype=torch.float64), "aligned", fit=True
    )
    torch.testing.assert_close(maps @ shared, align @ feats)
    torch.testing.assert_close(align @ feats, (align @ feats)[:1].expand(3, 4, 6))  # lined up exactly
    keys = torch.complex(torch.randn(1, 5, 6), torch.randn(1, 5, 6)).to(torch.complex128)
    turned = torch.polar(torch.ones(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64) * 6).unsqueeze(-1)
    shared, phase, coef = merge_rotary(
        turned * keys, torch.ones(3, 5, dtype=torch.float64), torch.eye(6, dtype=torch.float64), "aligned", fit=True
    )
    lined_up = phase.unsqueeze(-1) * turned * keys
    torch.testing.assert_close(lined_up, lined_up[:1].expand_as(lined_up))


def test_similarity_groups_find_hidden_blocks_and_never_do_worse_than_contiguous():
    order = torch.tensor([5, 0, 3, 1, 4, 2])  # heads 5, 0 / 3, 1 / 4, 2 belong together
    block = torch.ones(2, 2) - torch.eye(2)
    costs = torch.ones(6, 6) - torch.eye(6)
    for g in range(3):
        pair = order[2 * g : 2 * g + 2]
        costs[pair[:, None], pair[None, :]] = 0.01 * block
    groups = similarity_groups(costs.double(), 3)
    assert groups.tolist() == [[0, 5], [1, 3], [2, 4]]
    assert torch.equal(groups, similarity_groups(costs.double(), 3))  # deterministic
    random = torch.rand(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    random = random + random.T
    found = similarity_groups(random, 2)

    def within(groups):
        return sum(float(random[g][:, g].sum()) for g in groups)

    assert within(found) <= within(torch.arange(8).view(2, 4)) + 1e-12
    with pytest.raises(ValueError, match="8 heads cannot make 3 equal groups"):
        similarity_groups(random, 3)


def test_merge_costs_are_zero_for_equal_heads_only():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 5, dtype=torch.float64) for _ in range(3))
    o = torch.randn(3, 6, 4, dtype=torch.float64)  # (heads, hidden, head_dim)
    k[1], v[1], o[1] = k[0], v[0], o[0]
    heads = LayerHeads(q, k, v, o)
    costs = merge_costs(heads, torch.eye(5, dtype=torch.float64), HeadLayout.rotary(4, 4, "half"))
    assert costs[0, 1] < 1e-12 and costs[0, 2] > 0.05 and costs[1, 2] > 0.05
    torch.testing.assert_close(costs, costs.T)


@pytest.mark.parametrize("method", ["mean", "aligned", "svd"])
def test_values_false_keeps_the_output_projection_and_averages_the_values(method):
    torch.manual_seed(0)
    heads = LayerHeads(*(torch.randn(3, 4, 5, dtype=torch.float64) for _ in range(3)), torch.randn(3, 6, 4).double())
    s = torch.eye(5, dtype=torch.float64)
    merged = merge_group(heads, s, HeadLayout.rotary(4, 4, "half"), method, values=False)
    assert torch.equal(merged.o, heads.o)
    assert torch.equal(merged.v, heads.v.mean(0).expand_as(heads.v))
    aligned = merge_group(heads, s, HeadLayout.rotary(4, 4, "half"), "aligned", merge=False, values=False)
    assert torch.equal(aligned.v, heads.v) and torch.equal(aligned.o, heads.o)


def test_align_only_with_merging_methods_is_refused():
    heads = LayerHeads(*(torch.zeros(2, 4, 3, dtype=torch.float64) for _ in range(4)))
    with pytest.raises(ValueError, match="^merge=False shows the alignment alone: use method='aligned' without fit$"):
        merge_group(heads, torch.eye(3, dtype=torch.float64), HeadLayout.rotary(4, 0, None), "svd", merge=False)
    with pytest.raises(ValueError, match=r"^merge method 'pca' is not one of \['mean', 'aligned', 'svd'\]$"):
        merge_group(heads, torch.eye(3, dtype=torch.float64), HeadLayout.rotary(4, 0, None), "pca")


# -- on models of every family ------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_alone_leaves_the_function_unchanged(family):
    """Phases per RoPE pair, orthogonal maps on keys without RoPE and on values: logits unchanged (1e-4)."""
    assert_alignment_keeps_the_function(hav.convert(tiny_model(family).double(), "mha"), random_ids(), atol=1e-4)


def assert_alignment_keeps_the_function(mha, ids, atol) -> None:
    """The alignment calibrated merges apply before averaging (``merge=False``), on ``mha`` with random norm
    weights, leaves its logits within ``atol``."""
    randomize_norms(mha)
    adapter = hav.family_for(mha.config)
    calibration, layout = calibration_of(mha), adapter.head_layout(mha, mha.config)
    keys, values = not adapter.keys_normed(mha.config), not adapter.gated_outputs
    before = logits(mha, ids)
    rewrite_layers(
        mha,
        lambda heads, name: merge_layer(
            heads, calibration.moments[name], layout, 2, "aligned", keys=keys, merge=False, values=values
        ),
    )
    torch.testing.assert_close(logits(mha, ids), before, atol=atol, rtol=0)


@pytest.mark.parametrize("family", PERMUTABLE)
def test_reordering_heads_leaves_the_function_unchanged(family):
    mha = hav.convert(tiny_model(family).double(), "mha")
    adapter, ids = hav.family_for(mha.config), random_ids()
    before = logits(mha, ids)
    order = torch.randperm(HEADS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _, module in adapter.attention_modules(mha):
            views = adapter.head_views(module, mha.config)
            _write_heads(views, _read_heads(views).permute(order))
            for sliced in adapter.head_sliced:
                weight = getattr(module, sliced).weight
                weight.copy_(weight.unflatten(0, (HEADS, -1))[order].flatten())
    torch.testing.assert_close(logits(mha, ids), before, atol=1e-6, rtol=0)  # some norms compute in float32


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kv_init", ["aligned", "svd"])
def test_every_family_converts_with_calibrated_merging(family, kv_init):
    source = tiny_model(family)
    calibration = calibration_of(source)
    grouping = "similarity" if family_of(family).permutable else "contiguous"
    variant = hav.convert(source, "gqa", 2, kv_init, calibration=calibration, grouping=grouping, fit=True)
    assert hav.family_for(variant.config).num_kv_heads(variant.config) == 2
    ids = random_ids()
    out = logits(variant, ids)
    assert torch.isfinite(out).all()
    again = hav.convert(source, "gqa", 2, kv_init, calibration=calibration, grouping=grouping, fit=True)
    torch.testing.assert_close(logits(again, ids), out, atol=0, rtol=0)  # deterministic
    cache = variant(input_ids=ids, use_cache=True).past_key_values
    assert {layer.keys.shape[1] for layer in cache.layers} == {2}


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gptj", "opt", "falcon"])
def test_aligned_and_svd_undo_function_preserving_transforms_of_a_gqa_model(family):
    """A GQA-2 model, expanded to MHA and disguised (a phase per RoPE pair and head, an orthogonal map per value
    head): ``aligned`` and ``svd`` merge it back to the GQA-2 model's function; ``mean`` does not."""
    gqa = hav.convert(tiny_model(family).double(), "gqa", 2, "first")
    mha = hav.convert(gqa, "mha")
    adapter, ids = hav.family_for(mha.config), random_ids()
    layout = adapter.head_layout(mha, mha.config)
    generator = torch.Generator().manual_seed(0)

    def disguise(heads, name):
        q, k, v, o = heads.q.clone(), heads.k.clone(), heads.v.clone(), heads.o.clone()
        pairs, free = layout.pairs, layout.free
        angle = torch.rand(HEADS, len(pairs), 1, generator=generator, dtype=torch.float64) * 2 * math.pi
        for rows in (q, k):  # the same phase on a query pair and its key pair keeps Re(q conj k)
            c = torch.complex(rows[:, pairs[:, 0]], rows[:, pairs[:, 1]]) * torch.polar(torch.ones_like(angle), angle)
            rows[:, pairs[:, 0]], rows[:, pairs[:, 1]] = c.real, c.imag
        turn = torch.linalg.qr(torch.randn(HEADS, len(free), len(free), generator=generator, dtype=torch.float64)).Q
        q[:, free], k[:, free] = turn @ q[:, free], turn @ k[:, free]
        turn = torch.linalg.qr(torch.randn(HEADS, v.shape[1], v.shape[1], generator=generator, dtype=torch.float64)).Q
        return LayerHeads(q, k, turn @ v, o @ turn.mT)

    rewrite_layers(mha, disguise)
    expected = logits(gqa, ids)
    torch.testing.assert_close(logits(mha, ids), expected, atol=1e-6, rtol=0)  # the disguise is exact
    calibration = calibration_of(mha)
    for kv_init in ("aligned", "svd"):
        merged = hav.convert(mha, "gqa", 2, kv_init, calibration=calibration)
        torch.testing.assert_close(logits(merged, ids), expected, atol=1e-6, rtol=0)
    assert (logits(hav.convert(mha, "gqa", 2, "mean"), ids) - expected).abs().max() > 1e-3


def test_similarity_grouping_recovers_shuffled_groups():
    """An MHA model whose heads are a GQA-2 model's, shuffled: similarity grouping finds the groups again."""
    gqa = hav.convert(tiny_model("llama").double(), "gqa", 2, "first")
    mha = hav.convert(gqa, "mha")
    order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    rewrite_layers(mha, lambda heads, name: heads.permute(order))
    ids = random_ids()
    expected = logits(gqa, ids)
    calibration = calibration_of(mha)
    found = hav.convert(mha, "gqa", 2, "mean", calibration=calibration, grouping="similarity")
    torch.testing.assert_close(logits(found, ids), expected, atol=1e-8, rtol=0)
    assert (logits(hav.convert(mha, "gqa", 2, "mean"), ids) - expected).abs().max() > 1e-3


def test_sequential_merging_fits_the_output_projection_on_activations():
    source = tiny_model("llama").double()
    calibration = calibration_of(source, n=48, length=32)  # 1536 tokens for a 64 x 64 least-squares fit
    ids = random_ids(seed=5)
    target = logits(source, ids)

    def error(**kwargs):
        return float(
            (logits(hav.convert(source, "mqa", kv_init="svd", calibration=calibration, **kwargs), ids) - target).norm()
        )

    assert error(sequential=True) < error()


def test_calibration_is_deterministic_and_round_trips_through_safetensors(tmp_path):
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    first = hav.calibrate(model, tokenizer, num_samples=4, seq_len=16, seed=7)
    second = hav.calibrate(model, tokenizer, num_samples=4, seq_len=16, seed=7)
    assert torch.equal(first.input_ids, second.input_ids) and first.input_ids.shape == (4, 16)
    assert all(torch.equal(first.moments[k], second.moments[k]) for k in first.moments)
    other = hav.calibrate(model, tokenizer, num_samples=4, seq_len=16, seed=8)
    assert not torch.equal(first.input_ids, other.input_ids)
    first.save(tmp_path / "calibration.safetensors")
    loaded = Calibration.load(tmp_path / "calibration.safetensors")
    assert loaded.source == first.source and loaded.info == first.info
    assert all(torch.equal(loaded.moments[k], first.moments[k]) for k in first.moments)
    assert torch.equal(loaded.input_ids, first.input_ids)
    s = first.moments["model.layers.0.self_attn"]
    assert s.shape == (65, 65) and s[-1, -1] == 1  # E[1 * 1]
    torch.testing.assert_close(s, s.T)


def test_calibration_blocks_refuse_too_few_blocks_and_leave_held_out_text_alone():
    tokenizer = char_tokenizer()
    every = calibration_blocks(tokenizer, num_samples=1, seq_len=64, exclude_last=0.0, seed=0)
    with pytest.raises(
        ValueError,
        match=r"^the calibration text makes \d+ blocks, fewer than num_samples=100000; ask for fewer or shorter "
        "samples, or give more text$",
    ):
        calibration_blocks(tokenizer, num_samples=100000, seq_len=64)
    blocks = [[i] * 4 for i in range(10)]
    drawn = calibration_blocks(num_samples=10, blocks=blocks)
    assert sorted(row[0] for row in drawn.tolist()) == list(range(10)) and every.shape == (1, 64)
    with pytest.raises(ValueError, match="^num_samples=0 must be at least 1 and seq_len=256 at least 2$"):
        calibration_blocks(tokenizer, num_samples=0)


def kl_from(source, model, ids) -> float:
    """Mean over tokens of KL(source || model) of the next-token distributions on ``ids``."""
    target, got = logits(source, ids).log_softmax(-1), logits(model, ids).log_softmax(-1)
    return (target.exp() * (target - got)).sum(-1).mean().item()


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_distilling_trains_only_attention_weights_towards_the_source_output(family):
    source = tiny_model(family).double()
    untouched = {k: v.clone() for k, v in source.state_dict().items()}
    calibration = calibration_of(source, n=16, length=16)
    merged = hav.convert(source, "mqa", kv_init="svd", calibration=calibration)
    options = dict(kv_init="svd", calibration=calibration, distill_steps=30, distill_lr=3e-4)
    distilled = hav.convert(source, "mqa", **options)
    # on the blocks it read (random tokens say nothing of other text; docs/conversion.md measures held-out text)
    ids = calibration.input_ids
    assert kl_from(source, distilled, ids) < 0.7 * kl_from(source, merged, ids)
    assert all(torch.equal(untouched[k], v) for k, v in source.state_dict().items())  # the teacher is unchanged
    attention = {f"{name}.{p}" for name, m in hav.family_for(merged.config).attention_modules(merged)
                 for p, _ in m.named_parameters()}  # fmt: skip
    before, after = merged.state_dict(), distilled.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= attention, changed - attention
    assert all(p.requires_grad for p in distilled.parameters())  # flags restored
    again = hav.convert(source, "mqa", **options)  # the same seed, the same weights
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())
    assert distilled.config.attn_variant_recipe["distill_steps"] == 30


def test_bad_distillation_options_are_refused():
    source = tiny_model("llama")
    with pytest.raises(ValueError, match="^distill_steps=-1 must be a whole number, 0 or more$"):
        hav.convert(source, "mqa", kv_init="svd", calibration=calibration_of(source), distill_steps=-1)
    with pytest.raises(ValueError, match=r"^distill_lr=0 must be a finite number above 0 \(such as 1e-4\)$"):
        hav.KVRecipe(distill_lr=0)
    with pytest.raises(ValueError, match=r"kv_init='first' takes no merge options, got \{'distill_steps': 5\}"):
        hav.convert(source, "mqa", kv_init="first", distill_steps=5)


def test_bad_merge_options_are_refused_with_the_valid_choices():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"grouping='nearest' is not one of \['contiguous', 'similarity'\]"):
        hav.convert(model, "mqa", grouping="nearest")
    with pytest.raises(ValueError, match=r"kv_init='first' takes no merge options, got \{'fit': True\}"):
        hav.convert(model, "mqa", kv_init="first", fit=True)
    with pytest.raises(ValueError, match=r"kv_init='first' takes no merge options, got \{'sequential': True\}"):
        hav.convert(model, "mqa", kv_init="first", sequential=True)
    message = (
        "kv_init='svd' with {'grouping': 'contiguous', 'fit': False, 'sequential': True, 'refine_steps': 0, "
        "'refine_lr': 0.0001, 'distill_steps': 0, 'distill_lr': 0.0001} merges heads from calibration statistics: "
        "pass tokenizer=... or calibration=hf_attn_variants.calibrate(model, tokenizer) (or use kv_init='mean' "
        "without fit, grouping, sequential, refine_steps or distill_steps)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.convert(model, "mqa", kv_init="svd", sequential=True)
    message = (
        "the calibration was made on another model: it covers 3 attention modules (['model.layers.0.self_attn', "
        "'model.layers.1.self_attn']...), this model has 2 (model.layers.0.self_attn...)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.convert(model, "mqa", kv_init="svd", calibration=calibration_of(tiny_model("llama", num_hidden_layers=3)))
    with pytest.raises(
        ValueError,
        match=r"^calibration must be a hf_attn_variants\.Calibration \(or a function returning one\), got dict$",
    ):
        hav.convert(model, "mqa", kv_init="svd", calibration={"moments": {}})
    message = (
        "grouping='similarity' reorders query heads, which bloom cannot do (its ALiBi slopes belong to head "
        "positions); use grouping='contiguous'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.convert(tiny_model("bloom"), "gqa", 2, grouping="similarity")
    message = (
        "kv_init='svd' merges whole attention layers (queries, keys, values and outputs together), not one tensor: "
        "use hf_attn_variants.convert on a model in memory"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        regroup_kv_heads(torch.zeros(8, 3), 4, 4, 2, "svd")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.convert_state_dict(model.state_dict(), model.config, 1, "svd")


def test_expansion_ignores_merge_options():
    """More K/V heads are exact copies, whatever kv_init asks for."""
    source = tiny_model("llama")
    ids = random_ids()
    expanded = hav.convert(source, "mha", kv_init="svd", fit=True)
    torch.testing.assert_close(logits(expanded, ids), logits(source, ids), atol=0, rtol=0)


def test_from_pretrained_calibrates_with_the_sources_tokenizer_when_not_given_a_calibration(tmp_path):
    from .conftest import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path / "src", "llama")
    model = hav.AutoModelForCausalLM.from_pretrained(folder, attn_variant="mqa", kv_init="svd", grouping="contiguous")
    assert model.config.num_key_value_heads == 1
    tokenizer = char_tokenizer()
    source = hav.AutoModelForCausalLM.from_pretrained(folder)
    calibration = hav.calibrate(source, tokenizer)  # the defaults from_pretrained uses
    expected = hav.convert(source, "mqa", kv_init="svd", calibration=calibration)
    ids = random_ids()
    torch.testing.assert_close(logits(model, ids), logits(expected, ids), atol=0, rtol=0)
    given = hav.AutoModelForCausalLM.from_pretrained(folder, attn_variant="mqa", kv_init="svd", calibration=calibration)
    torch.testing.assert_close(logits(given, ids), logits(expected, ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"\['fit'\] given without attn_variant"):
        hav.AutoModelForCausalLM.from_pretrained(folder, fit=True)


def test_cli_convert_merges_with_calibration_in_memory(tmp_path, capsys):
    from hf_attn_variants import cli

    from .conftest import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path / "src", "llama")
    out = tmp_path / "out"
    argv = ["convert", str(folder), str(out), "--variant", "mqa", "--kv-init", "svd", "--grouping", "contiguous",
            "--calibration-samples", "4", "--calibration-seq-len", "16", "--fit"]  # fmt: skip
    assert cli.main(argv) == 0
    converted = hav.AutoModelForCausalLM.from_pretrained(out)
    assert converted.config.num_key_value_heads == 1
    source = hav.AutoModelForCausalLM.from_pretrained(folder)
    calibration = hav.calibrate(source, char_tokenizer(), num_samples=4, seq_len=16)
    expected = hav.convert(source, "mqa", kv_init="svd", calibration=calibration, fit=True)
    ids = random_ids()
    torch.testing.assert_close(logits(converted, ids), logits(expected, ids), atol=1e-6, rtol=0)
    assert "low-rank merge" in (out / "README.md").read_text()
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["convert", str(folder), str(tmp_path / "bad"), "--variant", "mqa", "--grouping", "nearest"])
    assert exit_code.value.code == 2 and not (tmp_path / "bad").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        "hf-attn-variants convert: error: argument --grouping: invalid choice: 'nearest' (choose from 'contiguous', "
        "'similarity')"
    )


def test_merging_runs_in_eval_mode_and_keeps_the_training_flag():
    source = tiny_model("llama", attention_dropout=0.5).train()
    calibration = calibration_of(source.eval())
    source.train()
    first = hav.convert(source, "mqa", kv_init="svd", calibration=calibration, sequential=True)
    second = hav.convert(source, "mqa", kv_init="svd", calibration=calibration, sequential=True)
    assert source.training and first.training
    ids = random_ids()
    torch.testing.assert_close(logits(first.eval(), ids), logits(second.eval(), ids), atol=0, rtol=0)


def test_refining_trains_only_attention_weights_towards_the_source():
    source = tiny_model("llama").double()
    calibration = calibration_of(source, n=16, length=16)
    merged = hav.convert(source, "mqa", kv_init="svd", calibration=calibration)
    refined = hav.convert(source, "mqa", kv_init="svd", calibration=calibration, refine_steps=20, refine_lr=1e-3)
    ids = calibration.input_ids
    target = logits(source, ids)
    assert (logits(refined, ids) - target).norm() < (logits(merged, ids) - target).norm()
    before, after = merged.state_dict(), refined.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert sorted(changed) == [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "koqv"]
    assert not any(p.requires_grad is False for p in refined.parameters())  # flags restored
    with pytest.raises(ValueError, match="^refine_steps=-1 must be a whole number, 0 or more$"):
        hav.convert(source, "mqa", kv_init="svd", calibration=calibration, refine_steps=-1)
