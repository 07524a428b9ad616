"""hf_attn_variants.engines: a variant timed in an inference engine (what ``tradeoff --engine`` runs)."""

from __future__ import annotations

import sys

import pytest

import hf_attn_variants as hav
from hf_attn_variants import timing
from hf_attn_variants.engines import DECODE_STEPS, check_engine, engine_timer
from hf_attn_variants.heads import kv_cache_bytes_per_token

from .conftest import char_tokenizer, tiny_model

pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")

CASES = [("gpt2", 2), ("gpt_neox", 1), ("llama", 1)]  # plugin families (served through this package) and a native one


@pytest.mark.parametrize("family, kv", CASES, ids=[f"{f}-kv{k}" for f, k in CASES])
def test_the_engine_is_given_g_kv_heads_and_times_prefill_and_decode(tmp_path, family, kv):
    tokenizer = char_tokenizer()
    source = tiny_model(family, vocab_size=len(tokenizer))
    model = hav.convert(source, "mqa" if kv == 1 else "gqa", kv, "mean").eval()
    timer = engine_timer("ctranslate2", model, tokenizer, tmp_path / "engine")
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    assert timer.kv_heads == kv
    assert timer.kv_bytes_per_token == kv_cache_bytes_per_token(layers, kv, config.hidden_size // heads, 4)
    timer.prefill(2, 12)()  # runs
    seconds = timer.decode(2, 20)()
    assert isinstance(seconds, float) and 0 < seconds < 10
    assert timer.record() == {"engine": "ctranslate2", "version": timer.version, "kv_heads": kv,
                              "kv_bytes_per_token": timer.kv_bytes_per_token}  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "engine").iterdir()) == ["ctranslate2", "transformers"]


def test_a_decode_call_generates_the_steps_it_times(tmp_path):
    """The callback sees DECODE_STEPS steps of every sequence: the per-step time is over DECODE_STEPS - 1 of them."""
    import ctranslate2

    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    engine_timer("ctranslate2", model, tokenizer, tmp_path)
    generator = ctranslate2.Generator(str(tmp_path / "ctranslate2"))
    seen = []
    generator.generate_batch([["a"], ["b"]], static_prompt=list("hello"), max_length=DECODE_STEPS,
                             min_length=DECODE_STEPS, end_token=[], include_prompt_in_result=False,
                             callback=lambda step: seen.append((step.batch_id, step.step)))  # fmt: skip
    assert sorted(seen) == [(b, s) for b in range(2) for s in range(DECODE_STEPS)]


def test_an_unknown_or_missing_engine_is_refused_by_name(monkeypatch):
    with pytest.raises(ValueError, match=r"^engine 'vllm' is not one of \['ctranslate2', 'llama.cpp'\]$"):
        check_engine("vllm")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"^engine 'ctranslate2' is not installed: pip install ctranslate2$"):
        check_engine("ctranslate2")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(
        ValueError, match=r"^engine 'llama.cpp' is not installed: pip install \"hf_attn_variants\[llama-cpp\]\"$"
    ):
        check_engine("llama.cpp")


def test_a_self_timed_candidate_records_what_it_returns():
    times = timing.interleaved({"wall": lambda: None, "own": timing.SelfTimed(lambda: 123.0)}, rounds=3, warmup=0)
    assert times["own"] == [123.0] * 3 and all(0 <= t < 1 for t in times["wall"])


def test_the_tokenizer_s_extra_tokens_are_not_sent_to_a_smaller_vocabulary():
    """A tokenizer with more tokens than the model has embeddings: the timed prompts use only the model's."""
    from hf_attn_variants.engines import _plain_tokens

    tokenizer = char_tokenizer()
    tokens = _plain_tokens(tokenizer, 10)
    assert set(tokenizer.convert_tokens_to_ids(tokens)) <= set(range(10)) - set(tokenizer.all_special_ids)


def test_every_plugin_family_and_the_native_families_ctranslate2_knows_are_served():
    from hf_attn_variants.engines import served_families

    served = set(served_families("ctranslate2"))
    assert {f.name for f in hav.families() if not f.native} <= served  # the loaders this package registers
    assert {"llama", "mistral", "qwen2", "gemma"} <= served and "olmo2" not in served


def test_a_source_the_engine_cannot_load_is_refused_before_anything_is_measured(tmp_path, capsys):
    from hf_attn_variants import cli

    from .conftest import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "olmo2", "olmo2")
    out = tmp_path / "out"
    assert cli.main(["tradeoff", str(tmp_path / "olmo2"), "--out", str(out), "--engine", "ctranslate2"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("hf-attn-variants tradeoff: error: engine 'ctranslate2' has no loader for Olmo2Config "
                          "(the variants of 'olmo2'); it serves the variants of: bloom, ")  # fmt: skip
    assert "variants:" not in err  # refused before the first variant was converted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["olmo2"]


def test_weights_the_engine_cannot_compute_in_are_refused_before_anything_is_measured(monkeypatch):
    import ctranslate2
    import torch
    import transformers

    from hf_attn_variants.engines import check_served

    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda device: {"float32", "int8"})
    with pytest.raises(ValueError, match=r"^engine 'ctranslate2' cannot compute in bfloat16 on this cpu \(it supports: "
                                         r"float32, int8\); choose another --dtype$"):  # fmt: skip
        check_served("ctranslate2", transformers.LlamaConfig(), torch.bfloat16, "cpu")
    check_served("ctranslate2", transformers.LlamaConfig(), torch.float32, "cpu")  # float32: served
