"""The benchmarks whose figures the README quotes still run, on shapes small enough for a test, and write
their JSON. (Their figures are measured by `make bench`, never asserted here.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


def run_bench(script: str, tmp_path, *args) -> dict:
    out = tmp_path / f"{script}.json"
    command = [sys.executable, str(BENCH / f"{script}.py"), *args, "--json_out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_decode_benchmark_times_every_variant_on_every_path(tmp_path):
    result = run_bench("decode", tmp_path, "--batches", "2", "--contexts", "16", "--kv_heads", "16", "1",
                       "--rounds", "1", "--spare", "4")  # fmt: skip
    rows = result["rows"]
    assert {(r["variant"], r["path"]) for r in rows} == {
        (v, p) for v in ("MHA-16", "MQA") for p in ("native, DynamicCache", "native, StaticCache", "plugin")
    }
    mqa = next(r for r in rows if r["variant"] == "MQA")
    assert mqa["kv_cache_bytes_read"] == 2 * 4 * 1 * 64 * 17 * 2 * 4  # (k, v) x layers x heads x d x positions x batch
    assert all("profile_seconds" in r and r["bandwidth_efficiency"] > 0 for r in rows)


def test_decode_benchmark_refuses_an_unknown_path(tmp_path):
    command = [sys.executable, str(BENCH / "decode.py"), "--paths", "paged", "--rounds", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "['paged'] are not among" in done.stderr


def test_streaming_benchmark_converts_a_small_sharded_checkpoint(tmp_path):
    result = run_bench("streaming_conversion", tmp_path, "--hidden_size", "128", "--layers", "2", "--heads", "4",
                       "--kv_heads", "4", "--num_kv_heads", "2", "--intermediate_size", "256", "--vocab_size", "512",
                       "--shard_size", "200KB", "--rounds", "1", "--in_process_rounds", "1")  # fmt: skip
    assert result["checkpoint"]["shards"] > 1 and result["convert_peak_rss"] > 0
    assert result["in_process"]["convert_over_copy"]["median"] > 0


@pytest.mark.slow
def test_generate_benchmark_checks_both_paths_on_the_real_model(tmp_path):
    result = run_bench("generate", tmp_path, "--variants", "mqa", "--batch", "1", "--prompt_tokens", "8",
                       "--new_tokens", "2", "--rounds", "1")  # fmt: skip
    assert [r["variant"] for r in result["rows"]] == ["MHA-9", "MQA"]
    assert all(r["fast_decode"]["new_tokens_per_s"] > 0 for r in result["rows"])


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_decode_benchmark_runs_in_bf16_on_cuda(tmp_path):
    result = run_bench("decode", tmp_path, "--device", "cuda", "--dtype", "bfloat16", "--batches", "2",
                       "--contexts", "64", "--kv_heads", "16", "1", "--rounds", "2")  # fmt: skip
    assert {r["variant"] for r in result["rows"]} == {"MHA-16", "MQA"}
    mqa = next(r for r in result["rows"] if r["variant"] == "MQA")
    assert mqa["kv_cache_bytes_read"] == 2 * 4 * 1 * 64 * 65 * 2 * 2  # bf16: 2 bytes an element
