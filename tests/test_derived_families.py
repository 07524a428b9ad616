"""The matrix that proves every native family, hand-written or derived from transformers, on a tiny random model.

For each model type: MHA->MHA reproduces the logits bit for bit; GQA->MHA expansion reproduces them (within float
rounding where a norm spans the K projection); mean pooling of K/V heads that are equal within each group is exact;
the cache of a converted model holds its G K/V heads; and ONE fresh process that never imports the plugin reloads
every saved MQA variant with plain ``transformers.AutoModelForCausalLM`` and gets the same logits. Derived families are
``hf_attn_variants/families/derived.py``, written by ``scripts/derive_families.py``; the tests below also check that
it is what the derivation gives today and that every causal-LM model type of transformers is supported or refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

import hf_attn_variants as hav
from hf_attn_variants.families import derived, generic, hand_written_model_types, refused_model_types

from .conftest import FAMILIES, NATIVE, PLUGIN, kv_heads_in_cache, native_kv_heads, run_script_on_cases, tiny_model
from .test_merging import assert_alignment_keeps_the_function

DERIVED = [t for f in hav.families() if f in derived.DERIVED_FAMILIES for t in f.model_types]  # this transformers'
AT_DERIVATION = transformers.__version__ == derived.TRANSFORMERS_VERSION
MATRIX = NATIVE + DERIVED  # hand-written native families on their TINY configs, derived ones on generic ones
HAND_NATIVE = {t: f for f in hav.families() if f.native and f.name in NATIVE for t in f.model_types}


def logits(model, input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids, **kwargs).logits


def heads(model_type) -> int:
    return tiny_model(model_type).config.num_attention_heads


def mha_source(model_type, attn="eager"):
    """The type's tiny model with as many K/V heads as query heads."""
    return tiny_model(model_type, attn, num_key_value_heads=heads(model_type))


def sdpa_attn(model_type) -> list[str]:
    own = transformers.AutoModelForCausalLM._model_mapping[type(tiny_model(model_type).config)]
    return ["eager", "sdpa"] if own._supports_sdpa else ["eager"]


@pytest.mark.parametrize("model_type", MATRIX)
def test_mha_to_mha_is_bit_exact(model_type, input_ids):
    source = mha_source(model_type)
    assert torch.equal(logits(hav.convert(source, "mha"), input_ids), logits(source, input_ids))


