"""Uptraining and fine-tuning variant models with transformers' Trainer (so accelerate, DDP and FSDP work).

The recipe of the GQA paper: convert, then train briefly. This module converts on load, packs a text
dataset into blocks, trains all weights, only the attention projections, or a LoRA adapter (PEFT), with
the LM loss or distillation from the unconverted source, and saves the model (or adapter), its tokenizer,
a model card and the held-out perplexity before and after. ``scripts/finetune.py`` and
``hf-attn-variants train`` are thin front ends over :func:`main`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments

from .calibrated import calibration_for
from .choices import DTYPES
from .convert import convert
from .data import DEFAULT_DATASET, check_data_files
from .families import family_for
from .loading import check_source, load_blocks, load_source
from .recipe import KVRecipe
from .variants import ATTN_VARIANTS, resolve_num_kv_heads

TRAINED = {"all": "all weights", "kv": "K/V projections", "qkvo": "attention projections"}
TRAIN_MODULES = tuple(TRAINED)
RESULTS_FILE = "uptrain_results.json"


@dataclass
class ModelArguments:
    """The model to start from, the variant to convert it to on load, and LoRA.

    ``recipe`` (a :class:`hf_attn_variants.KVRecipe`, set after construction; the command line fills it from its
    own group of flags) says how fewer K/V heads are made.
    """

    _argument_group_name = "model and variant"

    model_name_or_path: str = field(default="smollm2", metadata={"help": "folder, hub id, or 'smollm2'"})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside model_name_or_path"})
    attn_variant: str | None = field(
        default=None, metadata={"help": f"one of {ATTN_VARIANTS}; none = keep", "aliases": ["--variant"]}
    )
    num_key_value_heads: int | None = field(
        default=None, metadata={"help": "K/V heads (required for gqa)", "aliases": ["--num-kv-heads"]}
    )
    dtype: str = field(default="float32", metadata={"help": f"weights dtype, one of {DTYPES}"})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flex_attention, ..."})
    use_peft: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of the weights"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "module names; default: every attention projection of the family"}
    )
    recipe: KVRecipe = field(default_factory=KVRecipe, init=False)


@dataclass
class DataArguments:
    """The text: a datasets hub id, local files, or (neither) the prose of ``pydoc_data.topics``."""

    _argument_group_name = "training and evaluation text"

    dataset_name: str | None = field(default=None, metadata={"help": "datasets hub id"})
    dataset_config: str | None = None
    dataset_split: str = "train"
    data_files: list[str] | None = field(default=None, metadata={"help": "local .txt, .jsonl, .json or .parquet"})
    text_column: str = "text"
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    eval_fraction: float = field(default=0.1, metadata={"help": "share of the blocks held out (the last ones)"})
    max_eval_blocks: int | None = None


@dataclass
class UptrainArguments:
    """What is trained, for how long, and against which loss."""

    _argument_group_name = "uptraining"

    train_modules: str = field(
        default="all", metadata={"help": "all | kv (K/V projections) | qkvo (all attention projections)"}
    )
    uptrain_fraction: float | None = field(
        default=None, metadata={"help": "token budget as a share of pretrain_tokens (the GQA paper used 0.05)"}
    )
    pretrain_tokens: float | None = field(default=None, metadata={"help": "pre-training tokens of the source"})
    distill: bool = field(default=False, metadata={"help": "distil from a teacher (default: the unconverted source)"})
    teacher: str | None = field(default=None, metadata={"help": "teacher folder or hub id; default: the source"})
    distill_temperature: float = 2.0
    distill_alpha: float = field(default=0.5, metadata={"help": "weight of the KL term; 1 - alpha weighs the LM loss"})
    eval_source: bool = field(
        default=False, metadata={"help": "also report the unconverted source's held-out perplexity (one more pass)"}
    )


class DistillationTrainer(Trainer):
    """Trainer whose training loss mixes the LM loss with KL(teacher || student) on temperature-softened logits.

    The teacher is frozen, kept out of the model (never saved, never optimised) and run without gradients.
    Evaluation reports the plain LM loss, so ``exp(eval_loss)`` stays a perplexity.
    """

    def __init__(self, *args, teacher, temperature: float = 2.0, alpha: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"distillation needs temperature > 0 (got {temperature}) and 0 <= alpha <= 1 ({alpha})")
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self._parts = {"lm_loss": [], "kl_loss": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lm_loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if not model.training:
            return (lm_loss, outputs) if return_outputs else lm_loss
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=inputs["input_ids"]).logits
        kl = self._kl(outputs.logits, teacher_logits, inputs["labels"], num_items_in_batch)
        loss = self.alpha * kl + (1 - self.alpha) * lm_loss
        self._parts["lm_loss"].append(lm_loss.detach().float())
        self._parts["kl_loss"].append(kl.detach().float())
        return (loss, outputs) if return_outputs else loss

    def _kl(self, student_logits, teacher_logits, labels, num_items_in_batch):
        """KL on the positions the LM loss scores, normalised the way the LM loss is (per token)."""
        mask = labels[:, 1:] != -100  # (batch, seq - 1): position t predicts token t + 1
        t = self.temperature
        student = F.log_softmax(student_logits[:, :-1][mask].float() / t, dim=-1)
        teacher = F.log_softmax(teacher_logits[:, :-1][mask].float() / t, dim=-1)
        kl_sum = F.kl_div(student, teacher, log_target=True, reduction="sum") * t * t
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            return kl_sum / mask.sum().clamp(min=1)
        kl = kl_sum / num_items_in_batch  # the LM loss is a sum over the accumulated batch's tokens, likewise
        if self.args.average_tokens_across_devices:
            kl = kl * self.accelerator.num_processes
        return kl

    def log(self, logs, *args, **kwargs):
        for name, values in self._parts.items():
            if values and "loss" in logs:
                logs[name] = round(torch.stack(values).mean().item(), 4)
                values.clear()
        super().log(logs, *args, **kwargs)


def freeze_for_uptraining(model, train_modules: str) -> list[str]:
    """Make only ``train_modules`` (``all``, ``kv``, ``qkvo``) trainable; the names of the trainable parameters.

    Raises:
        ValueError: an unknown choice, or ``kv`` on a family that fuses q, k and v.
    """
    if train_modules not in TRAIN_MODULES:
        raise ValueError(f"train_modules {train_modules!r} is not one of {list(TRAIN_MODULES)}")
    suffixes = () if train_modules == "all" else family_for(model.config).projections(train_modules)
    trainable = []
    for name, param in model.named_parameters():
        module = name.rpartition(".")[0]
        keep = train_modules == "all" or any(module == s or module.endswith("." + s) for s in suffixes)
        param.requires_grad_(keep)
        if keep:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"no parameter of {type(model).__name__} matches train_modules={train_modules!r}")
    return trainable


def budget_steps(uptrain_fraction: float, pretrain_tokens: float, tokens_per_step: int) -> int:
    """Optimizer steps that train ``uptrain_fraction`` of ``pretrain_tokens`` at ``tokens_per_step``."""
    if not 0 < uptrain_fraction <= 1 or pretrain_tokens <= 0:
        raise ValueError(
            f"uptrain_fraction {uptrain_fraction} must lie in (0, 1] and pretrain_tokens {pretrain_tokens} be > 0"
        )
    return max(1, math.ceil(uptrain_fraction * pretrain_tokens / tokens_per_step))


def check_arguments(model_args: ModelArguments, uptrain_args: UptrainArguments, training_args: TrainingArguments):
    """Refuse bad choices before anything is loaded; each error names the value and the valid choices."""
    if model_args.attn_variant is not None and model_args.attn_variant not in ATTN_VARIANTS:
        raise ValueError(f"attn_variant {model_args.attn_variant!r} is not one of {list(ATTN_VARIANTS)}")
    if not isinstance(model_args.recipe, KVRecipe):
        raise ValueError(f"ModelArguments.recipe must be a hf_attn_variants.KVRecipe, got {model_args.recipe!r}")
    if model_args.dtype not in DTYPES:
        raise ValueError(f"dtype {model_args.dtype!r} is not one of {list(DTYPES)}")
    if uptrain_args.train_modules not in TRAIN_MODULES:
        raise ValueError(f"train_modules {uptrain_args.train_modules!r} is not one of {list(TRAIN_MODULES)}")
    if model_args.use_peft and uptrain_args.train_modules != "all":
        raise ValueError("with --use_peft the LoRA targets say what is trained; leave --train_modules at 'all'")
    if (uptrain_args.uptrain_fraction is None) != (uptrain_args.pretrain_tokens is None):
        raise ValueError("give --uptrain_fraction and --pretrain_tokens together (the budget is their product)")
    if uptrain_args.uptrain_fraction is not None and training_args.max_steps > 0:
        raise ValueError("give either --max_steps or --uptrain_fraction/--pretrain_tokens, not both")
    if uptrain_args.teacher and not uptrain_args.distill:
        raise ValueError("--teacher is only used with --distill")
    check_numbers(model_args, uptrain_args, training_args)


def check_numbers(model_args, uptrain_args, training_args) -> None:
    """Refuse numbers that would train to NaN, not train at all, or fail only once output_dir exists.

    No option may be NaN; the learning rate and epochs are finite and not negative. ``--max_steps`` is a
    number of optimizer steps, at least 1, or transformers' -1 (the default): train ``--num_train_epochs``
    epochs; 0 (which would still run a step) and other negative numbers are refused.
    """
    for args in (model_args, uptrain_args, training_args):
        for f in fields(args):
            value = getattr(args, f.name, None)
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"--{f.name} nan is not a number; give a finite value")
    steps = training_args.max_steps
    if steps == 0 or steps < -1:
        raise ValueError(
            f"--max_steps {steps}: give a number of optimizer steps of at least 1, or -1 (the default) to train "
            f"--num_train_epochs epochs"
        )
    for name in ("learning_rate", "num_train_epochs", "weight_decay", "adam_epsilon"):
        value = getattr(training_args, name, None)
        if isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name} {value}: give a finite number, 0 or more")
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(training_args, name, None)
        if isinstance(value, (int, float)) and not 0 <= value < 1:
            raise ValueError(f"--{name} {value}: give a number from 0 to less than 1")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(training_args, name, None)
        if isinstance(value, int) and value < 1:
            raise ValueError(f"--{name} {value}: give a whole number of at least 1")
    if uptrain_args.uptrain_fraction is not None:
        budget_steps(uptrain_args.uptrain_fraction, uptrain_args.pretrain_tokens, 1)  # its range, checked now
        if not math.isfinite(uptrain_args.pretrain_tokens):
            raise ValueError(f"--pretrain_tokens {uptrain_args.pretrain_tokens}: give a finite number of tokens")
    if uptrain_args.distill:
        t, alpha = uptrain_args.distill_temperature, uptrain_args.distill_alpha
        if not (math.isfinite(t) and t > 0) or not 0 <= alpha <= 1:
            raise ValueError(
                f"--distill_temperature {t} must be a finite number > 0 and --distill_alpha {alpha} lie in [0, 1]"
            )
    if model_args.use_peft:
        if model_args.lora_r < 1 or not 0 <= model_args.lora_dropout < 1 or not math.isfinite(model_args.lora_alpha):
            raise ValueError(
                f"--lora_r {model_args.lora_r} must be at least 1, --lora_dropout {model_args.lora_dropout} lie in "
                f"[0, 1) and --lora_alpha {model_args.lora_alpha} be finite"
            )


def check_data_arguments(data_args) -> None:
    """Refuse block sizes, held-out shares and data files that would fail only after the model is loaded."""
    if not isinstance(data_args.block_size, int) or data_args.block_size < 2:
        raise ValueError(f"--block_size {data_args.block_size}: give a whole number of tokens, at least 2")
    if not 0 < data_args.eval_fraction < 1:
        raise ValueError(f"--eval_fraction {data_args.eval_fraction} must lie strictly between 0 and 1")
    if data_args.max_eval_blocks is not None and data_args.max_eval_blocks < 1:
        raise ValueError(f"--max_eval_blocks {data_args.max_eval_blocks}: give at least 1 (or leave it unset)")
    if data_args.data_files:
        check_data_files(data_args.data_files)


def build_student(source, model_args: ModelArguments, keep_source: bool, tokenizer=None, blocks=None):
    """The model to train: ``source`` converted to the requested variant (``source`` itself if none).

    With ``keep_source`` (the source is the distillation teacher) the student owns copies of its tensors,
    since a conversion shares every unchanged tensor with its source. Methods that merge heads from
    calibration calibrate on ``blocks`` (the training blocks) unless given calibration files.
    """
    base = copy.deepcopy(source) if keep_source else source
    if model_args.attn_variant is None and model_args.num_key_value_heads is None:
        return base
    return convert(
        base,
        model_args.attn_variant,
        model_args.num_key_value_heads,
        model_args.recipe,
        calibration=calibration_for(model_args.recipe, base, tokenizer, blocks),
    )


def _last_checkpoint(output_dir: str) -> str | None:
    if not os.path.isdir(output_dir):
        return None
    return transformers.trainer_utils.get_last_checkpoint(output_dir)


def _resume_from(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: an explicit path, ``last``/``true`` for the newest in output_dir, or none.

    Raises:
        FileExistsError: output_dir already holds checkpoints and resuming was not asked for (nothing is lost).
    """
    asked = training_args.resume_from_checkpoint
    last = _last_checkpoint(training_args.output_dir)
    if asked in (None, "", "false", "False"):
        if last is not None:
            raise FileExistsError(
                f"output_dir {training_args.output_dir!r} holds checkpoints ({Path(last).name}); pass "
                "--resume_from_checkpoint last to continue that run, or choose another output_dir"
            )
        return None
    if str(asked).lower() in ("last", "true"):
        return last  # None: a fresh start (nothing to resume yet), so an interrupted first run can be rerun as is
    if not os.path.isdir(asked):
        raise FileNotFoundError(f"resume_from_checkpoint {asked!r} is not a folder")
    return asked


