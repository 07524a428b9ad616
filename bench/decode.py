"""Decode-step latency of MHA / GQA / MQA: speedups over MHA and bandwidth efficiency, in one run.

    python bench/decode.py --json_out out/bench/decode.json
    python bench/decode.py --batches 1 8 --contexts 512 2048 8192 --rounds 15

The reference shape of ../shared/BENCHMARKS.md (fp32 Llama: hidden 1024, 16 heads of 64, 4 layers,
intermediate 2816, vocab 4096) in MHA-16, GQA-4 and MQA, converted from one random MHA model. For each
(batch, context) every variant's decode step runs interleaved round-robin with the others and with a read
of a 1 GiB tensor (the machine's read bandwidth, measured in the same rounds). Reported per variant: the
median step time, the speedup over MHA (median of per-round ratios) next to the bytes ideal, and the
bandwidth efficiency: (weights read + KV cache bytes) / read bandwidth / step time (the input embedding
matrix is not counted: a step reads one row of it). The cache is transformers'
StaticCache filled with random K/V (see hf_attn_variants.timing.decode_step).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

import torch
import transformers
from transformers import HfArgumentParser

import hf_attn_variants as hav
from hf_attn_variants import timing
from hf_attn_variants.io import write_json


@dataclass
class Args:
    batches: list[int] = field(default_factory=lambda: [1, 8])
    contexts: list[int] = field(default_factory=lambda: [512, 2048, 8192])
    kv_heads: list[int] = field(default_factory=lambda: [16, 4, 1])
    rounds: int = 15
    attn_implementation: str = "sdpa"
    threads: int | None = None
    json_out: str | None = None


def reference_model():
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
    return transformers.LlamaForCausalLM(config).eval()


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    if args.threads:
        torch.set_num_threads(args.threads)
    mha = reference_model()
    mha.set_attn_implementation(args.attn_implementation)
    models = {hav.variant_label(16, g): mha if g == 16 else hav.convert(mha, None, g) for g in args.kv_heads}
    # a step reads every weight once, except the input embedding, of which it reads one row per sequence
    embedding = mha.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in mha.parameters() if p is not embedding)
    probe = torch.ones(2**28)  # 1 GiB of fp32

    def read():
        probe.sum()

    rows = []
    for batch in args.batches:
        for context in args.contexts:
            steps, cache_bytes = {}, {}
            for label, model in models.items():
                steps[label], cache_bytes[label] = timing.decode_step(model, batch, context)
            times = timing.interleaved({**steps, "read 1 GiB": read}, args.rounds, desc=f"batch {batch} x {context}")
            bandwidth = probe.nbytes / statistics.median(times.pop("read 1 GiB"))
            base = next(iter(models))
            ratio = timing.ratios(times, base)
            for label in models:
                step = statistics.median(times[label])
                floor = (weights + cache_bytes[label]) / bandwidth
                ideal = (weights + cache_bytes[label]) / (weights + cache_bytes[base])
                rows.append(
                    {
                        "batch": batch,
                        "context": context,
                        "variant": label,
                        "step_seconds": timing.summarize(times[label]),
                        "speedup_over_mha": 1 / ratio[label]["median"],
                        "ideal_speedup": 1 / ideal,
                        "kv_cache_bytes": cache_bytes[label],
                        "weights_bytes": weights,
                        "read_bandwidth_bytes_per_s": bandwidth,
                        "bandwidth_efficiency": floor / step,
                    }
                )
            del steps
    print(markdown(rows, args))
    write_json(args.json_out, {"args": asdict(args), "rows": rows})


def markdown(rows: list[dict], args: Args) -> str:
    lines = [
        f"Decode step, reference shape, fp32, {args.attn_implementation}, StaticCache; {args.rounds} interleaved "
        f"rounds; torch threads {torch.get_num_threads()}",
        "",
        "| batch | context | variant | step (median) | speedup over MHA | ideal | bandwidth efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['variant']} | {r['step_seconds']['median'] * 1e3:.1f} ms "
            f"| {r['speedup_over_mha']:.2f}x | {r['ideal_speedup']:.2f}x | {r['bandwidth_efficiency']:.0%} |"
        )
    lines.append(
        f"\nread bandwidth measured in the same rounds: {rows[0]['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
