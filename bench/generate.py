"""End-to-end generate() of the real model's variants, transformers' default against fast_decode, in one run.

    python bench/generate.py --json_out out/bench/generate.json
    python bench/generate.py --batch 8 --prompt_tokens 512 --new_tokens 128 --rounds 3

SmolLM2-135M-Instruct (or ``--model``) in MHA, its own GQA and MQA (mean pooling: the quality does not change
a step's time), each twice: as loaded (sdpa, ``generate()``'s default DynamicCache) and with
``hav.enable_fast_decode`` (``hav_sdpa`` + StaticCache). Every call generates exactly ``--new_tokens`` greedy
tokens for ``--batch`` random prompts of ``--prompt_tokens`` tokens; all calls interleaved round-robin,
``--rounds`` rounds after one warm-up. Reported per variant: the median time of a call, tokens per second,
and fast / default (median of per-round ratios); the two paths' tokens are checked equal first.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import asdict, dataclass

import torch
from transformers import HfArgumentParser

import hf_attn_variants as hav
from hf_attn_variants import timing
from hf_attn_variants.families import family_for
from hf_attn_variants.io import write_json
from hf_attn_variants.loading import load_source
from hf_attn_variants.tradeoff import resolve_variants
from hf_attn_variants.training import ModelArguments


@dataclass
class Args:
    model: str = "smollm2"
    variants: str | None = None  # default: MHA, the source's own layout, a middle GQA, MQA
    batch: int = 8
    prompt_tokens: int = 512
    new_tokens: int = 128
    rounds: int = 3  # a round of the defaults takes ~2.5 min on the 2-core CPU
    json_out: str | None = None


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    source, _, name = load_source(ModelArguments(model_name_or_path=args.model, attn_implementation="sdpa"))
    source.eval()
    family = family_for(source.config)
    heads, source_kv = family.num_heads(source.config), family.num_kv_heads(source.config)
    prompts = torch.randint(0, source.config.vocab_size, (args.batch, args.prompt_tokens),
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    mask = torch.ones_like(prompts)
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   pad_token_id=source.generation_config.eos_token_id)  # fmt: skip
    calls, labels = {}, []
    for variant, kv in resolve_variants(args.variants, heads, source_kv):
        label = hav.variant_label(heads, kv)
        default = hav.convert(copy.deepcopy(source), variant, kv, kv_init="mean")  # speed only: any recipe
        fast = hav.enable_fast_decode(copy.deepcopy(default))
        with torch.inference_mode():
            few = dict(input_ids=prompts[:2, :32], attention_mask=mask[:2, :32], **options)
            same = torch.equal(default.generate(**few), fast.generate(**few))
        if not same:
            raise SystemExit(f"{label}: fast_decode generated other tokens than the default path")
        for path, model in (("default", default), ("fast_decode", fast)):
            calls[f"{label} | {path}"] = lambda model=model: model.generate(prompts, attention_mask=mask, **options)
        labels.append(label)
    times = timing.interleaved(calls, args.rounds, warmup=1, desc="generate")
    rows = []
    for label in labels:
        ratio = timing.ratios({p: times[f"{label} | {p}"] for p in ("default", "fast_decode")}, "default")
        row = {"variant": label}
        for path in ("default", "fast_decode"):
            seconds = statistics.median(times[f"{label} | {path}"])
            row[path] = {"seconds": timing.summarize(times[f"{label} | {path}"]),
                         "new_tokens_per_s": args.batch * args.new_tokens / seconds}  # fmt: skip
        row["fast_over_default"] = ratio["fast_decode"]
        rows.append(row)
    lines = [
        f"generate() of {name}: batch {args.batch}, {args.prompt_tokens}-token prompts, {args.new_tokens} new "
        f"tokens, fp32, {args.rounds} interleaved rounds; torch threads {torch.get_num_threads()}",
        "",
        "| variant | default (sdpa, DynamicCache) | fast_decode (hav_sdpa, StaticCache) | fast / default |",
        "|---|---|---|---|",
    ]
    for r in rows:
        d, f, q = r["default"], r["fast_decode"], r["fast_over_default"]
        lines.append(
            f"| {r['variant']} | {d['seconds']['median']:.2f} s ({d['new_tokens_per_s']:.0f} tok/s) "
            f"| {f['seconds']['median']:.2f} s ({f['new_tokens_per_s']:.0f} tok/s) "
            f"| {q['median']:.2f}x [{q['q1']:.2f}-{q['q3']:.2f}] |"
        )
    print("\n".join(lines))
    write_json(args.json_out, {"args": asdict(args), "source": name, "rows": rows})


if __name__ == "__main__":
    main()