def _eval_perplexity(trainer: Trainer, prefix: str) -> dict:
    metrics = trainer.evaluate(metric_key_prefix=prefix)
    metrics[f"{prefix}_perplexity"] = math.exp(min(metrics[f"{prefix}_loss"], 50.0))
    trainer.log_metrics(prefix, metrics)
    return metrics


def _ranks_seen(trainer: Trainer) -> list[int]:
    """The process ranks that took part, gathered through the accelerator (proves a multi-process run)."""
    rank = torch.tensor([trainer.args.process_index], device=trainer.args.device)
    return sorted(int(r) for r in trainer.accelerator.gather(rank).tolist())


def _distributed(trainer: Trainer) -> dict:
    """How the run was distributed, as accelerate set it up: its type, and for FSDP the version and whether the
    trained parameters were really sharded (DTensors with one shard per process)."""
    kind = trainer.accelerator.distributed_type
    found = {"type": kind.value if hasattr(kind, "value") else str(kind)}
    if trainer.is_fsdp_enabled:
        plugin = trainer.accelerator.state.fsdp_plugin
        sharded = [type(p).__name__ == "DTensor" for p in trainer.model_wrapped.parameters()]
        found.update(fsdp_version=plugin.fsdp_version, sharded_parameters=f"{sum(sharded)} of {len(sharded)}")
    return found


