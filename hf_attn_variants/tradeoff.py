"""The trade-off table: a model in MHA, GQA and MQA, measured for latency, memory and quality in one run.

For each variant the source is converted (optionally uptrained briefly with the project's training code),
then measured: perplexity and next-token accuracy on held-out text (the package's ``evaluate`` modules),
KV-cache bytes per token (read off a real cache, next to the formula) and at a chosen context, weights
bytes, prefill and decode-step latency as ratios to MHA (interleaved rounds in one process, median and
IQR), and optionally lm-evaluation-harness tasks. It writes ``tradeoff.json``, ``tradeoff.md``,
``tradeoff.png`` and one model card per variant (with the checkpoint if asked).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from . import timing
from .answers import greedy_answers
from .calibrated import calibration_for
from .compat import output_cache
from .convert import convert
from .data import DEFAULT_DATASET
from .engines import DECODE_STEPS
from .families import family_for
from .io import atomic_output_dir, check_output_dir, files_folder_problem
from .kv_cache import cache_nbytes, format_bytes, kv_cache_plan
from .options import TradeoffConfig
from .recipe import KVRecipe
from .variants import (
    gqa_choices,
    parse_variant_list,
    resolve_num_kv_heads,
    variant_label,
    variant_name,
)

FILES = ("tradeoff.json", "tradeoff.md", "tradeoff.png")
TRADEOFF_OUTPUT = files_folder_problem(frozenset(FILES), "tradeoff", model_folders=True)  # what --overwrite replaces


def default_variants(num_heads: int, source_kv: int) -> list[tuple[str, int]]:
    """MHA, the source's own layout, one GQA in between (when the head count allows), and MQA."""
    kv = {num_heads, source_kv, 1}
    middle = [g for g in gqa_choices(num_heads) if g not in kv]
    if middle and len(kv) < 4:
        kv.add(min(middle, key=lambda g: abs(g - math.sqrt(num_heads))))
    return [(variant_name(num_heads, g), g) for g in sorted(kv, reverse=True)]


def resolve_variants(text: str | None, num_heads: int, source_kv: int) -> list[tuple[str, int]]:
    """``[(variant, kv_heads)]`` ordered from most to fewest K/V heads; MHA always included (the baseline)."""
    if text is None:
        return default_variants(num_heads, source_kv)
    kv = {resolve_num_kv_heads(name, g, num_heads) for name, g in parse_variant_list(text)}
    kv.add(num_heads)
    return [(variant_name(num_heads, g), g) for g in sorted(kv, reverse=True)]


def check_config(cfg: TradeoffConfig) -> None:
    """Refuse bad values before anything is loaded."""
    if not isinstance(cfg.recipe, KVRecipe):
        raise ValueError(f"recipe must be a hf_attn_variants.KVRecipe, got {type(cfg.recipe).__name__}")
    for name in ("block_size", "eval_blocks", "batch", "context", "prefill_tokens", "memory_context", "rounds"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} {getattr(cfg, name)} must be at least 1")
    if cfg.uptrain_steps < 0:
        raise ValueError(f"uptrain_steps {cfg.uptrain_steps} must be 0 or more")
    if cfg.variants is not None:
        parse_variant_list(cfg.variants)
    if cfg.engine is not None:
        from .engines import check_engine

        check_engine(cfg.engine)


