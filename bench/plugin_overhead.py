"""The plugin's attention against transformers' own, same shape, same K/V heads, same cache: decode and prefill.

    python bench/plugin_overhead.py --json_out out/bench/plugin_overhead.json

Variants of native families (Llama, Mistral, Qwen, ...) are transformers' own model classes with fewer K/V
heads, so they have no overhead to measure. Plugin families run the plugin's ``VariantAttention``; with
G = H a conversion gives back the family's own model, so this benchmark builds the plugin's GPT-2 variant
class at G = H directly (the same weights; its logits are checked equal to native GPT-2's first) and times
both interleaved: a decode step on a StaticCache at ``--batch`` x ``--context`` and a prefill of
``--prefill_tokens`` tokens, ``--rounds`` rounds, median of per-round ratios (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import transformers
from transformers import HfArgumentParser

import hf_attn_variants as hav
from hf_attn_variants import timing
from hf_attn_variants.families.registry import variant_config_class, variant_model_classes
from hf_attn_variants.io import write_json


@dataclass
class Args:
    batch: int = 8
    context: int = 2048
    prefill_batch: int = 1
    prefill_tokens: int = 256
    rounds: int = 15
    attn_implementation: str = "sdpa"
    json_out: str | None = None


def gpt2_pair(attn_implementation: str):
    """Native GPT-2 (hidden 1024, 16 heads, 4 layers) and the plugin's GPT-2 variant class at G = H, same weights."""
    config = transformers.GPT2Config(
        n_embd=1024,
        n_head=16,
        n_layer=4,
        vocab_size=4096,
        n_positions=8192,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    native = transformers.GPT2LMHeadModel(config).eval()
    family = hav.family_for(config)
    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    plugin_config = variant_config_class(family).from_dict({**values, "num_key_value_heads": config.n_head})
    plugin = variant_model_classes(family)[transformers.GPT2LMHeadModel](plugin_config).eval()
    plugin.load_state_dict(native.state_dict())
    for model in (native, plugin):
        model.set_attn_implementation(attn_implementation)
    ids = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (native(ids).logits - plugin(ids).logits).abs().max().item()
    if diff > 1e-4:
        raise AssertionError(f"the plugin's GPT-2 differs from native GPT-2 by {diff}")
    return native, plugin


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    native, plugin = gpt2_pair(args.attn_implementation)
    candidates = {}
    for name, model in (("native GPT-2", native), ("plugin GPT-2 (VariantAttention, G = H)", plugin)):
        candidates[f"decode: {name}"] = timing.decode_step(model, args.batch, args.context)[0]
        candidates[f"prefill: {name}"] = timing.prefill(model, args.prefill_batch, args.prefill_tokens)
    times = timing.interleaved(candidates, args.rounds, desc="plugin overhead")
    rows = []
    for kind in ("decode", "prefill"):
        base = f"{kind}: native GPT-2"
        ratio = timing.ratios({k: v for k, v in times.items() if k.startswith(kind)}, base)
        other = f"{kind}: plugin GPT-2 (VariantAttention, G = H)"
        rows.append(
            {
                "kind": kind,
                "native_seconds": timing.summarize(times[base]),
                "plugin_seconds": timing.summarize(times[other]),
                "plugin_over_native": ratio[other],
            }
        )
    print(markdown(rows, args))
    write_json(args.json_out, {"args": asdict(args), "rows": rows})


def markdown(rows: list[dict], args: Args) -> str:
    lines = [
        f"GPT-2 (hidden 1024, 16 heads, 4 layers), fp32, {args.attn_implementation}; decode at batch {args.batch} x "
        f"{args.context} (StaticCache), prefill {args.prefill_batch} x {args.prefill_tokens}; {args.rounds} rounds",
        "",
        "| | native GPT-2 (median) | plugin, G = H (median) | plugin / native (median per round, IQR) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        q = r["plugin_over_native"]
        lines.append(
            f"| {r['kind']} | {r['native_seconds']['median'] * 1e3:.1f} ms | {r['plugin_seconds']['median'] * 1e3:.1f} ms "
            f"| {q['median']:.3f} [{q['q1']:.3f}-{q['q3']:.3f}] |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
