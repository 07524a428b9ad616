"""One tester over family x variant x attention implementation, against unmodified transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

import hf_attn_variants as hav
from hf_attn_variants.compat import output_cache
from hf_attn_variants.families.registry import variant_model_classes

from .conftest import (
    FAMILIES,
    HEADS,
    NO_CPU_FLEX,
    NO_SDPA,
    NORM_OVER_KV,
    PLUGIN,
    cache_bytes,
    family_attn,
    family_of,
    kv_heads_in_cache,
    native_kv_heads,
    own_config_kwargs,
    tiny_config,
    tiny_model,
)

# (attn_variant, num_key_value_heads) reached from each family's tiny model
VARIANTS = [("mha", None), ("gqa", 4), ("gqa", 2), ("mqa", None)]


def logits(model, input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids, **kwargs).logits


@pytest.mark.parametrize("family, attn", family_attn())
def test_mha_to_mha_reproduces_unmodified_transformers_exactly(family, attn, input_ids):
    source = tiny_model(family, attn, **own_config_kwargs(family, HEADS))
    converted = hav.convert(source, "mha")
    assert torch.equal(logits(converted, input_ids), logits(source, input_ids))


def with_plugin_attention(source):
    """``source`` (a plugin family's own model) run by the plugin's variant class with G = H K/V heads."""
    variant_class = variant_model_classes(hav.family_for(source.config))[type(source)]
    config = variant_class.config_class.from_dict({**source.config.to_dict(), "num_key_value_heads": HEADS})
    variant = variant_class._from_config(config, attn_implementation=source.config._attn_implementation)
    variant = variant.to(source.dtype).eval()
    variant.load_state_dict(source.state_dict())  # the family's own checkpoint, so its own q/k/v layout
    attention = [m for m in variant.modules() if type(m).__name__ == "VariantAttention"]
    assert len(attention) == variant.config.num_hidden_layers
    return variant


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("family, attn", family_attn(PLUGIN))
def test_plugin_attention_with_all_heads_reproduces_the_family_exactly(family, attn, dtype, input_ids):
    """A plugin family's MHA variant is the family's own model; this runs the plugin's attention with G = H
    against it."""
    source = tiny_model(family, attn, **own_config_kwargs(family, HEADS)).to(dtype)
    assert torch.equal(logits(with_plugin_attention(source), input_ids), logits(source, input_ids))


@pytest.mark.parametrize(
    "family, options",
    [
        ("opt", {"do_layer_norm_before": False, "enable_bias": False}),
        ("opt", {"word_embed_proj_dim": 32, "_remove_final_layer_norm": True}),
        ("gpt_neox", {"use_parallel_residual": False, "attention_bias": False, "rotary_pct": 1.0}),
        ("gpt_neox", {"rotary_pct": 0.25, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        ("gptj", {"rotary_dim": 8}),
        ("bloom", {"apply_residual_connection_post_layernorm": True}),
        ("gpt_bigcode", {"multi_query": False, "scale_attn_weights": False}),
        (
            "falcon",
            {
                "new_decoder_architecture": False,
                "multi_query": False,
                "num_kv_heads": HEADS,
                "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
            },
        ),
    ],
    ids=str,
)
def test_plugin_family_options_are_kept(family, options, input_ids):
    source = tiny_model(family, **options)
    assert torch.equal(logits(with_plugin_attention(source), input_ids), logits(source, input_ids))
    roundtrip = hav.convert(hav.convert(source, "gqa", 2), "mha")
    assert type(roundtrip) is type(source)
    again = hav.convert(roundtrip, "gqa", 2)
    torch.testing.assert_close(logits(again, input_ids), logits(roundtrip, input_ids), rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    "family, options, message",
    [
        *[("gptj", {"rotary_dim": d}, rf"GPT-J with rotary_dim={d} is not supported.*head_dim=8") for d in (0, 3, 16)],
        ("bloom", {"pretraining_tp": 2, "slow_but_exact": True}, "BLOOM with slow_but_exact=True and pretraining_tp=2"),
        ("falcon", {"alibi": True}, "Falcon with alibi=True is not supported"),
        (
            "falcon",
            {"new_decoder_architecture": False, "multi_query": False, "num_kv_heads": 4},
            "Falcon with new_decoder_architecture=False, multi_query=False and num_kv_heads=4",
        ),
    ],
)
def test_configs_a_variant_cannot_reproduce_are_refused(family, options, message):
    with pytest.raises(ValueError, match=message):
        hav.AttnVariantConfig.from_base(tiny_config(family, **options), "mqa")
    with pytest.raises(ValueError, match=message):
        hav.convert(transformers.AutoModelForCausalLM.from_config(tiny_config(family, **options)), "mha")


# the native layouts of the mixed families that their TINY line does not cover
OTHER_NATIVE_LAYOUTS = [
    ("gpt_bigcode", {"multi_query": False}),
    ("falcon", {"new_decoder_architecture": False, "multi_query": True}),
    (
        "falcon",
        {
            "new_decoder_architecture": False,
            "multi_query": False,
            "num_kv_heads": HEADS,
            "parallel_attn": False,
            "bias": True,
        },
    ),
    ("falcon", {"num_kv_heads": 2, "num_ln_in_parallel_attn": 1, "bias": True}),
]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family, options", OTHER_NATIVE_LAYOUTS, ids=str)
def test_other_native_layouts_of_mixed_families(family, options, attn, input_ids, tmp_path):
    source = tiny_model(family, attn, **options)
    src_kv = native_kv_heads(source)
    assert torch.equal(logits(hav.convert(source, None, src_kv), input_ids), logits(source, input_ids))
    if src_kv == HEADS:
        assert torch.equal(logits(with_plugin_attention(source), input_ids), logits(source, input_ids))
    expanded = hav.convert(source, "mha")
    torch.testing.assert_close(logits(expanded, input_ids), logits(source, input_ids), rtol=0, atol=1e-6)
    for kv in (1, 2, 4, HEADS):
        model = hav.convert(expanded, None, kv)
        adapter = hav.family_for(source.config)
        own = adapter.own_config_values(source.config, kv) if adapter.saves_natively(source.config, kv) else None
        assert model.config.model_type == (family if own is not None else f"attn_variant_{family}")
        assert native_kv_heads(model) == kv and all(getattr(model.config, f) == v for f, v in (own or {}).items())
        pooled_back = hav.convert(hav.convert(model, "mha"), None, kv)  # mean of equal heads
        torch.testing.assert_close(logits(pooled_back, input_ids), logits(model, input_ids), rtol=0, atol=2e-6)
        model.save_pretrained(tmp_path / str(kv))
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / str(kv), attn_implementation=attn)
        assert type(reloaded) is type(model)
        assert torch.equal(logits(reloaded.eval(), input_ids), logits(model, input_ids))
        kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(input_ids, **kwargs), model.generate(input_ids, use_cache=False, **kwargs))


@pytest.mark.parametrize("family, attn", family_attn())
def test_gqa_to_mha_expansion_is_exact(family, attn, input_ids):
    source = tiny_model(family, attn)  # GQA-4 (native) or MHA, made GQA-4 by the plugin
    source = source if family_of(family).native else hav.convert(source, "gqa", 4)
    expanded = hav.convert(source, "mha")
    assert native_kv_heads(expanded) == HEADS
    torch.testing.assert_close(logits(expanded, input_ids), logits(source, input_ids), rtol=0, atol=1e-6)
    if attn == "eager" and family not in NORM_OVER_KV:
        assert torch.equal(logits(expanded, input_ids), logits(source, input_ids))


@pytest.mark.parametrize("family, attn", family_attn())
@pytest.mark.parametrize("variant, count", [("gqa", 2), ("mqa", None)])
def test_mean_pooling_of_equal_heads_is_exact(family, attn, variant, count, input_ids):
    base = tiny_model(family, attn)
    pooled = hav.convert(base, variant, count)  # G heads...
    source = hav.convert(pooled, num_key_value_heads=native_kv_heads(base), attn_variant=None)  # ...duplicated back
    again = hav.convert(source, variant, count, kv_init="mean")
    assert native_kv_heads(again) == native_kv_heads(pooled)
    torch.testing.assert_close(logits(again, input_ids), logits(source, input_ids), rtol=0, atol=2e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant, count", VARIANTS)
def test_variant_really_holds_g_kv_heads_and_its_cache_matches_the_plan(family, variant, count, input_ids):
    model = hav.convert(tiny_model(family), variant, count)
    kv = hav.resolve_num_kv_heads(variant, count, HEADS)
    adapter = hav.family_for(model.config)
    head_dim = adapter.head_dim(model.config)
    qkv = adapter.projections("qkv")
    qkv_rows = sum(
        p.shape[-1] if adapter.lora_fan_in_fan_out else p.shape[0]  # Conv1D stores (in, out)
        for n, p in model.named_parameters()
        if n.endswith(".weight") and n.removesuffix(".weight").endswith(qkv)
    )
    assert qkv_rows == 2 * (HEADS + 2 * kv) * head_dim  # 2 layers x (q, k, v)
    with torch.no_grad():
        out = model(input_ids, use_cache=True)
    assert kv_heads_in_cache(output_cache(out)) == {kv}
    plan = hav.kv_cache_plan(model.config, [(variant, count)], seq_len=input_ids.shape[1], batch=input_ids.shape[0])
    assert cache_bytes(output_cache(out)) == plan[0]["total_bytes"]


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("family, attn", family_attn())
def test_greedy_generation_with_cache_equals_without(family, attn, cache_implementation, input_ids):
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    try:
        tiny_model(family, attn).generate(input_ids, cache_implementation=cache_implementation, **kwargs)
    except Exception as error:  # noqa: BLE001 - what the family's own model does is what a variant can match
        pytest.skip(f"transformers {transformers.__version__}'s own {family} fails with a {cache_implementation} "
                    f"cache: {error}")  # fmt: skip
    model = hav.convert(tiny_model(family, attn), "gqa", 2)
    with_cache = model.generate(input_ids, use_cache=True, cache_implementation=cache_implementation, **kwargs)
    without = model.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("family, attn", family_attn())
def test_left_padded_batch_gives_each_row_its_own_logits(family, attn):
    model = hav.convert(tiny_model(family, attn), "mqa")
    rows = [torch.tensor([5, 6, 7, 8, 9, 10, 11]), torch.tensor([12, 13, 14])]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]).long() for r in rows])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = logits(model, ids, attention_mask=mask, position_ids=position_ids)
    for i, row in enumerate(rows):
        alone = logits(model, row[None])
        torch.testing.assert_close(batched[i, width - len(row) :], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in NO_SDPA])
@pytest.mark.parametrize("variant, count", [("gqa", 2), ("mqa", None)])
def test_eager_and_sdpa_agree(family, variant, count, input_ids):
    eager = hav.convert(tiny_model(family, "eager"), variant, count)
    sdpa = hav.convert(tiny_model(family, "sdpa"), variant, count)
    torch.testing.assert_close(logits(sdpa, input_ids), logits(eager, input_ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kv_init", ["mean", "first", "random"])  # calibrated methods: tests/test_merging.py
def test_kv_init_methods_differ_and_are_deterministic(family, kv_init, input_ids):
    source = tiny_model(family, **own_config_kwargs(family, HEADS))  # H distinct K/V heads to pool
    a = logits(hav.convert(source, "mqa", kv_init=kv_init, seed=3), input_ids)
    b = logits(hav.convert(source, "mqa", kv_init=kv_init, seed=3), input_ids)
    assert torch.equal(a, b)
    if kv_init != "mean":
        assert not torch.equal(a, logits(hav.convert(source, "mqa", kv_init="mean"), input_ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_conversion_keeps_dtype_and_shares_unchanged_tensors(family):
    source = tiny_model(family).to(torch.bfloat16)
    converted = hav.convert(source, "mqa")
    assert converted.dtype == torch.bfloat16
    embed = converted.get_input_embeddings().weight
    assert embed.data_ptr() == source.get_input_embeddings().weight.data_ptr()
    assert not any(b.is_meta for b in converted.buffers()) and not any(p.is_meta for p in converted.parameters())


RELOAD_WITHOUT_PLUGIN = """
import json, sys, torch, transformers
from safetensors.torch import load_file
assert "hf_attn_variants" not in sys.modules
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
assert "hf_attn_variants" not in sys.modules
data = load_file(sys.argv[2])
with torch.no_grad():
    out = model(data["input_ids"]).logits
for field, value in json.loads(sys.argv[3]).items():
    assert getattr(model.config, field) == value, (field, getattr(model.config, field))
assert torch.equal(out, data["logits"]), (out - data["logits"]).abs().max()
print("ok")
"""


@pytest.mark.parametrize("family", [f for f in FAMILIES if own_config_kwargs(f, 1) is not None])
def test_native_variant_reloads_in_a_process_that_never_imports_the_plugin(family, input_ids, tmp_path):
    """MQA, wherever the family's own config can hold it, is saved as the family's own model."""
    from safetensors.torch import save_file

    model = hav.convert(tiny_model(family, **own_config_kwargs(family, HEADS)), "mqa")
    model.save_pretrained(tmp_path / "model")
    assert model.config.model_type == family
    save_file({"input_ids": input_ids, "logits": logits(model, input_ids)}, str(tmp_path / "expected.safetensors"))
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD_WITHOUT_PLUGIN,
            str(tmp_path / "model"),
            str(tmp_path / "expected.safetensors"),
            json.dumps(own_config_kwargs(family, 1)),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("family", PLUGIN)
@pytest.mark.parametrize("variant, count", [("gqa", 2), ("mqa", None), ("mha", None)])
def test_plugin_variant_round_trips_through_plain_transformers(family, variant, count, input_ids, tmp_path):
    model = hav.convert(tiny_model(family), variant, count)
    model.save_pretrained(tmp_path)
    model_type = family_of(family).model_types[0]
    own = own_config_kwargs(family, hav.resolve_num_kv_heads(variant, count, HEADS)) is not None
    assert model.config.model_type == (model_type if own else f"attn_variant_{model_type}")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded) is type(model)
    assert torch.equal(logits(reloaded, input_ids), logits(model, input_ids))
    assert all(f.suffix != ".bin" for f in tmp_path.iterdir())


def test_gpt2_scaling_options_are_kept(input_ids):
    for options in (
        {"scale_attn_by_inverse_layer_idx": True},
        {"reorder_and_upcast_attn": True},
        {"scale_attn_weights": False},
    ):
        source = tiny_model("gpt2", **options)
        pooled = hav.convert(source, "gqa", 2)
        roundtrip = hav.convert(pooled, "mha")
        again = hav.convert(roundtrip, "gqa", 2)
        torch.testing.assert_close(logits(again, input_ids), logits(roundtrip, input_ids), rtol=0, atol=2e-6)
        for layer, block in enumerate(again.transformer.h):
            assert block.attn.scaling == source.transformer.h[layer].attn.scaling


def test_base_model_and_sequence_classifier_convert(input_ids):
    base = transformers.AutoModel.from_config(tiny_config("gpt2"))
    converted = hav.convert(base, "mqa")
    assert type(converted).__name__ == "GPT2AttnVariantModel"
    llama = transformers.AutoModelForSequenceClassification.from_config(tiny_config("llama", num_labels=3))
    assert hav.convert(llama, "mqa").config.num_key_value_heads == 1


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in NO_CPU_FLEX])
def test_flex_attention_agrees_with_eager(family, input_ids):
    torch._dynamo.reset()  # fresh static-shape kernels: torch 2.13's CPU template fails once shapes go dynamic
    eager = hav.convert(tiny_model(family, "eager"), "gqa", 2)
    flex = hav.convert(tiny_model(family, "eager"), "gqa", 2)
    flex.set_attn_implementation("flex_attention")
    assert flex.config._attn_implementation == "flex_attention"
    torch.testing.assert_close(logits(flex, input_ids), logits(eager, input_ids), rtol=0, atol=1e-5)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(flex.generate(input_ids, **kwargs), eager.generate(input_ids, **kwargs))


@pytest.mark.parametrize("window", [4, 20])
def test_plan_counts_what_a_sliding_window_cache_holds(window, input_ids):
    model = hav.convert(tiny_model("mistral", sliding_window=window), "mqa")
    with torch.no_grad():
        out = model(input_ids, use_cache=True)
    plan = hav.kv_cache_plan(model.config, [("mqa", None)], seq_len=input_ids.shape[1], batch=input_ids.shape[0])
    assert cache_bytes(output_cache(out)) == plan[0]["total_bytes"]
