"""Zero-step quality and cost of conversion recipes on SmolLM2-135M-Instruct (GQA-3 -> MQA).

    python bench/recipes.py --json_out out/bench/recipes.json
    python bench/recipes.py --recipes mean fast best --other_text tinyshakespeare.txt
    python bench/recipes.py --recipes best --other_text tinyshakespeare.txt --more_distill_steps 60 --score_every 30

A recipe is a method or preset name, then optional ``field=value`` options of ``hav.KVRecipe``. Each converts
the model as ``hav.convert(model, "mqa", kv_init=..., tokenizer=tokenizer)`` does (calibration, where the
recipe needs it, on the default text less its last 10%), then is scored on 16 held-out blocks of 256 tokens of
that last 10% and, with ``--other_text``, on the first 4,096 tokens of a text of another domain that no recipe
calibrates on; and on answers: the greedy answers to the shipped factual chat prompts
(``hf_attn_variants/prompts/factual_chat.jsonl``) compared with the source's (``hf_attn_variants.answers``).
``--more_distill_steps N``: after each conversion, N more distillation steps (``hav.distill_attention``, at the
recipe's ``distill_lr``, on the blocks the recipe distilled on: its calibration blocks and those the source
wrote), scored every ``--score_every`` steps: what uptraining by distillation from that start buys, and its
cost. Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import ast
import math
import time
from dataclasses import dataclass, field

import torch
import transformers
from transformers import HfArgumentParser

import hf_attn_variants as hav
from hf_attn_variants.answers import compare_answers, factual_prompts, greedy_answers
from hf_attn_variants.data import load_texts, pack
from hf_attn_variants.default_model import default_model
from hf_attn_variants.io import write_json


@dataclass
class Args:
    recipes: list[str] = field(
        default_factory=lambda: ["mean", "fast", "svd", "best"],
        metadata={"help": "each a method or preset, then optional KVRecipe options: 'best distill_steps=120'"},
    )
    variant: str = "mqa"
    other_text: str | None = field(default=None, metadata={"help": "a text file of another domain"})
    more_distill_steps: int = field(default=0, metadata={"help": "distillation steps after each conversion"})
    score_every: int = field(default=30, metadata={"help": "score every this many of --more_distill_steps"})
    json_out: str | None = None


def parse_recipe(spec: str) -> dict:
    """``"best distill_steps=120"`` -> ``{"kv_init": "best", "distill_steps": 120}`` (values as Python literals)."""
    name, *options = spec.split()
    parsed = {"kv_init": name}
    for option in options:
        key, _, value = option.partition("=")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[key] = value
    hav.KVRecipe(**parsed)  # refuse a bad recipe before anything runs
    return parsed


def perplexity(model, blocks: torch.Tensor) -> float:
    nll, count = 0.0, 0
    with torch.inference_mode():
        for row in blocks:
            loss = model(input_ids=row[None], labels=row[None]).loss
            nll, count = nll + loss.item() * (len(row) - 1), count + len(row) - 1
    return math.exp(nll / count)


def main() -> None:
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    recipes = {spec: parse_recipe(spec) for spec in args.recipes}
    folder, gguf = default_model()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    source = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    blocks = pack(load_texts(None, None), tokenizer, 256)
    texts = {"held-out default text": torch.tensor(blocks.select(range(len(blocks) - 16, len(blocks)))["input_ids"])}
    if args.other_text:
        ids = tokenizer(open(args.other_text).read()[:200_000])["input_ids"][: 16 * 256]
        texts[args.other_text] = torch.tensor(ids).view(16, 256)
    prompts = factual_prompts()

    def score(model, reference=None) -> dict:
        answers = greedy_answers(model, tokenizer, [p.prompt for p in prompts])
        return {
            "perplexity": {name: perplexity(model, ids) for name, ids in texts.items()},
            "answers": answers,
            "agreement": compare_answers(answers, reference or answers, prompts),
        }

    results = {"source": score(source), "prompts": [p.prompt for p in prompts], "recipes": {}}
    reference = results["source"]["answers"]
    for spec, options in recipes.items():
        start = time.perf_counter()
        recipe = hav.KVRecipe(**options).resolve(can_calibrate=True)
        calibration = (
            hav.calibrate(source, tokenizer, **recipe.calibrate_kwargs()) if recipe.needs_calibration else None
        )
        model = hav.convert(source, args.variant, kv_init=recipe, calibration=calibration, tokenizer=tokenizer).eval()
        seconds = time.perf_counter() - start
        results["recipes"][spec] = {"seconds": seconds, "recipe": model.config.attn_variant_recipe,
                                    **score(model, reference), "more_distill": []}  # fmt: skip
        print(spec, results["recipes"][spec], flush=True)
        write_json(args.json_out, results)  # each recipe as it is measured
        done, start = 0, time.perf_counter()
        while calibration is not None and done < args.more_distill_steps:
            steps = min(args.score_every, args.more_distill_steps - done)
            hav.distill_attention(source, model, hav.family_for(model.config), calibration.distillation_blocks(),
                                  steps, recipe.distill_lr, seed=recipe.calibration_seed + done + 1)  # fmt: skip
            done += steps
            row = {"steps": done, "seconds": time.perf_counter() - start, **score(model.eval(), reference)}
            results["recipes"][spec]["more_distill"].append(row)
            print(spec, f"+{done} distillation steps", row, flush=True)
            write_json(args.json_out, results)
    source_ppl, right = results["source"]["perplexity"], results["source"]["agreement"]["right"]
    print(f"source: {right}/{len(prompts)} answers right")
    columns = " | ".join(f"perplexity, {t}" for t in texts)
    print(f"| recipe | {columns} | right answers (of the source's {right}) | same first sentence | seconds |")
    print("|---" * (len(texts) + 4) + "|")
    for name, r in results["recipes"].items():
        for label, row, seconds in [(name, r, r["seconds"])] + [
            (f"{name}, then {m['steps']} more distillation steps", m, r["seconds"] + m["seconds"])
            for m in r["more_distill"]
        ]:
            cells = [f"{row['perplexity'][t]:.4g} ({row['perplexity'][t] / source_ppl[t]:.3g}x)" for t in texts]
            agree = row["agreement"]
            print(f"| {label} | " + " | ".join(cells) + f" | {agree['right_as_source']} | "
                  f"{agree['same_first_sentence']} | {seconds:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
