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
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0
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
        assert 1 < r["perplexity"] < 1000 and 0 <= r["next_token_accuracy"] <= 1
        assert r["scored_tokens"] == 4 * 32 - 1
        assert r["uptraining"]["steps"] == 2
        assert 0 <= r["lm_eval"]["hav_pydoc_next_word"]["acc"] <= 1
        assert r["decode_ratio"]["median"] > 0 and r["prefill_ratio"]["median"] > 0
        assert r["decode_cache_bytes"] == r["kv_bytes_per_token"] * 2 * 65  # batch 2, context + 1 slots
        assert r["decode_peak_bytes"] is not None and r["decode_peak_bytes"] >= 0
    assert rows[0]["decode_ratio"]["median"] == 1.0
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
        (["--variants", "gqa:3"], "3"),
        (["--variants", "xqa"], "xqa"),
        (["--rounds", "0"], "rounds 0"),
        (["--uptrain-steps", "-1"], "uptrain_steps -1"),
        (["--data-files", "missing.txt"], "missing.txt"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["tradeoff", str(tiny / "llama"), "--out", str(out), *SMALL, *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_out_inside_the_source_is_refused(tiny, capsys):
    assert cli.main(["tradeoff", str(tiny / "llama"), "--out", str(tiny / "llama" / "t"), *SMALL]) == 2
    assert "inside the source" in capsys.readouterr().err
