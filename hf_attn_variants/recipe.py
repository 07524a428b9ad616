"""The conversion recipe: everything that decides how fewer K/V heads are made from more, in one object.

``KVRecipe`` is what ``hav.convert``, ``convert_checkpoint``, the Auto classes, ``AttnVariantConfig``, training,
the trade-off table, the command line and the benchmarks take. Keyword arguments (``kv_init="svd",
refine_steps=40``) still work everywhere: they build a ``KVRecipe``.

``kv_init`` names a method (``mean``, ``first``, ``random``: the GQA paper's; ``aligned``, ``svd``: calibrated
merges) or a preset:

- ``auto`` (the default): ``best`` when calibration text and a tokenizer are at hand (the source's own
  tokenizer, or data the caller passes), otherwise ``mean``, with one logged line saying why;
- ``fast``: ``svd`` on 32 calibration blocks, closed form (seconds);
- ``best``: ``svd``, then 40 Adam steps per attention layer at lr 2e-4 towards the source attention's output
  on 16 calibration blocks, then 30 Adam steps at lr 5e-4 on all attention weights towards the source's
  next-token output (KL), on those blocks and 16 the source writes itself (minutes; the best zero-step
  recipe measured, see docs/conversion.md).

A preset fills the options left at their defaults; options given explicitly win (``kv_init="best",
refine_steps=10``). Going from fewer to more K/V heads is always an exact duplication, whatever the recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

logger = logging.getLogger(__name__)

KVInit = Literal["auto", "fast", "best", "mean", "first", "random", "aligned", "svd"]
Grouping = Literal["contiguous", "similarity"]
KV_INIT_CHOICES: tuple[str, ...] = typing.get_args(KVInit)
PRESET_NAMES = ("auto", "fast", "best")
MERGE_METHODS = ("aligned", "svd")  # methods that merge whole layers from calibration statistics
POOL_METHODS = ("mean", "first", "random")  # tensor by tensor, no data
MERGE_OPTIONS = ("grouping", "fit", "sequential", "refine_steps", "distill_steps")  # what only a merge can do

# what each named preset sets (the rest stays at the field defaults)
PRESETS: dict[str, dict] = {
    "fast": {"kv_init": "svd", "calibration_samples": 32},
    "best": {
        "kv_init": "svd",
        "refine_steps": 40,
        "refine_lr": 2e-4,
        "distill_steps": 30,
        "distill_lr": 5e-4,
        "distill_generated": 16,
        "calibration_samples": 16,
    },
}
AUTO_CALIBRATED = "best"  # what ``auto`` becomes when it can calibrate


@dataclass
class KVRecipe:
    """How fewer K/V heads are made from more (see the module docstring for the presets).

    Raises:
        ValueError: a bad value or combination; the message names what was passed and what is valid.
    """

    _argument_group_name = "conversion recipe (how fewer K/V heads are made)"  # HfArgumentParser's help group

    kv_init: KVInit = field(
        default="auto",
        metadata={"help": "method or preset: auto (best with calibration text, else mean), fast, best, mean, "
                  "first, random, aligned, svd"},
    )  # fmt: skip
    kv_init_seed: int = field(default=0, metadata={"help": "seed of kv_init random"})
    grouping: Grouping = field(default="contiguous", metadata={"help": "which query heads share a K/V head"})
    fit: bool = field(default=False, metadata={"help": "least-squares re-fit of queries and outputs after merging"})
    sequential: bool = field(
        default=False, metadata={"help": "merge layer by layer on the partly converted model, re-fitting outputs"}
    )
    refine_steps: int = field(
        default=0, metadata={"help": "Adam steps per attention layer towards the source attention's output"}
    )
    refine_lr: float = field(default=1e-4, metadata={"help": "learning rate of refine_steps"})
    distill_steps: int = field(
        default=0,
        metadata={"help": "Adam steps on the attention weights towards the source's next-token output (KL), "
                  "4 calibration blocks a step"},
    )  # fmt: skip
    distill_lr: float = field(default=1e-4, metadata={"help": "learning rate of distill_steps"})
    distill_generated: int = field(
        default=0,
        metadata={"help": "blocks the source writes itself (from the start of a user turn of its chat template), "
                  "distilled on with the calibration blocks"},
    )  # fmt: skip
    calibration_samples: int = field(default=128, metadata={"help": "calibration blocks"})
    calibration_seq_len: int = field(default=256, metadata={"help": "tokens per calibration block"})
    calibration_seed: int = field(default=0, metadata={"help": "seed that draws the calibration blocks"})
    calibration_data_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "calibration text files (default: the training text, or Python's help text)",
            "metavar": "FILE",
        },
    )
    preset: str | None = field(default=None, init=False)  # the preset this recipe came from, if any

    def __post_init__(self):
        self._check_values()
        if self.kv_init in PRESETS:
            self._apply_preset(self.kv_init)
        self._check_combination()

    # -- validation ------------------------------------------------------------------------------------------
    def _check_values(self) -> None:
        def choose(name, value, choices):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not one of {list(choices)}")

        choose("kv_init", self.kv_init, KV_INIT_CHOICES)
        choose("grouping", self.grouping, typing.get_args(Grouping))
        for name in ("fit", "sequential"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        for name, low in (
            ("refine_steps", 0), ("distill_steps", 0), ("distill_generated", 0),
            ("calibration_samples", 1), ("calibration_seq_len", 2),
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be a whole number, {low} or more")
        for name in ("kv_init_seed", "calibration_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be a whole number")
        for name in ("refine_lr", "distill_lr"):
            lr = getattr(self, name)
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
                raise ValueError(f"{name}={lr!r} must be a finite number above 0 (such as 1e-4)")
        files = self.calibration_data_files
        if isinstance(files, str):
            self.calibration_data_files = [files]
        elif files is not None:
            if not isinstance(files, (list, tuple)) or not files or not all(isinstance(f, str) for f in files):
                raise ValueError(f"calibration_data_files={files!r} must be a list of file paths")
            self.calibration_data_files = list(files)

    def _check_combination(self) -> None:
        if self.kv_init in ("first", "random") and self.needs_calibration:
            defaults = KVRecipe.__dataclass_fields__
            given = {k: getattr(self, k) for k in MERGE_OPTIONS if getattr(self, k) != defaults[k].default}
            raise ValueError(
                f"kv_init={self.kv_init!r} takes no merge options, got {given}; use kv_init mean, aligned or svd "
                f"with {', '.join(MERGE_OPTIONS[:-1])} or {MERGE_OPTIONS[-1]}"
            )

    def _apply_preset(self, name: str) -> None:
        defaults = {f.name: f.default for f in fields(self) if f.init}
        for key, value in PRESETS[name].items():
            if key == "kv_init" or getattr(self, key) == defaults[key]:
                setattr(self, key, value)
        self.preset = name

    # -- questions ---------------------------------------------------------------------------------------------
    @property
    def needs_calibration(self) -> bool:
        """Whether removing K/V heads with this recipe reads calibration statistics (``auto`` may: it depends)."""
        return (
            self.kv_init in MERGE_METHODS
            or self.grouping != "contiguous"
            or self.fit
            or self.sequential
            or self.refine_steps > 0
            or self.distill_steps > 0
        )

    def options(self) -> dict:
        """The fields as a dict (what the config's metadata and the model card record)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def describe(self) -> dict:
        """:meth:`options` plus the preset it came from."""
        return {**self.options(), "preset": self.preset}

    def label(self) -> str:
        """A short human name: ``svd + refine_steps=40 (preset best)``."""
        parts = [self.kv_init]
        for name in MERGE_OPTIONS:
            value, default = getattr(self, name), KVRecipe.__dataclass_fields__[name].default
            if value != default:
                parts.append(name if value is True else f"{name}={value}")
            if name in ("refine_steps", "distill_steps") and value:
                lr = name.replace("steps", "lr")
                parts.append(f"{lr}={getattr(self, lr):g}")
            if name == "distill_steps" and value and self.distill_generated:
                parts.append(f"distill_generated={self.distill_generated}")
        if self.needs_calibration:
            parts.append(f"{self.calibration_samples} x {self.calibration_seq_len} calibration tokens")
        text = ", ".join(parts)
        return f"{text} (preset {self.preset})" if self.preset else text

    def resolve(self, can_calibrate: bool) -> KVRecipe:
        """The concrete recipe: ``auto`` becomes ``best`` where calibration is possible, else ``mean`` (logged)."""
        if self.kv_init != "auto":
            return self
        options = {**self.options(), "kv_init": AUTO_CALIBRATED if can_calibrate else "mean"}
        resolved = KVRecipe(**options)
        if not can_calibrate:
            logger.warning(
                "kv_init='auto': no tokenizer or calibration text at hand, so the K/V heads are mean-pooled (the GQA "
                "paper's recipe; measured up to ~1000x the source's perplexity before uptraining on SmolLM2 MQA); "
                "pass a tokenizer or calibration to get kv_init='best'"
            )
        resolved.preset = f"auto -> {resolved.preset or resolved.kv_init}"
        if can_calibrate:
            logger.warning("kv_init='auto': %s (kv_init='mean' for the GQA paper's pooling)", resolved.label())
        return resolved

    def calibrate_kwargs(self) -> dict:
        """The options of :func:`hf_attn_variants.calibrate` this recipe asks for."""
        return {
            "num_samples": self.calibration_samples,
            "seq_len": self.calibration_seq_len,
            "seed": self.calibration_seed,
            "data_files": self.calibration_data_files,
            "generated": self.distill_generated if self.distill_steps else 0,
        }

    def merge_kwargs(self) -> dict:
        return {
            "grouping": self.grouping,
            "fit": self.fit,
            "sequential": self.sequential,
            "refine_steps": self.refine_steps,
            "refine_lr": self.refine_lr,
            "distill_steps": self.distill_steps,
            "distill_lr": self.distill_lr,
        }

    @classmethod
    def build(cls, kv_init: KVRecipe | str | None = None, **options) -> KVRecipe:
        """A recipe from a recipe, a method or preset name, and options (``None`` options are left out).

        Raises:
            ValueError: an unknown option (naming the valid ones), or a bad value.
        """
        options = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(options) - {f.name for f in fields(cls) if f.init})
        if unknown:
            raise ValueError(f"unknown recipe options {unknown}; valid: {[f.name for f in fields(cls) if f.init]}")
        if isinstance(kv_init, KVRecipe):
            return dataclasses.replace(kv_init, **options) if options else kv_init
        if kv_init is not None:
            options["kv_init"] = kv_init
        return cls(**options)


RECIPE_OPTIONS = tuple(f.name for f in fields(KVRecipe) if f.init)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """``--kv-init``, ``--refine-steps`` ... for every field of ``KVRecipe``, with its type, choices and help."""
    from .arguments import add_dataclass_arguments

    add_dataclass_arguments(parser, KVRecipe, title=KVRecipe._argument_group_name)


def recipe_from_args(args: argparse.Namespace) -> KVRecipe:
    """The ``KVRecipe`` of parsed ``add_recipe_arguments`` flags."""
    return KVRecipe(**{name: getattr(args, name) for name in RECIPE_OPTIONS})
