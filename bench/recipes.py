"""Zero-step quality and cost of the conversion presets on SmolLM2-135M-Instruct (GQA-3 -> MQA).

    python bench/recipes.py --json_out out/bench/recipes.json
    python bench/recipes.py --recipes mean fast best --other_text tinyshakespeare.txt

Each recipe converts the model as ``hav.convert(model, "mqa", kv_init=RECIPE, tokenizer=tokenizer)`` does
(calibration, where the recipe needs it, on the default text less its last 10%), then is scored on 16
held-out blocks of 256 tokens of that last 10% and, with ``--other_text``, on the first 4,096 tokens of a
text of another domain that no recipe calibrates on; plus the greedy answer to a fixed chat prompt.
Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import transformers
from transformers import HfArgumentParser

import hf_attn_variants as hav
from hf_attn_variants.data import load_texts, pack
from hf_attn_variants.default_model import default_model
from hf_attn_variants.io import write_json
from hf_attn_variants.tradeoff import greedy_answer


@dataclass
class Args:
    recipes: list[str] = field(default_factory=lambda: ["mean", "fast", "svd", "best"])
    variant: str = "mqa"
    other_text: str | None = field(default=None, metadata={"help": "a text file of another domain"})
    prompt: str = "What is the capital of France?"
    json_out: str | None = None


def perplexity(model, blocks: torch.Tensor) -> float:
    nll, count = 0.0, 0
    with torch.inference_mode():
        for row in blocks:
            loss = model(input_ids=row[None], labels=row[None]).loss
            nll, count = nll + loss.item() * (len(row) - 1), count + len(row) - 1
    return math.exp(nll / count)


def main() -> None:
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    folder, gguf = default_model()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    source = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    blocks = pack(load_texts(None, None), tokenizer, 256)
    texts = {"held-out default text": torch.tensor(blocks.select(range(len(blocks) - 16, len(blocks)))["input_ids"])}
    if args.other_text:
        ids = tokenizer(open(args.other_text).read()[:200_000])["input_ids"][: 16 * 256]
        texts[args.other_text] = torch.tensor(ids).view(16, 256)

    def score(model) -> dict:
        return {
            "perplexity": {name: perplexity(model, ids) for name, ids in texts.items()},
            "answer": greedy_answer(model, tokenizer, args.prompt),
        }

    results = {"source": score(source), "recipes": {}}
    for name in args.recipes:
        start = time.perf_counter()
        model = hav.convert(source, args.variant, kv_init=name, tokenizer=tokenizer).eval()
        seconds = time.perf_counter() - start
        results["recipes"][name] = {"seconds": seconds, "recipe": model.config.attn_variant_recipe, **score(model)}
        print(name, results["recipes"][name], flush=True)
    write_json(args.json_out, results)
    source_ppl = results["source"]["perplexity"]
    print("| recipe | " + " | ".join(f"perplexity, {t}" for t in texts) + " | answer | seconds |")
    print("|---" * (len(texts) + 3) + "|")
    for name, r in results["recipes"].items():
        cells = [f"{r['perplexity'][t]:.4g} ({r['perplexity'][t] / source_ppl[t]:.3g}x)" for t in texts]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['answer']!r} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
