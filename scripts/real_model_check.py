"""Check the conversions on the real default model, SmolLM2-135M-Instruct (GQA-3), and print the figures.

    python scripts/real_model_check.py
    python scripts/real_model_check.py --max_tokens 1024 --json_out out/real_model_check.json

For each of GQA-3 (the source), MHA-9 (exact expansion) and MQA (mean pooling), it prints the max
absolute logit difference to the source, the perplexity on English prose from the Python standard
library (``pydoc_data.topics``, a plain sliding-window-free chunked estimate), the KV-cache bytes per
token read off the cache after a forward pass, and the greedy answer to "What is the capital of France?".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import transformers
from transformers import HfArgumentParser

import hf_attn_variants as hav
from hf_attn_variants.compat import output_cache
from hf_attn_variants.default_model import default_model
from hf_attn_variants.io import write_json
from hf_attn_variants.kv_cache import cache_nbytes


@dataclass
class Args:
    max_tokens: int = 2048  # tokens of prose for the perplexity
    chunk: int = 512  # tokens per forward pass
    json_out: str | None = None


def prose(tokenizer, max_tokens: int) -> torch.Tensor:
    import pydoc_data.topics

    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    return tokenizer(text[: max_tokens * 8], return_tensors="pt").input_ids[:, :max_tokens]


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, chunk: int) -> float:
    nll, count = 0.0, 0
    for start in range(0, ids.shape[1] - 1, chunk):
        piece = ids[:, start : start + chunk + 1]
        logits = model(piece[:, :-1]).logits
        nll += torch.nn.functional.cross_entropy(logits[0], piece[0, 1:], reduction="sum").item()
        count += piece.shape[1] - 1
    return math.exp(nll / count)


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    folder, gguf_file = default_model()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    source = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file).eval()
    ids = prose(tokenizer, args.max_tokens)
    question = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        reference = source(ids[:, : args.chunk]).logits
    rows = []
    for name, variant in (("GQA-3 (source)", None), ("MHA-9", "mha"), ("MQA (mean)", "mqa")):
        model = source if variant is None else hav.convert(source, variant, kv_init="mean")
        with torch.no_grad():
            out = model(ids[:, : args.chunk], use_cache=True)
        generated = model.generate(**question, max_new_tokens=12, do_sample=False)
        rows.append(
            {
                "variant": name,
                "num_key_value_heads": model.config.num_key_value_heads,
                "max_abs_logit_diff": (out.logits - reference).abs().max().item(),
                "perplexity": perplexity(model, ids, args.chunk),
                "kv_bytes_per_token": cache_nbytes(output_cache(out)) // args.chunk,
                "answer": tokenizer.decode(generated[0, question["input_ids"].shape[1] :], skip_special_tokens=True),
            }
        )
    print(f"SmolLM2-135M-Instruct, {ids.shape[1]} tokens of pydoc_data.topics prose, fp32 cache")
    print("| variant | K/V heads | max abs logit diff | perplexity | KV bytes/token | answer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['num_key_value_heads']} | {r['max_abs_logit_diff']:.2e} | {r['perplexity']:.1f} "
            f"| {r['kv_bytes_per_token']} | {r['answer']!r} |"
        )
    write_json(args.json_out, rows)


if __name__ == "__main__":
    main()
