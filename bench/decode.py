"""Decode-step latency of MHA / GQA / MQA on three paths: speedups over MHA and bandwidth efficiency, in one run.

    python bench/decode.py --json_out out/bench/decode.json
    python bench/decode.py --batches 8 --contexts 8192 --rounds 15
    python bench/decode.py --batches 1 8 --contexts 2048 --engines ctranslate2
    python bench/decode.py --device cuda --dtype bfloat16 --batches 1 8 32 --contexts 2048 8192 16384

The reference shape of docs/fast-decoding.md (fp32 Llama: hidden 1024, 16 heads of 64, 4 layers,
intermediate 2816, vocab 4096) in MHA-16, GQA-4 and MQA, converted from one random MHA model, each on three
decode paths:

- ``native, DynamicCache``: transformers' sdpa with ``generate()``'s default cache (concatenates every step);
- ``native, StaticCache``: transformers' sdpa with ``cache_implementation="static"``;
- ``plugin``: ``hav.enable_fast_decode`` (``attn_implementation="hav_sdpa"`` with the StaticCache): query
  heads stacked per K/V head, and only the cached positions read;
- with ``--engines ctranslate2``, also each variant served by CTranslate2 (exported by the package's converter;
  its step timed inside a generation after a cached prompt of the context's length: ``hf_attn_variants.engines``),
  the baseline a CPU user runs in production.

Both static caches hold ``--spare`` slots after the current token, as a cache that ``generate()`` sized to
the prompt plus ``max_new_tokens`` does mid-generation. For each (batch, context) all nine run interleaved
round-robin with two probes: a sum over a 1 GiB tensor (the read bandwidth) and a 1024^3 matmul (the
matmul throughput), measured in the same rounds. Reported per variant and path: the median step time, the
speedup over MHA on the same path (median of per-round ratios) next to the bytes ideal, and

- bandwidth efficiency: bytes floor / step time, the bytes floor = (weights + the context + 1 cached
  positions, each read once) / read bandwidth (the input embedding is not counted: a step reads one row);
  the median over rounds of each round's ratio, the floor from that round's probe (the machine drifts);
- roofline efficiency: max(bytes floor, FLOP floor) / step time, the FLOP floor = the step's matmul FLOPs
  (2 x batch x weights + 4 x batch x heads x head_dim x positions x layers) / matmul throughput. At batch
  8 x 8192 on the 2-core CPU, MQA's FLOP floor is as high as its bytes floor: 16 query heads per K/V head
  make the step as much arithmetic as reading, so the bytes floor alone overstates what it could reach.
- with ``--profile`` (default), at the last grid point, where each step's time goes (torch profiler: the
  weight matmuls, attention, everything else); on the CPU only.

On CUDA (``--device cuda``, the default where there is one) every call waits for its kernels; sdpa runs its
own flash or memory-efficient kernels there, and ``hav_sdpa`` is transformers' sdpa off the CPU, so the
plugin path differs from the native StaticCache one only by the cache it is given.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser

import hf_attn_variants as hav
from hf_attn_variants import timing
from hf_attn_variants.engines import check_engine, engine_timer
from hf_attn_variants.io import write_json

PATHS = {  # label: (attn_implementation, cache)
    "native, DynamicCache": ("sdpa", "dynamic"),
    "native, StaticCache": ("sdpa", "static"),
    "plugin": (hav.FAST_DECODE_ATTENTION, "static"),
}


@dataclass
class Args:
    batches: list[int] = field(default_factory=lambda: [1, 8])
    contexts: list[int] = field(default_factory=lambda: [512, 2048, 8192])
    kv_heads: list[int] = field(default_factory=lambda: [16, 4, 1])
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    spare: int = field(default=128, metadata={"help": "static-cache slots after the current token"})
    rounds: int = 15
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu | cuda"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16"})
    threads: int | None = None
    engines: list[str] = field(
        default_factory=list, metadata={"help": "also time each variant served by these engines (ctranslate2)"}
    )
    profile: bool = field(
        default=True, metadata={"help": "break each step's time down at the last grid point (CPU only)"}
    )
    json_out: str | None = None


def reference_model(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    config = transformers.LlamaConfig(
        hidden_size=1024,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_hidden_layers=4,
        intermediate_size=2816,
        vocab_size=4096,
        max_position_embeddings=16384,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def step_flops(config, weights: int, batch: int, positions: int) -> int:
    """Matmul FLOPs of one decode step: every weight once per sequence, and q.k and p.v over the positions."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_attention_heads * head_dim * positions * config.num_hidden_layers
    return batch * (2 * weights + attention)