def describe_uptraining(model_args, uptrain_args, steps: int, tokens: int, seconds: float) -> str:
    """One line for model cards: what was trained, how long, with which loss."""
    what = f"LoRA r={model_args.lora_r}" if model_args.use_peft else TRAINED[uptrain_args.train_modules]
    loss = (
        f"distillation from the source (alpha {uptrain_args.distill_alpha}, T {uptrain_args.distill_temperature})"
        if uptrain_args.distill
        else "LM loss"
    )
    return f"{steps} steps, {tokens:,} tokens, {what}, {loss}, {seconds:.0f} s"


def prepare_for_training(model, model_args: ModelArguments, uptrain_args: UptrainArguments):
    """``model`` with a LoRA adapter (``use_peft``) or with only ``train_modules`` trainable."""
    if not model_args.use_peft:
        freeze_for_uptraining(model, uptrain_args.train_modules)
        return model
    from peft import get_peft_model

    from .lora import lora_config

    config = lora_config(
        model,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
    )
    return get_peft_model(model, config)


def make_trainer(model, tokenizer, training_args, train_blocks, eval_blocks, uptrain_args, teacher=None) -> Trainer:
    """A ``Trainer`` on packed blocks; a ``DistillationTrainer`` when there is a teacher."""
    trainer_class, extra = Trainer, {}
    if teacher is not None:
        trainer_class = DistillationTrainer
        extra = dict(teacher=teacher, temperature=uptrain_args.distill_temperature, alpha=uptrain_args.distill_alpha)
    return trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=transformers.default_data_collator,
        processing_class=tokenizer,
        **extra,
    )


