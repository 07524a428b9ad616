"""The timing helpers: interleaving, per-round ratios, peak memory, decode steps that do not grow the cache."""

import subprocess
import sys

import pytest
import transformers

from hf_attn_variants import timing

from .conftest import tiny_model


def test_interleaved_times_every_candidate_each_round_starting_from_a_different_one():
    order = []
    times = timing.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a different first each round
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}


def test_ratios_are_per_round_medians():
    summary = timing.ratios({"base": [1.0, 2.0, 4.0], "fast": [0.5, 1.0, 4.0]}, baseline="base")
    assert summary["base"] == {"median": 1.0, "q1": 1.0, "q3": 1.0}
    # per-round ratios [0.5, 0.5, 1.0]; quartiles by statistics.quantiles (exclusive): positions 1 and 3 of 3
    assert summary["fast"] == {"median": 0.5, "q1": 0.5, "q3": 1.0}
    # the median of the per-round ratios [4, 0.5, 0.5], not the ratio of the medians (2 / 2 = 1)
    assert timing.ratios({"base": [1.0, 2.0, 4.0], "slow": [4.0, 1.0, 2.0]}, baseline="base")["slow"]["median"] == 0.5


def test_peak_memory_sees_a_large_temporary_allocation():
    """In a fresh process: memory freed earlier in the same process would be reused without raising the peak."""
    script = (
        "import torch\n"
        "from hf_attn_variants import timing\n"
        "result, peak = timing.peak_memory(lambda: torch.ones(16, 1024, 1024).sum().item())  # 64 MiB, then freed\n"
        "print(int(result), peak)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    result, peak = done.stdout.split()
    assert int(result) == 16 * 1024 * 1024
    assert 60 * 2**20 < int(peak) < 400 * 2**20


def test_decode_step_reads_a_fixed_context_every_call():
    model = tiny_model("llama")
    step, nbytes = timing.decode_step(model, batch=2, context=16)
    assert nbytes == 2 * 2 * 4 * 17 * 8 * 2 * 4  # (k, v) x layers x kv heads x slots x head_dim x batch x fp32
    for _ in range(3):
        step()
    prefill = timing.prefill(model, batch=1, tokens=8)
    prefill()


@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("layer_types", [None, ["sliding_attention", "full_attention"]], ids=["sliding", "mixed"])
def test_decode_step_of_sliding_window_layers_reads_the_window_every_call(cache, layer_types, sdpa_calls):
    """A window of 8 at context 32: sliding layers attend to 8 positions on every call, full layers to 33."""
    config = transformers.Gemma3TextConfig if layer_types else transformers.MistralConfig
    extra = dict(head_dim=8, layer_types=layer_types) if layer_types else {}
    model = transformers.AutoModelForCausalLM.from_config(
        config(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=8,
               num_key_value_heads=2, sliding_window=8, **extra),
        attn_implementation="sdpa",
    ).eval()  # fmt: skip
    step, nbytes = timing.decode_step(model, batch=2, context=32, cache=cache)
    per_position = 2 * 2 * 8 * 2 * 4  # (k, v) x kv heads x head_dim x batch x fp32
    assert nbytes == per_position * (8 + (33 if layer_types else 8))
    sdpa_calls.clear()  # the set-up ran a step too
    for _ in range(3):
        step()
    assert [key[2] for _, key in sdpa_calls] == [8, 33 if layer_types else 8] * 3
