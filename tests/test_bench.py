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
                       "--rounds", "1", "--spare", "4", "--engines", "ctranslate2")  # fmt: skip
    rows = result["rows"]
    paths = ("native, DynamicCache", "native, StaticCache", "plugin", "ctranslate2")
    assert {(r["variant"], r["path"]) for r in rows} == {(v, p) for v in ("MHA-16", "MQA") for p in paths}
    for mqa in (r for r in rows if r["variant"] == "MQA"):  # the engine holds as many K/V bytes as the cache
        assert (
            mqa["kv_cache_bytes_read"] == 2 * 4 * 1 * 64 * 17 * 2 * 4
        )  # (k, v) x layers x heads x d x positions x batch
    for r in rows:  # the profiler sees only torch's paths
        assert set(r.get("profile_seconds", ())) == (
            {"weight matmuls", "attention", "other"} if r["path"] != "ctranslate2" else set()
        )
    for r in rows:  # timings are noisy; the derived figures must follow from the row's own fields (1 round)
        mha = next(m for m in rows if m["variant"] == "MHA-16" and m["path"] == r["path"])
        step = r["step_seconds"]["median"]
        nbytes = r["weights_bytes"] + r["kv_cache_bytes_read"]
        assert r["bytes_floor_seconds"] == pytest.approx(nbytes / r["read_bandwidth_bytes_per_s"])
        assert r["bandwidth_efficiency"] == pytest.approx(r["bytes_floor_seconds"] / step)
        assert r["roofline_efficiency"] == pytest.approx(max(r["bytes_floor_seconds"], r["flop_floor_seconds"]) / step)
        assert r["ideal_speedup"] == pytest.approx((mha["weights_bytes"] + mha["kv_cache_bytes_read"]) / nbytes)
        assert r["speedup_over_mha"] == pytest.approx(mha["step_seconds"]["median"] / step)
    assert mqa["kv_cache_bytes_read"] * 16 == next(r for r in rows if r["variant"] == "MHA-16")["kv_cache_bytes_read"]


def test_decode_benchmark_refuses_an_unknown_path(tmp_path):
    command = [sys.executable, str(BENCH / "decode.py"), "--paths", "paged", "--rounds", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].endswith(
        "paths ['paged'] are not among ['native, DynamicCache', 'native, StaticCache', 'plugin']"
    )


def test_streaming_benchmark_converts_a_small_sharded_checkpoint(tmp_path):
    result = run_bench("streaming_conversion", tmp_path, "--hidden_size", "128", "--layers", "2", "--heads", "4",
                       "--kv_heads", "4", "--num_kv_heads", "2", "--intermediate_size", "256", "--vocab_size", "512",
                       "--shard_size", "200KB", "--rounds", "1", "--in_process_rounds", "1")  # fmt: skip
    checkpoint = result["checkpoint"]
    assert checkpoint["shards"] > 1 and checkpoint["largest_shard"] < checkpoint["bytes"]
    # 131,072 float32 weights: embeddings and LM head (512 x 128), each larger than a 200 KB shard
    assert checkpoint["largest_shard"] > 512 * 128 * 4 > 200_000
    assert result["peak_over_largest_shard"] == result["convert_peak_rss"] / checkpoint["largest_shard"]
    assert result["budget"] == 2 * checkpoint["largest_shard"] + 300 * 2**20
    for timed in (result, result["in_process"]):  # 1 round: the ratio is that round's convert over copy time
        ratio = timed["convert_over_copy"]
        assert ratio["median"] == ratio["min"] == ratio["max"]
        assert ratio["median"] == pytest.approx(timed["seconds"]["convert"] / timed["seconds"]["copy"])


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