def breakdown(step, steps: int = 3) -> dict[str, float]:
    """Seconds per step spent in the weight matmuls, in attention, and in everything else (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    parts = {"weight matmuls": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.key in ("aten::mm", "aten::addmm"):
            part = "weight matmuls"
        elif "scaled_dot_product" in event.key or "flash_attention" in event.key or event.key == "aten::bmm":
            part = "attention"
        else:
            part = "other"
        parts[part] += event.self_cpu_time_total / 1e6 / steps
    return parts


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"paths {unknown} are not among {list(PATHS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype not in ("float32", "bfloat16", "float16"):
        raise SystemExit(f"dtype {args.dtype!r} is not one of ['float32', 'bfloat16', 'float16']")
    for engine in args.engines:
        if engine == "llama.cpp":  # its converter writes the model's vocabulary; this random model has none
            raise SystemExit("engine 'llama.cpp' needs a tokenizer its converter knows, which this benchmark's random "
                             "model has not: time it with `hf-attn-variants tradeoff SRC --engine llama.cpp`")  # fmt: skip
        try:
            check_engine(engine)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    mha = reference_model(getattr(torch, args.dtype), args.device)
    variants = {
        hav.variant_label(16, g): mha if g == 16 else hav.convert(mha, None, g, kv_init="mean") for g in args.kv_heads
    }
    models = {}  # (variant, path) -> model with that path's attention
    for label, model in variants.items():
        for path in args.paths:
            models[label, path] = copy.deepcopy(model)
            models[label, path].set_attn_implementation(PATHS[path][0])
    scratch = tempfile.TemporaryDirectory()  # the engines' models, loaded into memory
    timers = {  # (variant, engine) -> the variant served by the engine
        (label, engine): engine_timer(engine, model, None, Path(scratch.name) / f"{engine}-{i}")
        for i, (label, model) in enumerate(variants.items())
        for engine in args.engines
    }
    embedding = mha.get_input_embeddings()
    weights = sum(p.numel() for p in mha.parameters() if p is not embedding.weight)  # elements
    weight_bytes = weights * embedding.weight.element_size()
    probe = torch.ones(2**28, device=args.device)  # 1 GiB of fp32
    square = torch.randn(1024, 1024, device=args.device, dtype=mha.dtype)  # the matmul throughput in the model's dtype

    def synced(fn):
        return lambda: (fn(), timing.synchronize(args.device))

    probes = {"read 1 GiB": synced(probe.sum), "matmul 1024^3": synced(lambda: square @ square)}

    rows = []
    for batch in args.batches:
        for context in args.contexts:
            steps, cache_bytes = {}, {}
            for (label, path), model in models.items():
                steps[label, path], cache_bytes[label, path] = timing.decode_step(
                    model, batch, context, cache=PATHS[path][1], spare=args.spare
                )
            for (label, engine), timer in timers.items():  # timed inside a generation, after a cached prompt
                steps[label, engine] = timing.SelfTimed(timer.decode(batch, context))
                cache_bytes[label, engine] = timer.kv_bytes_per_token * batch * (context + 1)
            named = {f"{label} | {path}": step for (label, path), step in steps.items()}
            times = timing.interleaved({**named, **probes}, args.rounds, desc=f"batch {batch} x {context}")
            reads, matmuls = times.pop("read 1 GiB"), times.pop("matmul 1024^3")
            bandwidth, flops_per_s = probe.nbytes / statistics.median(reads), 2 * 1024**3 / statistics.median(matmuls)
            base = next(iter(variants))
            flops = step_flops(mha.config, weights, batch, context + 1)  # the same for every variant
            for path in args.paths + args.engines:
                ratio = timing.ratios({label: times[f"{label} | {path}"] for label in variants}, base)
                for label in variants:
                    steps_of = times[f"{label} | {path}"]
                    nbytes = weight_bytes + cache_bytes[label, path]
                    # floors from the probes of the same round, so that the machine's drift between rounds cancels
                    bytes_floor = [nbytes * read / probe.nbytes for read in reads]
                    flop_floor = [flops * matmul / (2 * 1024**3) for matmul in matmuls]
                    efficiency = [b / t for b, t in zip(bytes_floor, steps_of, strict=True)]
                    roofline = [max(b, f) / t for b, f, t in zip(bytes_floor, flop_floor, steps_of, strict=True)]
                    rows.append(
                        {
                            "batch": batch,
                            "context": context,
                            "variant": label,
                            "path": path,
                            "step_seconds": timing.summarize(steps_of),
                            "speedup_over_mha": 1 / ratio[label]["median"],
                            "speedup_over_mha_iqr": [1 / ratio[label]["q3"], 1 / ratio[label]["q1"]],
                            "ideal_speedup": (weight_bytes + cache_bytes[base, path]) / nbytes,
                            "kv_cache_bytes_read": cache_bytes[label, path],
                            "weights_bytes": weight_bytes,
                            "read_bandwidth_bytes_per_s": bandwidth,
                            "matmul_flops_per_s": flops_per_s,
                            "bytes_floor_seconds": statistics.median(bytes_floor),
                            "flop_floor_seconds": statistics.median(flop_floor),
                            "bandwidth_efficiency": statistics.median(efficiency),
                            "bandwidth_efficiency_iqr": [timing.summarize(efficiency)[q] for q in ("q1", "q3")],
                            "roofline_efficiency": statistics.median(roofline),
                        }
                    )
            last = (batch, context) == (args.batches[-1], args.contexts[-1])
            if args.profile and last and args.device == "cpu":
                for (label, path), step in steps.items():
                    if path in args.engines:
                        continue  # the profiler sees only torch's side
                    row = next(r for r in rows[-len(steps) :] if (r["variant"], r["path"]) == (label, path))
                    row["profile_seconds"] = breakdown(step)
            del steps, named
    scratch.cleanup()
    print(markdown(rows, args))
    write_json(args.json_out, {"args": asdict(args), "rows": rows})


def markdown(rows: list[dict], args: Args) -> str:
    lines = [
        f"Decode step, reference shape, {args.dtype} on {args.device}; static caches with {args.spare} spare "
        f"slots; {args.rounds} interleaved rounds; torch threads {torch.get_num_threads()}",
        "",
        "| batch | context | variant | path | step (median) | speedup over MHA | ideal | bandwidth eff. "
        "| roofline eff. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['variant']} | {r['path']} "
            f"| {r['step_seconds']['median'] * 1e3:.1f} ms | {r['speedup_over_mha']:.2f}x | {r['ideal_speedup']:.2f}x "
            f"| {r['bandwidth_efficiency']:.0%} | {r['roofline_efficiency']:.0%} |"
        )
    profiled = [r for r in rows if "profile_seconds" in r]
    if profiled:
        r = profiled[0]
        lines += [
            "",
            f"Where a step's time goes at batch {r['batch']} x {r['context']} (torch profiler, self time, 3 steps "
            "after the timing):",
            "",
            "| variant | path | weight matmuls | attention | other |",
            "|---|---|---|---|---|",
        ]
        for r in profiled:
            p = r["profile_seconds"]
            lines.append(
                f"| {r['variant']} | {r['path']} | {p['weight matmuls'] * 1e3:.1f} ms | {p['attention'] * 1e3:.1f} ms "
                f"| {p['other'] * 1e3:.1f} ms |"
            )
    first = rows[0]
    lines.append(
        f"\nmeasured in the same rounds: read bandwidth {first['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
        f"matmul {first['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s (first grid point)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