def run_tradeoff(cfg: TradeoffConfig) -> dict:
    """Measure every variant of ``cfg.src``; write the JSON, Markdown table, plot and model cards into ``cfg.out``.

    Everything is written to a temporary folder that replaces ``cfg.out`` only when the run is complete.
    """
    from .loading import load_blocks, load_source
    from .training import DataArguments, ModelArguments

    check_config(cfg)
    out = check_output_dir(cfg.src, cfg.out, cfg.overwrite, TRADEOFF_OUTPUT)
    torch.manual_seed(cfg.seed)
    source, tokenizer, source_display = load_source(
        ModelArguments(model_name_or_path=cfg.src, gguf_file=cfg.gguf_file, dtype=cfg.dtype)
    )
    source.eval()
    family = family_for(source.config)
    if cfg.engine:
        from .engines import check_served

        check_served(
            cfg.engine, source.config, source.dtype, source.device.type, tokenizer
        )  # before minutes of measuring
    heads, source_kv = family.num_heads(source.config), family.num_kv_heads(source.config)
    variants = resolve_variants(cfg.variants, heads, source_kv)
    data_args = DataArguments(
        dataset_name=cfg.dataset,
        dataset_config=cfg.dataset_config,
        dataset_split=cfg.dataset_split,
        data_files=cfg.data_files or None,
        text_column=cfg.text_column,
        block_size=cfg.block_size,
        max_eval_blocks=cfg.eval_blocks,
    )
    train_blocks, eval_blocks = load_blocks(data_args, tokenizer)
    held_out = held_out_text(eval_blocks, tokenizer)

    rows, models = [], {}
    with atomic_output_dir(out) as tmp:
        for name, kv in tqdm(variants, desc="variants"):
            label = variant_label(heads, kv)
            merged = kv % source_kv != 0  # fewer K/V heads: made by a recipe (more are exact copies)
            # uptrained: every variant, except under distillation the exact copies (the source has nothing to teach)
            trained = cfg.uptrain_steps > 0 and (merged or not cfg.distill)
            model = (
                source
                if kv == source_kv and not trained
                else convert_copy(source, name, kv, cfg, tokenizer, train_blocks, owned=trained)
            )
            row = {"variant": label, "attn_variant": name, "num_key_value_heads": kv, "source": kv == source_kv}
            row["recipe"] = getattr(model.config, "attn_variant_recipe", None) if model is not source else None
            model.eval()
            start = {**quality(model, tokenizer, held_out, cfg), "answer": greedy_answer(model, tokenizer, cfg.prompt)}
            if merged:  # the GQA paper's mean pooling beside the recipe, both before any training
                pooled = convert(source, name, kv, "mean").eval()
                paper = {
                    **quality(pooled, tokenizer, held_out, cfg),
                    "answer": greedy_answer(pooled, tokenizer, cfg.prompt),
                }
                del pooled
            else:
                paper = start  # the same model: nothing is merged
            row["zero_steps"] = {"mean": paper, "recipe": start}
            if trained:
                row["uptraining"] = uptrain(model, source, tokenizer, train_blocks, eval_blocks, cfg, tmp / "train")
                model.eval()
                row.update(quality(model, tokenizer, held_out, cfg))
                row["answer"] = greedy_answer(model, tokenizer, cfg.prompt)
            else:  # no uptraining, or an exact copy of the source under distillation: its zero-step model
                row.update({k: start[k] for k in ("perplexity", "next_token_accuracy", "scored_tokens", "answer")})
            row.update(memory(model, cfg))
            if cfg.lm_eval_tasks:
                from .lm_eval_support import run_lm_eval

                row["lm_eval"] = run_lm_eval(model, tokenizer, cfg.lm_eval_tasks, limit=cfg.lm_eval_limit)
            rows.append(row)
            models[label] = model
        latency(models, rows, cfg)
        if cfg.engine:
            engine_latency(models, tokenizer, rows, cfg, tmp / "engine")
        summary = {
            "source": source_display,
            "family": family.name,
            "num_attention_heads": heads,
            "source_num_key_value_heads": source_kv,
            "dataset": cfg.dataset or ", ".join(cfg.data_files) or DEFAULT_DATASET,
            "eval_tokens": len(eval_blocks) * cfg.block_size,
            "device": str(source.device),
            "torch_threads": torch.get_num_threads(),
            "config": asdict(cfg),
            "variants": rows,
        }
        (tmp / "tradeoff.json").write_text(json.dumps(summary, indent=2, default=str))
        (tmp / "tradeoff.md").write_text(markdown_table(summary))
        plot(summary, tmp / "tradeoff.png")
        write_cards(models, summary, tokenizer, tmp, cfg)
        shutil.rmtree(tmp / "train", ignore_errors=True)  # the Trainer's scratch folder
        shutil.rmtree(tmp / "engine", ignore_errors=True)  # the engine's models
    return summary