@pytest.mark.parametrize("model_type, attn", [(t, a) for t in MATRIX for a in sdpa_attn(t)])
def test_gqa_to_mha_expansion_is_exact(model_type, attn, input_ids):
    source = tiny_model(model_type, attn)  # G < H K/V heads
    assert native_kv_heads(source) < source.config.num_attention_heads
    expanded = hav.convert(source, "mha")
    assert native_kv_heads(expanded) == expanded.config.num_attention_heads
    torch.testing.assert_close(logits(expanded, input_ids), logits(source, input_ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", MATRIX)
def test_mean_pooling_of_equal_heads_is_exact_and_the_cache_holds_g_heads(model_type, input_ids):
    base = mha_source(model_type)
    for kv in (2, 1):
        pooled = hav.convert(base, None, kv)  # G heads...
        source = hav.convert(pooled, None, base.config.num_attention_heads)  # ...duplicated back to H
        again = hav.convert(source, None, kv, kv_init="mean")
        assert type(again) is type(base) and again.config.model_type == base.config.model_type
        torch.testing.assert_close(logits(again, input_ids), logits(source, input_ids), rtol=0, atol=2e-6)
        with torch.no_grad():
            out = again(input_ids, use_cache=True)
        assert again.config.num_key_value_heads == kv and kv_heads_in_cache(out.past_key_values) == {kv}


# The fresh process: plain transformers loads every saved variant listed in argv[1].
RELOAD = r"""
import json, sys
import torch, transformers
from safetensors.torch import load_file
transformers.logging.set_verbosity_error()
results = {}
for case in json.loads(open(sys.argv[1]).read()):
    model = transformers.AutoModelForCausalLM.from_pretrained(case["path"], attn_implementation="eager").eval()
    data = load_file(case["expected"])
    with torch.no_grad():
        out = model(data["input_ids"]).logits
    results[case["name"]] = {
        "class": type(model).__name__,
        "num_key_value_heads": model.config.num_key_value_heads,
        "equal": torch.equal(out, data["logits"]),
    }
assert "hf_attn_variants" not in sys.modules
open(sys.argv[2], "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def reloads(tmp_path_factory):
    """What plain transformers found, in one process, for the MQA variant (pooled from MHA) of every derived type."""
    root = tmp_path_factory.mktemp("derived-reload")
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    cases = []
    for model_type in DERIVED:
        for kv in (1,):  # GQA-2 reloads the same way (only the config's count differs); kept to MQA for CI time
            folder = root / f"{model_type}-{kv}"
            model = hav.convert(mha_source(model_type), None, kv)
            model.save_pretrained(folder)
            save_file({"input_ids": ids, "logits": logits(model, ids)}, str(folder / "expected.safetensors"))
            cases.append(
                {"name": f"{model_type}/{kv}", "path": str(folder), "expected": str(folder / "expected.safetensors")}
            )
    return run_script_on_cases(RELOAD, cases, root)


@pytest.mark.parametrize("model_type", DERIVED)
def test_variant_reloads_with_plain_transformers(reloads, model_type):
    found = reloads[f"{model_type}/1"]
    own = transformers.AutoModelForCausalLM._model_mapping[type(tiny_model(model_type).config)].__name__
    assert found == {"class": own, "num_key_value_heads": 1, "equal": True}


@pytest.mark.parametrize("model_type", DERIVED)
def test_alignment_alone_leaves_the_function_unchanged(model_type, input_ids):
    """Calibrated merges turn each RoPE pair of a query and its key by one phase: exact only with the type's own
    pairing (``rotary_style``, probed by the derivation), so a wrong pairing shows here as changed logits."""
    mha = in_float64(hav.convert(mha_source(model_type), "mha"))
    assert_alignment_keeps_the_function(mha, input_ids, atol=1e-6)  # some norms compute in float32


def in_float64(model):
    """``model`` in float64, its experts (mixture-of-experts types) run by the eager loop torch allows in float64."""
    if getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
        model.set_experts_implementation("eager")
    return model.double()


@pytest.mark.skipif(
    not AT_DERIVATION, reason=f"derived.py was derived from transformers {derived.TRANSFORMERS_VERSION}"
)
def test_derived_py_is_what_the_derivation_gives():
    text = generic.render_module(*generic.survey(hand_written_model_types()))
    path = Path(derived.__file__)
    assert path.read_text() == text, "out of date: run `PYTHONPATH=. python scripts/derive_families.py`"


def test_every_causal_lm_model_type_is_supported_or_refused():
    types = set(generic.causal_lm_model_types())
    supported, refused = set(hav.supported_model_types()), set(refused_model_types())
    assert not supported & refused
    if not AT_DERIVATION:  # an older transformers: its types the derivation saw, each supported or refused
        seen = {t for f in derived.DERIVED_FAMILIES for t in f.model_types} | set(derived.REFUSED)
        types &= seen | hand_written_model_types()
    assert types - supported - refused == set(), "neither supported nor refused: regenerate derived.py"
    assert len(set(DERIVED) | set(HAND_NATIVE)) >= 50


def test_every_registered_family_is_in_a_matrix():
    """Native families are in the matrix above; plugin families in tests/test_families.py's tester."""
    for family in hav.families():
        matrix = MATRIX if family.native else PLUGIN
        assert family.name in matrix or set(family.model_types) <= set(matrix), family.name
    assert set(PLUGIN) | set(NATIVE) == set(FAMILIES)


@pytest.mark.parametrize("model_type", sorted(HAND_NATIVE))
def test_hand_written_native_families_declare_what_the_derivation_finds(model_type):
    found = generic.derive_declaration(model_type)
    family = HAND_NATIVE[model_type]
    fields = ("q_projection", "kv_projections", "o_projection", "kv_shaped", "fused_qkv", "normed_keys", "rotary_style")
    for field in fields:
        if field in found or getattr(family, field, None):
            assert getattr(family, field) == found.get(field, type(family).__dataclass_fields__[field].default), field
    assert set(family.head_sliced) == set(found.get("head_sliced", ()))


@pytest.mark.parametrize(
    "config, reason",
    [
        (transformers.DeepseekV3Config(), "multi-head latent attention"),
        (transformers.BartConfig(), "encoder-decoder"),
        (transformers.Qwen3NextConfig(), "hybrid"),
        (transformers.BertConfig(), "no num_key_value_heads"),
    ],
    ids=lambda v: getattr(v, "model_type", ""),
)
def test_a_refused_type_is_refused_with_its_reason(config, reason):
    with pytest.raises(ValueError, match=rf"'{config.model_type}' is not supported.*'{config.model_type}': .*{reason}"):
        hav.family_for(config)


def test_a_setting_that_builds_another_attention_is_refused_by_name(tmp_path):
    """Cohere's use_qk_norm=True (Command R+) adds a key norm with one row per K/V head; the survey flips each bool
    setting of a type's config and refuses those that build an attention the declaration does not describe."""
    source = tmp_path / "cohere"
    tiny_model("cohere", use_qk_norm=True).save_pretrained(source)
    reason = "attention tensors with an unknown dependence on num_key_value_heads: ['k_norm.weight(2, 16)']"
    message = f"cohere with use_qk_norm=True is not supported: {reason}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.convert(tiny_model("cohere", use_qk_norm=True), "mqa")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_attn_variants.cli",
            "convert",
            str(source),
            str(tmp_path / "out"),
            "--variant",
            "mqa",
        ],
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (
        2,
        f"hf-attn-variants convert: error: {message}",
    )
    assert not (tmp_path / "out").exists()
    assert hav.convert(tiny_model("cohere"), "mqa").config.num_key_value_heads == 1  # the default setting converts


def test_a_key_norm_flag_makes_calibrated_merges_keep_the_keys_unturned():
    family = hav.family_for(tiny_model("glm4_moe").config)
    assert not family.normed_keys
    assert family.keys_normed(generic.tiny_config("glm4_moe", use_qk_norm=True))
    assert not family.keys_normed(generic.tiny_config("glm4_moe"))


def test_an_unknown_type_is_refused_as_unknown():
    config = transformers.LlamaConfig()
    config.model_type = "llama_from_the_future"
    with pytest.raises(ValueError, match=rf"not a causal-LM model type of transformers {derived.TRANSFORMERS_VERSION}"):
        hav.family_for(config)