def run(model_args, data_args, uptrain_args, training_args) -> dict:
    """Convert, train and evaluate; save model (or adapter), tokenizer, card and results in output_dir.

    Everything that can be checked is checked before any weight is read and before output_dir is created; an
    output_dir this run created and left empty (a failure in training itself) is removed again.
    """
    check_arguments(model_args, uptrain_args, training_args)
    check_data_arguments(data_args)
    check_source(model_args.model_name_or_path, model_args.gguf_file, model_args)
    if uptrain_args.distill and uptrain_args.teacher:
        check_source(uptrain_args.teacher)
    output_dir = Path(training_args.output_dir)
    existed = output_dir.exists()
    try:
        return _run(model_args, data_args, uptrain_args, training_args)
    except BaseException:
        if not existed and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
        raise


def _run(model_args, data_args, uptrain_args, training_args) -> dict:
    resume = _resume_from(training_args)
    transformers.set_seed(training_args.seed)
    source, tokenizer, source_display = load_source(model_args)
    family = family_for(source.config)
    if model_args.attn_variant or model_args.num_key_value_heads:
        resolve_num_kv_heads(model_args.attn_variant, model_args.num_key_value_heads, family.num_heads(source.config))
    source_kv_heads = family.num_kv_heads(source.config)

    with training_args.main_process_first(desc="tokenize and pack"):
        train_blocks, eval_blocks = load_blocks(data_args, tokenizer)

    results = {}
    if uptrain_args.eval_source and resume is None:
        evaluator = make_trainer(source, tokenizer, training_args, train_blocks, eval_blocks, uptrain_args)
        results.update(_eval_perplexity(evaluator, "eval_source"))
        del evaluator

    teacher = None
    if uptrain_args.distill:
        teacher = (
            source
            if uptrain_args.teacher is None
            else load_source(ModelArguments(model_name_or_path=uptrain_args.teacher, dtype=model_args.dtype))[0]
        )
    model = build_student(source, model_args, keep_source=teacher is source, tokenizer=tokenizer, blocks=train_blocks)
    del source
    model = prepare_for_training(model, model_args, uptrain_args)

    tokens_per_step = (
        data_args.block_size
        * training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    if uptrain_args.uptrain_fraction is not None:
        training_args.max_steps = budget_steps(
            uptrain_args.uptrain_fraction, uptrain_args.pretrain_tokens, tokens_per_step
        )

    trainer = make_trainer(model, tokenizer, training_args, train_blocks, eval_blocks, uptrain_args, teacher)
    if resume is None:
        results.update(_eval_perplexity(trainer, "eval_start"))
    train_output = trainer.train(resume_from_checkpoint=resume)
    results.update(train_output.metrics)
    results.update(_eval_perplexity(trainer, "eval_end"))
    steps = trainer.state.global_step
    results.update(
        steps=steps,
        tokens=steps * tokens_per_step,
        tokens_per_step=tokens_per_step,
        train_blocks=len(train_blocks),
        eval_blocks=len(eval_blocks),
        block_size=data_args.block_size,
        world_size=training_args.world_size,
        ranks=_ranks_seen(trainer),
        distributed=_distributed(trainer),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        source=source_display,
        dataset=", ".join(data_args.data_files or []) or data_args.dataset_name or DEFAULT_DATASET,
        source_num_key_value_heads=source_kv_heads,
        log_history=trainer.state.log_history,
        arguments={
            "model": asdict(model_args),
            "recipe": model_args.recipe.describe(),
            "data": asdict(data_args),
            "uptrain": asdict(uptrain_args),
        },
    )
    if trainer.is_world_process_zero():
        _save(trainer, tokenizer, model_args, uptrain_args, results)
    return results


def _save(trainer, tokenizer, model_args, uptrain_args, results) -> None:
    from .model_card import render_model_card
    from .sources import source_metadata

    output_dir = Path(trainer.args.output_dir)
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(output_dir)
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    results["uptraining"] = describe_uptraining(
        model_args, uptrain_args, results["steps"], results["tokens"], results.get("train_runtime", 0.0)
    )
    data = results["arguments"]["data"]
    card = render_model_card(
        base,
        results["source"],
        results["source_num_key_value_heads"],
        uptraining=results["uptraining"] + (" (this folder holds the LoRA adapter)" if model_args.use_peft else ""),
        metrics={
            "perplexity of the source": results.get("eval_source_perplexity"),
            "perplexity before uptraining": results.get("eval_start_perplexity"),
            "perplexity after uptraining": results["eval_end_perplexity"],
        },
        dataset=f"held-out blocks of {results['dataset']}",
        dataset_id=None if data.get("data_files") else data.get("dataset_name"),
        adapter=model_args.use_peft,
        **source_metadata(model_args.model_name_or_path, model_args.gguf_file),
    )
    card.save(output_dir / "README.md")
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, description and epilog kept as written (a link must not be wrapped)."""


TRAINING_ARGUMENTS_DOCS = "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"


def parser() -> HfArgumentParser:
    """The command line's parser: the project's options first (model, recipe, data, uptraining), then Trainer's."""
    arguments = HfArgumentParser(
        (ModelArguments, KVRecipe, DataArguments, UptrainArguments, TrainingArguments),
        description="Uptrain or fine-tune an MHA, GQA or MQA variant with transformers' Trainer.\n"
        "The project's options come first; Trainer's own (transformers.TrainingArguments) follow them.",
        epilog=f"Trainer's options are documented at\n  {TRAINING_ARGUMENTS_DOCS}\nand docs/training.md has recipes.",
        formatter_class=_HelpFormatter,
    )
    # TrainingArguments land in argparse's default group, printed first: name it and print it last
    arguments._optionals.title = "Trainer's options (transformers.TrainingArguments)"
    arguments._action_groups.sort(key=lambda group: group is arguments._optionals)
    return arguments


def parse_arguments(argv: list[str] | None = None, prog: str | None = None):
    """``(model_args, data_args, uptrain_args, training_args)`` of ``argv``, the recipe held by ``model_args``."""
    arguments = parser()
    if prog:
        arguments.prog = prog
    arguments.usage = "%(prog)s [--model_name_or_path SRC] [--attn_variant mqa] [--kv-init auto] --output_dir OUT [...]"
    model_args, recipe, data_args, uptrain_args, training_args = arguments.parse_args_into_dataclasses(args=argv)
    model_args.recipe = recipe
    return model_args, data_args, uptrain_args, training_args


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and :func:`run`."""
    return run(*parse_arguments(argv))
