"""The options of each subcommand, one dataclass each: the command line's parsers are built from them.

``hf-attn-variants convert`` is ``ConvertOptions`` plus the ``KVRecipe`` flags, ``export`` is ``ExportOptions``,
``kv-cache`` is ``KvCacheOptions``,
``tradeoff`` is ``TradeoffConfig`` (also the trade-off table's Python API) plus the recipe, and ``train`` is
``TrainingOptions`` with transformers' ``TrainingArguments`` (in ``training.py``, through ``HfArgumentParser``).
Every flag answers to ``--some-name`` and ``--some_name`` (``arguments.ArgumentParser``).
Standard library only, so ``--help`` answers before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .choices import CACHE_DTYPES, DTYPES, ENGINES, EXPORT_ENGINES
from .recipe import KVRecipe


def option(default=None, help: str | None = None, **metadata):  # noqa: A002 - the argparse word
    """A dataclass field with its command-line ``help`` (and ``choices``, ``aliases``, ``metavar``, ...)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


SOURCE_HELP = "a local folder, a Hub id, or smollm2 (SmolLM2-135M-Instruct, from its registry package)"


@dataclass
class ConvertOptions:
    """``hf-attn-variants convert SRC OUT --variant V``: a checkpoint in another attention layout, on disk."""

    src: str = option(help=SOURCE_HELP, positional=True, metavar="SRC")
    out: str = option(help="the folder to write (refused if it exists, unless --overwrite)", positional=True,
                      metavar="OUT")  # fmt: skip
    variant: Literal["mha", "gqa", "mqa"] | None = option(
        help="the attention layout to write", required=True, aliases=("--attn-variant",)
    )
    num_kv_heads: int | None = option(help="K/V heads (required for gqa)", aliases=("--num-key-value-heads",))
    gguf_file: str | None = option(help="the GGUF file inside SRC")
    dtype: str = option("auto", help="of the saved weights; auto: the source's own", choices=DTYPES)
    overwrite: bool = option(False, help="replace OUT if it exists")


@dataclass
class ExportOptions:
    """``hf-attn-variants export SRC OUT``: a saved variant (any family) as an inference engine's model."""

    src: str = option(help="a saved variant (the OUT of convert or train), or any checkpoint the engine knows",
                      positional=True, metavar="SRC")  # fmt: skip
    out: str = option(help="the engine's model folder to write (refused if it exists, unless --overwrite)",
                      positional=True, metavar="OUT")  # fmt: skip
    engine: str = option("ctranslate2", help="the inference engine: ctranslate2 writes its model folder, llama.cpp "
                         "OUT/model.gguf", choices=EXPORT_ENGINES)  # fmt: skip
    quantization: str | None = option(help="the engine's weight type, e.g. int8, int8_float32, float16 (ctranslate2); "
                                      "f32, f16, bf16, q8_0 (llama.cpp) (default: the checkpoint's)")  # fmt: skip
    overwrite: bool = option(False, help="replace OUT if it exists")


@dataclass
class KvCacheOptions:
    """``hf-attn-variants kv-cache SRC``: KV-cache memory per variant, from the config alone."""

    src: str = option(help=SOURCE_HELP, positional=True, metavar="SRC")
    variants: str = option("mha,mqa", help="comma-separated: mha, gqa:G, mqa")
    seq_len: int = option(4096, help="tokens per sequence")
    batch: int = option(1, help="sequences")
    dtype: str = option("bfloat16", help="of the cache", choices=CACHE_DTYPES)
    gguf_file: str | None = option(help="the GGUF file inside SRC")
    json: bool = option(False, help="print JSON instead of a table")
    budget: str | None = option(help="memory for the cache, e.g. 8GiB: the largest batch per variant")
    allocate: bool = option(False, help="with --budget: really allocate that batch's cache (on the CPU)")


@dataclass
class TradeoffConfig:
    """Everything one trade-off run depends on (recorded in its JSON); ``recipe`` makes the variants."""

    src: str = option("smollm2", help="the source model (default: smollm2)", positional=True, metavar="SRC")
    out: str = option("out/tradeoff", help="output folder")
    variants: str | None = option(help="e.g. mha,gqa:3,mqa (MHA is always measured: the baseline); default: MHA, "
                                  "the source's own GQA, a middle GQA, MQA")  # fmt: skip
    gguf_file: str | None = option(help="the GGUF file inside SRC")
    recipe: KVRecipe = field(default_factory=KVRecipe, metadata={"cli": False})  # the recipe's own flags
    dtype: str = option("float32", help="of the weights measured", choices=DTYPES)
    uptrain_steps: int = option(0, help="uptrain every variant this many steps")
    learning_rate: float = option(3e-4, help="of the uptraining")
    train_batch_size: int = option(2, help="blocks per uptraining step")
    distill: bool = option(False, help="uptrain by distillation from the source")
    dataset: str | None = option(help="datasets hub id (default: pydoc_data.topics prose)")
    dataset_config: str | None = option(help="the dataset's configuration")
    dataset_split: str = option("train", help="the dataset's split")
    data_files: list[str] = option([], help="local .txt/.jsonl/.json/.parquet files", metavar="FILE")
    text_column: str = option("text", help="the column holding the text")
    block_size: int = option(256, help="tokens per training and evaluation window")
    eval_blocks: int = option(16, help="held-out blocks scored")
    eval_stride: int | None = option(help="window stride for the metrics (default: block size)")
    batch: int = option(8, help="decode latency: sequences")
    context: int = option(2048, help="decode latency: cached tokens")
    prefill_tokens: int = option(256, help="prefill latency: prompt tokens")
    memory_context: int = option(8192, help="context of the KV-memory column")
    rounds: int = option(15, help="interleaved timing rounds")
    engine: str | None = option(help="also time prefill and decode in this inference engine (each variant exported "
                                "to it), next to transformers'", choices=ENGINES)  # fmt: skip
    lm_eval_tasks: list[str] = option([], help="lm-evaluation-harness tasks", metavar="TASK")
    lm_eval_limit: int | None = option(help="examples per lm-eval task")
    save_checkpoints: bool = option(False, help="save every variant's weights too")
    overwrite: bool = option(False, help="replace --out if it exists")
    seed: int = option(0, help="of the uptraining and the data split")
    prompt: str = option("What is the capital of France?", help="answered greedily by every variant (a chat turn "
                         "where the tokenizer has a template)")  # fmt: skip