def convert_copy(source, name: str, kv: int, cfg: TradeoffConfig, tokenizer=None, blocks=None, owned: bool = False):
    """``source`` in the variant with ``kv`` K/V heads, owning its tensors when it is going to be trained."""
    base = copy.deepcopy(source) if owned else source
    return convert(base, name, kv, cfg.recipe, calibration=calibration_for(cfg.recipe, base, tokenizer, blocks))


def held_out_text(eval_blocks, tokenizer) -> list[str]:
    """The held-out blocks as one text (their tokens decoded in order), so the metrics tokenize it again."""
    ids = [token for block in eval_blocks["input_ids"] for token in block]
    return [tokenizer.decode(ids)]


def uptrain(model, source, tokenizer, train_blocks, eval_blocks, cfg: TradeoffConfig, workdir: Path) -> dict:
    """Train all weights of ``model`` for ``cfg.uptrain_steps`` steps (distilling from ``source`` if asked)."""
    from transformers import TrainingArguments

    from .training import UptrainArguments, make_trainer

    args = TrainingArguments(
        output_dir=str(workdir),
        max_steps=cfg.uptrain_steps,
        per_device_train_batch_size=cfg.train_batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=min(5, cfg.uptrain_steps // 10),
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, cfg.uptrain_steps // 10),
        seed=cfg.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    uptrain_args = UptrainArguments(distill=cfg.distill)
    model.train().requires_grad_(True)
    trainer = make_trainer(
        model, tokenizer, args, train_blocks, eval_blocks, uptrain_args, teacher=source if cfg.distill else None
    )
    start = time.perf_counter()
    output = trainer.train()
    return {
        "steps": cfg.uptrain_steps,
        "tokens": cfg.uptrain_steps * cfg.train_batch_size * cfg.block_size,
        "trained": "all weights",
        "loss": "distillation from the source + LM loss" if cfg.distill else "LM loss",
        "seconds": time.perf_counter() - start,
        "train_loss": output.training_loss,
    }


def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int = 16) -> str:
    """The model's greedy answer to ``prompt``: a chat turn where the tokenizer has a chat template."""
    return greedy_answers(model, tokenizer, [prompt], max_new_tokens)[0]


def quality(model, tokenizer, texts: list[str], cfg: TradeoffConfig) -> dict:
    """Perplexity and next-token accuracy on ``texts`` through the package's ``evaluate`` modules."""
    from .metrics import load_metric

    stride = cfg.eval_stride or cfg.block_size
    kwargs = dict(
        predictions=texts,
        model=model,
        tokenizer=tokenizer,
        max_length=cfg.block_size,
        stride=stride,
        add_start_token=False,  # the held-out blocks are scored as the training evaluation scores them
    )
    ppl = load_metric("perplexity").compute(**kwargs)
    acc = load_metric("next_token_accuracy").compute(**kwargs)
    return {
        "perplexity": ppl["perplexity"],
        "next_token_accuracy": acc["next_token_accuracy"],
        "scored_tokens": ppl["num_tokens"],
    }


def memory(model, cfg: TradeoffConfig) -> dict:
    """Weights bytes and KV-cache bytes: per token read off a real cache (and the formula), and at the context."""
    cache_dtype = next(model.parameters()).dtype
    family = family_for(model.config)
    kv = family.num_kv_heads(model.config)
    (plan,) = kv_cache_plan(model.config, [(variant_name(family.num_heads(model.config), kv), kv)],
                            cfg.memory_context, 1, cache_dtype)  # fmt: skip
    ids = torch.zeros(1, 8, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        cache = output_cache(model(input_ids=ids, use_cache=True))
    measured = cache_nbytes(cache) // ids.shape[1]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "weights_bytes": weights,
        "kv_bytes_per_token": measured,
        "kv_bytes_per_token_formula": plan["bytes_per_token"],
        "kv_bytes_at_context": plan["total_bytes"],
        "memory_context": cfg.memory_context,
        "kv_fraction_of_mha": plan["fraction_of_mha"],
    }


def latency(models: dict, rows: list[dict], cfg: TradeoffConfig) -> None:
    """Prefill and decode-step times of every variant, interleaved, as ratios to MHA (added to ``rows``)."""
    baseline = rows[0]["variant"]  # MHA: the variants are ordered from most K/V heads
    prefills = {label: timing.prefill(model, 1, cfg.prefill_tokens) for label, model in models.items()}
    prefill_times = timing.interleaved(prefills, cfg.rounds, desc="prefill")
    steps, cache_bytes, peaks = {}, {}, {}
    for label, model in models.items():

        def first_step(model=model):
            step, nbytes = timing.decode_step(model, cfg.batch, cfg.context)
            step()
            return step, nbytes

        (steps[label], cache_bytes[label]), peaks[label] = timing.peak_memory(first_step, model.device)
    decode_times = timing.interleaved(steps, cfg.rounds, desc="decode")
    prefill_ratio, decode_ratio = timing.ratios(prefill_times, baseline), timing.ratios(decode_times, baseline)
    for row in rows:
        label = row["variant"]
        row["prefill_seconds"] = timing.summarize(prefill_times[label])
        row["prefill_ratio"] = prefill_ratio[label]
        row["decode_seconds"] = timing.summarize(decode_times[label])
        row["decode_ratio"] = decode_ratio[label]
        row["decode_cache_bytes"] = cache_bytes[label]
        row["decode_peak_bytes"] = peaks[label]  # measured: memory added by the cache and one decode step
    del steps  # frees the caches


def engine_latency(models: dict, tokenizer, rows: list[dict], cfg: TradeoffConfig, folder: Path) -> None:
    """The same prefill and decode-step ratios with every variant served by ``cfg.engine`` (added to ``rows``)."""
    from .engines import engine_timer

    timers = {label: engine_timer(cfg.engine, model, tokenizer, folder / f"{i}")
              for i, (label, model) in enumerate(models.items())}  # fmt: skip
    prefills = {label: timer.prefill(1, cfg.prefill_tokens) for label, timer in timers.items()}
    prefill_times = timing.interleaved(prefills, cfg.rounds, desc=f"{cfg.engine} prefill")
    steps = {label: timing.SelfTimed(timer.decode(cfg.batch, cfg.context)) for label, timer in timers.items()}
    decode_times = timing.interleaved(steps, cfg.rounds, desc=f"{cfg.engine} decode")
    baseline = rows[0]["variant"]
    prefill_ratio, decode_ratio = timing.ratios(prefill_times, baseline), timing.ratios(decode_times, baseline)
    for row in rows:
        label = row["variant"]
        row["engine"] = {
            **timers[label].record(),
            "prefill_seconds": timing.summarize(prefill_times[label]),
            "prefill_ratio": prefill_ratio[label],
            "decode_seconds": timing.summarize(decode_times[label]),
            "decode_ratio": decode_ratio[label],
        }


def _arrow(value: float, baseline: float, lower_is_better: bool, tolerance: float = 0.02) -> str:
    if abs(value - baseline) <= tolerance * abs(baseline):
        return "="
    better = value < baseline if lower_is_better else value > baseline
    return ("↓" if value < baseline else "↑") + (" better" if better else " worse")


def _peak(n: int | None) -> str:
    return "n/a" if n is None else format_bytes(n)


def _recipe_used(rows: list[dict]) -> str:
    """The recipe of the variants that merged heads (what the table's quality column depends on)."""
    from .model_card import recipe_text

    merged = [r["recipe"] for r in rows if r.get("recipe") and r["recipe"].get("kv_init") != "exact duplication"]
    if not merged:
        return "none needed (every variant holds the source's K/V heads or more: exact copies)"
    return recipe_text(SimpleNamespace(attn_variant_recipe=merged[0]))


def _ratio_arrow(ratio: dict, tolerance: float = 0.02) -> str:
    """An arrow only where the spread supports it: ``≈ noisy`` when the interquartile range straddles 1."""
    if abs(ratio["median"] - 1.0) <= tolerance:
        return "="
    if ratio["q1"] <= 1.0 <= ratio["q3"]:
        return "≈ noisy"
    return _arrow(ratio["median"], 1.0, True, tolerance)


def _quality_cell(q: dict, mha: dict) -> str:
    return f"{_arrow(q['perplexity'], mha['perplexity'], True)} ppl {q['perplexity']:.4g}, acc {q['next_token_accuracy']:.1%}"


def markdown_table(summary: dict) -> str:
    """The seed's table (Variant | Latency | Memory | Accuracy) with the measured numbers next to the arrows.

    Quality comes in up to three columns: the GQA paper's mean pooling and the run's recipe, both before any
    training, and the recipe's model after the uptraining budget (when there is one); then each variant's
    greedy answer to the fixed prompt at each stage.
    """
    rows = summary["variants"]
    mha = rows[0]
    cfg = summary["config"]
    steps = cfg["uptrain_steps"]
    engine = cfg.get("engine")
    engine_headers = (
        f"{engine}: decode step (batch {cfg['batch']}, context {cfg['context']}) | {engine}: prefill | "
        if engine
        else ""
    )
    uptrain = f"{steps} steps ({'distillation from the source + LM loss' if cfg['distill'] else 'LM loss'})"
    stages = [("mean", "mean pooling (the GQA paper), 0 steps"), ("recipe", "the recipe, 0 steps")]
    quality_headers = [f"Quality: {title}" for _, title in stages] + (
        [f"Quality: the recipe after {uptrain}"] * bool(steps)
    )
    lines = [
        f"Trade-off of {summary['source']} ({summary['family']}, {summary['num_attention_heads']} query heads); "
        f"quality (perplexity, next-token accuracy) on {summary['eval_tokens']} held-out tokens of "
        f"{summary['dataset']}; recipe: {_recipe_used(rows)}; uptraining: {uptrain if steps else 'none'}.",
        "",
        f"| Variant | Latency (decode step, batch {cfg['batch']}, context {cfg['context']}) | Prefill "
        f"({cfg['prefill_tokens']} tokens) | {engine_headers}Memory (KV cache of one sequence at "
        f"{cfg['memory_context']} tokens; "
        f"weights; measured peak of a decode step at batch {cfg['batch']}, context {cfg['context']}) | "
        + " | ".join(quality_headers)
        + " |",
        "|---|---|---|---" + "|---|---" * bool(engine) + "|---" * len(quality_headers) + "|",
    ]
    for r in rows:
        d, p = r["decode_ratio"], r["prefill_ratio"]
        cells = [_quality_cell(r["zero_steps"][stage], mha["zero_steps"][stage]) for stage, _ in stages]
        if steps:
            cells.append(_quality_cell(r, mha))
        lines.append(
            f"| {r['variant']}{' (source)' if r['source'] else ''} "
            f"| {_ratio_arrow(d)} {d['median']:.2f}x MHA [{d['q1']:.2f}-{d['q3']:.2f}] "
            f"| {_ratio_arrow(p)} {p['median']:.2f}x [{p['q1']:.2f}-{p['q3']:.2f}] "
            + (_engine_cells(r["engine"]) if engine else "")
            + f"| {_arrow(r['kv_bytes_at_context'], mha['kv_bytes_at_context'], True)} "
            f"{format_bytes(r['kv_bytes_at_context'])} ({r['kv_fraction_of_mha']:.0%} of MHA); "
            f"weights {format_bytes(r['weights_bytes'])}; decode peak {_peak(r['decode_peak_bytes'])} "
            "| " + " | ".join(cells) + " |"
        )
    answer_headers = ["mean pooling, 0 steps", "the recipe, 0 steps"] + (["after uptraining"] if steps else [])
    lines += ["", f"Greedy answer to {cfg['prompt']!r}:", "", "| Variant | " + " | ".join(answer_headers) + " |"]
    lines.append("|---" * (len(answer_headers) + 1) + "|")
    for r in rows:
        answers = [r["zero_steps"]["mean"]["answer"], r["zero_steps"]["recipe"]["answer"]] + (
            [r["answer"]] * bool(steps)
        )
        lines.append(f"| {r['variant']} | " + " | ".join(_answer_cell(a) for a in answers) + " |")
    noisy = [
        r["variant"]
        for r in rows[1:]
        if "noisy" in "".join(_ratio_arrow(x) for x in (r["decode_ratio"], r["prefill_ratio"], *_engine_ratios(r)))
    ]
    if noisy:
        lines += ["", f"The machine was too noisy to compare the latency of {', '.join(noisy)} with MHA in this run "
                  "(its interquartile range straddles 1.0): run again on a quieter machine."]  # fmt: skip
    lines += [
        "",
        "Latency: median per-round ratio to MHA over "
        f"{cfg['rounds']} interleaved rounds [interquartile range]; absolute medians are in tradeoff.json. "
        "Memory: the KV cache in the model's dtype (the formula, checked against a real cache); the decode peak "
        "is measured (peak resident memory added while the cache is allocated and one step runs; on CUDA, "
        "allocated device memory). Arrows compare with MHA (= within 2%; ≈ noisy: the spread includes 1.0).",
    ]
    if engine:
        e = mha["engine"]
        lines += [
            "",
            f"{engine} {e['version']}: each variant exported with the package's converter and served by the engine "
            "(K/V heads as the engine was given them); prefill and decode-step ratios to the engine's own MHA in "
            f"{cfg['rounds']} interleaved rounds; a decode step is timed inside a generation of {DECODE_STEPS} tokens "
            f"({DECODE_STEPS - 1} steps timed) after a cached prompt of {cfg['context']} tokens.",
        ]
    if any("lm_eval" in r for r in rows):
        columns = [
            (task, m)
            for task, ms in rows[0]["lm_eval"].items()
            for m in ms
            if not m.endswith("stderr") and m != "sample_len"
        ]
        lines += ["", "lm-evaluation-harness:", "", "| Variant | " + " | ".join(f"{t} {m}" for t, m in columns) + " |"]
        lines.append("|---" * (len(columns) + 1) + "|")
        for r in rows:
            values = " | ".join(f"{r['lm_eval'][t][m]:.4g}" for t, m in columns)
            lines.append(f"| {r['variant']} | {values} |")
    return "\n".join(lines) + "\n"


def _engine_ratios(row: dict) -> tuple:
    return (row["engine"]["decode_ratio"], row["engine"]["prefill_ratio"]) if "engine" in row else ()


def _engine_cells(e: dict) -> str:
    d, p = e["decode_ratio"], e["prefill_ratio"]
    return (
        f"| {_ratio_arrow(d)} {d['median']:.2f}x [{d['q1']:.2f}-{d['q3']:.2f}], {e['kv_heads']} K/V heads, "
        f"{format_bytes(e['kv_bytes_per_token'])}/token "
        f"| {_ratio_arrow(p)} {p['median']:.2f}x [{p['q1']:.2f}-{p['q3']:.2f}] "
    )


def _answer_cell(answer: str) -> str:
    text = " ".join(answer.split()) or "(nothing)"
    return text.replace("|", "\\|")[:60]


def plot(summary: dict, path: Path) -> None:
    """Two panels: perplexity against decode-step latency, and KV-cache memory against context length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["variants"]
    steps = summary["config"]["uptrain_steps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    stages = [
        ("mean pooling (GQA paper), 0 steps", lambda r: r["zero_steps"]["mean"], "o", "none"),
        ("recipe, 0 steps", lambda r: r["zero_steps"]["recipe"], "s", None),
    ]
    if steps:
        stages.append((f"recipe after {steps} uptraining steps", lambda r: r, "^", None))
    for i, (label, pick, marker, face) in enumerate(stages):
        x = [r["decode_ratio"]["median"] for r in rows]
        spread = [[r["decode_ratio"]["median"] - r["decode_ratio"]["q1"] for r in rows],
                  [r["decode_ratio"]["q3"] - r["decode_ratio"]["median"] for r in rows]]  # fmt: skip
        y = [pick(r)["perplexity"] for r in rows]
        color = f"C{i}"
        left.errorbar(x, y, xerr=spread, fmt=marker, color=color, mfc=face or color, capsize=3, label=label)
    for r in rows:
        left.annotate(r["variant"], (r["decode_ratio"]["median"], r["zero_steps"]["recipe"]["perplexity"]),
                      textcoords="offset points", xytext=(6, 4))  # fmt: skip
    left.set_xlabel(
        f"decode step time / MHA, batch {summary['config']['batch']}, context {summary['config']['context']} "
        "(lower is better; bars: interquartile range)"
    )
    left.set_ylabel("held-out perplexity (lower is better)")
    left.set_yscale("log")
    left.set_title("quality vs decode latency")
    left.legend(fontsize=8)
    contexts = [2**k for k in range(9, 16)]
    for r in rows:
        right.plot(contexts, [r["kv_bytes_per_token"] * c / 2**20 for c in contexts], marker="o", label=r["variant"])
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("context (tokens)")
    right.set_ylabel("KV cache per sequence (MiB; lower is better)")
    right.set_title("KV memory vs context")
    right.legend()
    fig.suptitle(f"{summary['source']}: MHA / GQA / MQA", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def card_metrics(row: dict) -> dict[str, float]:
    """A variant's figures under distinct names: mean pooling and the recipe at 0 steps, then after uptraining."""
    names = {"perplexity": "perplexity", "next_token_accuracy": "next-token accuracy"}
    merged = row["zero_steps"]["mean"] is not row["zero_steps"]["recipe"] and row["recipe"] is not None
    metrics = {}
    for key, name in names.items():
        if merged:
            metrics[f"{name}, mean pooling, 0 steps"] = row["zero_steps"]["mean"][key]
            metrics[f"{name}, recipe, 0 steps"] = row["zero_steps"]["recipe"][key]
        if row.get("uptraining"):
            metrics[f"{name} after {row['uptraining']['steps']} steps of uptraining"] = row[key]
        elif not merged:
            metrics[name] = row[key]
    return metrics


def write_cards(models: dict, summary: dict, tokenizer, folder: Path, cfg: TradeoffConfig) -> None:
    """A model card per variant in ``folder/<variant>/README.md`` (with the checkpoint if ``save_checkpoints``)."""
    from .model_card import render_model_card
    from .sources import source_metadata

    origin = source_metadata(cfg.src, cfg.gguf_file)

    for row in summary["variants"]:
        model = models[row["variant"]]
        target = folder / row["variant"].lower()
        target.mkdir()
        up = row.get("uptraining")
        card = render_model_card(
            model,
            summary["source"],
            summary["source_num_key_value_heads"],
            uptraining=f"{up['steps']} steps, {up['tokens']:,} tokens, {up['trained']}, {up['loss']}" if up else "none",
            metrics=card_metrics(row),
            dataset=f"{summary['eval_tokens']} held-out tokens of {summary['dataset']}",
            dataset_id=cfg.dataset if cfg.dataset and not cfg.data_files else None,
            **origin,
        )
        card.save(target / "README.md")
        if cfg.save_checkpoints:
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
