"""The trade-off table end to end on a tiny model: every file, sound numbers, valid model cards, bad input."""

import json

import pytest
from huggingface_hub import ModelCard

from hf_attn_variants import cli
from hf_attn_variants.heads import kv_cache_bytes_per_token
from hf_attn_variants.tradeoff import FILES, default_variants, resolve_variants

from .conftest import check_hub_ready, save_tiny_checkpoint

SMALL = ["--block-size", "32", "--eval-blocks", "4", "--batch", "2", "--context", "64", "--prefill-tokens", "16",
         "--memory-context", "128", "--rounds", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import pydoc_data.topics

    root = tmp_path_factory.mktemp("tradeoff")
    save_tiny_checkpoint(root / "llama", "llama", max_position_embeddings=128)
    topics = pydoc_data.topics.topics
    (root / "corpus.txt").write_text("\n\n".join(topics[k] for k in sorted(topics))[:20_000])
    return root


def test_default_variants_span_mha_to_mqa():
    assert default_variants(9, 3) == [("mha", 9), ("gqa", 3), ("mqa", 1)]
    assert default_variants(8, 8) == [("mha", 8), ("gqa", 2), ("mqa", 1)]  # the GQA nearest sqrt(H) heads
    assert default_variants(16, 4) == [("mha", 16), ("gqa", 4), ("gqa", 2), ("mqa", 1)]
    assert resolve_variants("mqa,gqa:2", 8, 4) == [("mha", 8), ("gqa", 2), ("mqa", 1)]  # MHA: the baseline
    with pytest.raises(ValueError, match=r"num_key_value_heads=3 does not divide .* \[2, 4\]"):
        resolve_variants("gqa:3", 8, 4)


def test_tradeoff_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["tradeoff", tiny / "llama", "--out", out, "--data-files", tiny / "corpus.txt", "--uptrain-steps", "2",
            "--lm-eval-tasks", "hav_pydoc_next_word", "--lm-eval-limit", "4"]  # fmt: skip
    assert cli.main([str(a) for a in argv + SMALL]) == 0
    printed = capsys.readouterr().out
    assert "| Variant | Latency" in printed and "MQA" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(FILES)
    assert (out / "tradeoff.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")  # a PNG image, not an empty file
    summary = json.loads((out / "tradeoff.json").read_text())
    rows = summary["variants"]
    assert [r["variant"] for r in rows] == ["MHA-8", "GQA-4", "GQA-2", "MQA"]
    assert [r["source"] for r in rows] == [False, True, False, False]
    config_dims = (2, 64 // 8)  # 2 layers, head_dim 8
    for r in rows:
        assert r["kv_bytes_per_token"] == r["kv_bytes_per_token_formula"]  # read off the cache == the formula
        assert r["kv_bytes_per_token"] == kv_cache_bytes_per_token(config_dims[0], r["num_key_value_heads"],
                                                                   config_dims[1], 4)  # fmt: skip
        assert r["kv_bytes_at_context"] == r["kv_bytes_per_token"] * 128
        assert r["kv_fraction_of_mha"] == r["kv_bytes_per_token"] / rows[0]["kv_bytes_per_token"]
        assert r["kv_fraction_of_mha"] == r["num_key_value_heads"] / 8
        assert 1 < r["perplexity"] < 1000  # a random model: near the vocabulary's 100, not NaN or inf
        assert r["scored_tokens"] == 4 * 32 - 1
        hits = r["next_token_accuracy"] * r["scored_tokens"]  # the accuracy is a count of hits over the tokens
        assert hits == pytest.approx(round(hits), abs=1e-9) and 0 <= round(hits) <= r["scored_tokens"]
        assert r["uptraining"]["steps"] == 2 and r["uptraining"]["tokens"] == 2 * 2 * 32  # steps x batch x block
        lm_eval = r["lm_eval"]["hav_pydoc_next_word"]
        assert lm_eval["sample_len"] == 4
        for metric in ("acc", "acc_norm"):  # k of 4 documents right, and the sample standard error of that mean
            p = lm_eval[metric]
            assert p * 4 == round(p * 4)
            assert lm_eval[f"{metric}_stderr"] == pytest.approx((p * (1 - p) / (4 - 1)) ** 0.5)
        for ratio in (r["decode_ratio"], r["prefill_ratio"]):  # timings: noisy, but quartiles are ordered
            assert 0 < ratio["q1"] <= ratio["median"] <= ratio["q3"]
        assert r["decode_cache_bytes"] == r["kv_bytes_per_token"] * 2 * 65  # batch 2, context + 1 slots
        assert isinstance(r["decode_peak_bytes"], int) and r["decode_peak_bytes"] >= 0  # RSS on Linux: measured
    assert rows[0]["decode_ratio"] == rows[0]["prefill_ratio"] == {"median": 1.0, "q1": 1.0, "q3": 1.0}  # MHA / MHA
    # the default recipe (auto -> best, calibrated on the training blocks) made the variants with fewer K/V heads
    for r in rows[2:]:
        assert (r["recipe"]["kv_init"], r["recipe"]["preset"]) == ("svd", "auto -> best")
        mean, recipe = r["zero_steps"]["mean"], r["zero_steps"]["recipe"]
        assert mean["perplexity"] != recipe["perplexity"]  # two different conversions, both measured
        assert isinstance(mean["answer"], str) and isinstance(recipe["answer"], str)
    for r in rows[:2]:  # MHA (exact expansion) and the source: nothing merged, one model at zero steps
        assert r["zero_steps"]["mean"] == r["zero_steps"]["recipe"]
    table = (out / "tradeoff.md").read_text()
    # 3 tables (variants, greedy answers, lm-eval), each a header and 4 rows; KV memory falls
    assert table.count("\n| ") == 15 and "↓ better" in table
    assert (
        "| Quality: mean pooling (the GQA paper), 0 steps | Quality: the recipe, 0 steps | Quality: the recipe after 2 steps (LM loss) |"
        in table
    )
    assert "Greedy answer to 'What is the capital of France?'" in table
    assert "svd, refine_steps=40, refine_lr=0.0002" in table and "preset auto -> best" in table
    assert "hav_pydoc_next_word" in table

    card = ModelCard.load(out / "mqa" / "README.md")
    check_hub_ready(out / "mqa" / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    mqa = rows[-1]
    assert results == {
        "perplexity, mean pooling, 0 steps": round(mqa["zero_steps"]["mean"]["perplexity"], 4),
        "perplexity, recipe, 0 steps": round(mqa["zero_steps"]["recipe"]["perplexity"], 4),
        "perplexity after 2 steps of uptraining": round(mqa["perplexity"], 4),
        "next-token accuracy, mean pooling, 0 steps": round(mqa["zero_steps"]["mean"]["next_token_accuracy"], 4),
        "next-token accuracy, recipe, 0 steps": round(mqa["zero_steps"]["recipe"]["next_token_accuracy"], 4),
        "next-token accuracy after 2 steps of uptraining": round(mqa["next_token_accuracy"], 4),
    }
    source_card = {r.metric_name for r in ModelCard.load(out / "gqa-4" / "README.md").data.eval_results}
    assert source_card == {"perplexity after 2 steps of uptraining", "next-token accuracy after 2 steps of uptraining"}
    assert "2 steps" in card.text and "MQA" in card.text
    assert not (out / "mqa" / "model.safetensors").exists()  # checkpoints only with --save-checkpoints
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--variants", "gqa:3"],
            "num_key_value_heads=3 does not divide num_attention_heads=8; valid choices for attn_variant='gqa': [2, 4]",
        ),
        (["--variants", "xqa"], "variant 'xqa' is not one of ['mha', 'gqa', 'mqa'] (write GQA as gqa:G)"),
        (["--rounds", "0"], "rounds 0 must be at least 1"),
        (["--uptrain-steps", "-1"], "uptrain_steps -1 must be 0 or more"),
        (["--data-files", "missing.txt"], "data file 'missing.txt' does not exist"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["tradeoff", str(tiny / "llama"), "--out", str(out), *SMALL, *extra]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.endswith(f"hf-attn-variants tradeoff: error: {message}\n")
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_out_inside_the_source_is_refused(tiny, capsys):
    assert cli.main(["tradeoff", str(tiny / "llama"), "--out", str(tiny / "llama" / "t"), *SMALL]) == 2
    assert capsys.readouterr().err.endswith(
        f"hf-attn-variants tradeoff: error: OUT '{tiny / 'llama' / 't'}' is or lies inside the source "
        f"'{tiny / 'llama'}'; choose another folder\n"
    )


def test_the_engine_columns_time_every_variant_as_the_engine_serves_it(tiny, tmp_path, capsys):
    pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")
    out = tmp_path / "out"
    argv = ["tradeoff", tiny / "llama", "--out", out, "--data-files", tiny / "corpus.txt", "--variants", "mqa",
            "--kv-init", "mean", "--engine", "ctranslate2"]  # fmt: skip
    assert cli.main([str(a) for a in argv + SMALL]) == 0
    rows = json.loads((out / "tradeoff.json").read_text())["variants"]
    assert [(r["variant"], r["engine"]["kv_heads"]) for r in rows] == [("MHA-8", 8), ("MQA", 1)]  # what it serves
    for r in rows:
        e = r["engine"]
        assert e["engine"] == "ctranslate2" and e["version"]
        assert e["kv_bytes_per_token"] == r["kv_bytes_per_token"]  # the same float32 K/V as transformers' cache
        for ratio in (e["decode_ratio"], e["prefill_ratio"]):
            assert 0 < ratio["q1"] <= ratio["median"] <= ratio["q3"]
        assert 0 < e["decode_seconds"]["median"] < e["prefill_seconds"]["median"] * 100
    assert rows[0]["engine"]["decode_ratio"] == {"median": 1.0, "q1": 1.0, "q3": 1.0}
    table = (out / "tradeoff.md").read_text()
    assert "| ctranslate2: decode step (batch 2, context 64) | ctranslate2: prefill |" in table
    assert ", 1 K/V heads, " in table and ", 8 K/V heads, " in table
    assert table.count("\n| ") == 6  # two tables, each a header and 2 rows
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "mha-8", "mqa"])  # the engine's models removed


def test_an_unknown_engine_exits_2_with_the_choices(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        cli.main(["tradeoff", str(tiny / "llama"), "--out", str(out), "--engine", "vllm"])
    assert stop.value.code == 2
    assert (
        "argument --engine: invalid choice: 'vllm' (choose from 'ctranslate2', 'llama.cpp')" in capsys.readouterr().err
    )
    assert not out.exists()


def test_overwrite_replaces_only_a_tradeoff_output(tiny, tmp_path, capsys):
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert cli.main(["tradeoff", str(tiny / "llama"), "--out", str(out), "--overwrite", *SMALL]) == 2
    assert "does not look like the output of tradeoff (it holds 'thesis.tex'" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
