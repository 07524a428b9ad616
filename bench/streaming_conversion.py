"""Streaming conversion against a plain copy of the same files, in one run (docs/benchmarks.md: how we measure).

    python bench/streaming_conversion.py --json_out out/bench/streaming_conversion.json
    python bench/streaming_conversion.py --layers 12 --shard_size 1GB --rounds 5

Writes a synthetic Llama-shaped checkpoint (random weights, several safetensors shards), then times, interleaved,
`cp -r` of its folder and `hf-attn-variants convert ... --variant gqa` of it, each in a fresh process whose
peak resident memory is read from the kernel (``ru_maxrss`` of the child); then the same two jobs inside this
process (``shutil.copytree`` against ``convert_checkpoint``: no interpreter start-up or import, which take
the command line about 5 s whatever the model's size), ``--in_process_rounds`` interleaved rounds. Reports
the time ratios (median of the per-round ratios) and peak memory against the largest shard. Before each timed
job the previous output is deleted and the disk synced (``os.sync``), so that no job pays for another's
write-back; the source stays in the page cache.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser


@dataclass
class Args:
    hidden_size: int = 2048
    layers: int = 6  # 1.76 GB of fp32 weights in 5 shards
    heads: int = 16
    kv_heads: int = 16
    intermediate_size: int = 5632
    vocab_size: int = 32000
    shard_size: str = "400MB"
    variant: str = "gqa"
    num_kv_heads: int = 4
    rounds: int = 3
    in_process_rounds: int = 15
    workdir: str | None = None
    json_out: str | None = None


def make_checkpoint(args: Args, folder: Path) -> dict:
    config = transformers.LlamaConfig(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate_size,
        vocab_size=args.vocab_size,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder, max_shard_size=args.shard_size)
    shards = sorted(folder.glob("*.safetensors"))
    return {"bytes": sum(p.stat().st_size for p in shards), "shards": len(shards),
            "largest_shard": max(p.stat().st_size for p in shards)}  # fmt: skip


def timed(command: list[str]) -> tuple[float, int]:
    """Seconds and peak resident bytes of ``command`` run as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the max over children so far, in KiB
    return seconds, max(peak, before) * 1024


def peak_of(command: list[str]) -> int:
    """Peak resident bytes of ``command`` alone (a fresh interpreter reports its own maximum)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
    )
    return int(subprocess.run([sys.executable, "-c", probe, *command], check=True, capture_output=True,
                              text=True).stdout)  # fmt: skip


def in_process_times(args: Args, src: Path, root: Path) -> dict:
    """The same two jobs inside this process (no interpreter start or import in the timing), interleaved."""
    from hf_attn_variants.checkpoint import convert_checkpoint

    jobs = {
        "copy": lambda out: shutil.copytree(src, out),
        "convert": lambda out: convert_checkpoint(str(src), out, args.variant, args.num_kv_heads),
    }
    times = {name: [] for name in jobs}
    for r in range(args.in_process_rounds + 1):
        for name in list(jobs) if r % 2 == 0 else list(jobs)[::-1]:
            out = root / f"{name}-in-process"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # no write-back of the previous job's output during this one
            start = time.perf_counter()
            jobs[name](out)
            if r:
                times[name].append(time.perf_counter() - start)
    ratios = [c / p for c, p in zip(times["convert"], times["copy"], strict=True)]
    return {
        "seconds": {name: statistics.median(values) for name, values in times.items()},
        "convert_over_copy": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "rounds": times,
    }


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="hav-bench-"))
    src = root / "src"
    checkpoint = make_checkpoint(args, src)
    exe = str(Path(sys.executable).with_name("hf-attn-variants"))
    commands = {
        "copy": lambda out: ["cp", "-r", str(src), str(out)],
        "convert": lambda out: [
            exe,
            "convert",
            str(src),
            str(out),
            "--variant",
            args.variant,
            "--num-kv-heads",
            str(args.num_kv_heads),
        ],  # fmt: skip
    }
    times = {name: [] for name in commands}
    for r in range(args.rounds + 1):  # round 0 warms the page cache and the interpreter
        for name in list(commands) if r % 2 == 0 else list(commands)[::-1]:
            out = root / f"{name}-out"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            seconds, _ = timed(commands[name](out))
            if r:
                times[name].append(seconds)
    in_process = in_process_times(args, src, root)
    out = root / "convert-out"
    shutil.rmtree(out, ignore_errors=True)
    peak = peak_of(commands["convert"](out))
    ratios = [c / p for c, p in zip(times["convert"], times["copy"], strict=True)]
    result = {
        "args": asdict(args),
        "checkpoint": checkpoint,
        "seconds": {name: statistics.median(values) for name, values in times.items()},
        "convert_over_copy": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "in_process": in_process,
        "convert_peak_rss": peak,
        "peak_over_largest_shard": peak / checkpoint["largest_shard"],
        "budget": 2 * checkpoint["largest_shard"] + 300 * 2**20,
    }
    print(json.dumps(result, indent=2))
    from hf_attn_variants.io import write_json

    write_json(args.json_out, result)
    if not args.workdir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
