"""The ``hf-attn-variants`` command line: convert, kv-cache, train and tradeoff.

Bad input exits with status 2 and one line naming the bad value and the valid choices. The parser is built
from standard-library modules only (torch and transformers are imported by the subcommand that runs), so
``--help``, ``--version`` and a mistyped command answer at once when started through the console script
(``hf_attn_variants_cli``, which parses before the package's ``__init__`` imports transformers).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

from .choices import ATTN_VARIANTS, CACHE_DTYPES, DTYPES
from .io import Stopped, signals_as_exceptions
from .recipe import add_recipe_arguments, recipe_from_args

DESCRIPTION = "Run, convert, fine-tune and evaluate decoder LLMs in MHA, GQA or MQA attention."
EXAMPLES = """\
SRC is a local folder, a Hub id, or smollm2 (SmolLM2-135M-Instruct, from its registry package).

examples:
  hf-attn-variants convert smollm2 out/smollm2-mqa --variant mqa
  hf-attn-variants convert ./my-llama out/my-llama-gqa4 --variant gqa --num-kv-heads 4 --kv-init fast
  hf-attn-variants kv-cache smollm2 --variants mha,gqa:3,mqa --seq-len 8192 --batch 8
  hf-attn-variants train --attn_variant mqa --output_dir out/mqa-uptrained --max_steps 200
  hf-attn-variants tradeoff smollm2 --variants mha,gqa:3,mqa --uptrain-steps 30 --distill

'hf-attn-variants COMMAND --help' lists a command's options; docs/cli.md has them all.
"""


def version() -> str:
    try:
        return metadata.version("hf_attn_variants")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-attn-variants",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a checkpoint to MHA, GQA or MQA")
    convert.add_argument("src", metavar="SRC")
    convert.add_argument("out", metavar="OUT")
    convert.add_argument("--variant", "--attn-variant", dest="variant", choices=ATTN_VARIANTS, required=True)
    convert.add_argument(
        "--num-kv-heads", "--num-key-value-heads", dest="num_kv_heads", type=int, help="K/V heads (required for gqa)"
    )
    convert.add_argument("--gguf-file", help="the GGUF file inside SRC")
    convert.add_argument("--dtype", choices=DTYPES, default="auto")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_recipe_arguments(convert)

    plan = commands.add_parser("kv-cache", help="KV-cache memory per variant, from the config alone")
    plan.add_argument("src", metavar="SRC")
    plan.add_argument("--variants", default="mha,mqa", help="comma-separated: mha, gqa:G, mqa")
    plan.add_argument("--seq-len", type=int, default=4096)
    plan.add_argument("--batch", type=int, default=1)
    plan.add_argument("--dtype", choices=CACHE_DTYPES, default="bfloat16")
    plan.add_argument("--gguf-file", help="the GGUF file inside SRC")
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plan.add_argument("--budget", help="memory for the cache, e.g. 8GiB: the largest batch per variant")
    plan.add_argument(
        "--allocate", action="store_true", help="with --budget: really allocate that batch's cache (on the CPU)"
    )

    trade = commands.add_parser("tradeoff", help="the trade-off table: latency, memory and quality per variant")
    trade.add_argument("src", metavar="SRC", nargs="?", default="smollm2", help="default: smollm2")
    trade.add_argument("--out", default="out/tradeoff", help="output folder (default out/tradeoff)")
    trade.add_argument("--variants", help="e.g. mha,gqa:3,mqa (MHA is always measured: the baseline)")
    trade.add_argument("--gguf-file", help="the GGUF file inside SRC")
    trade.add_argument("--dtype", choices=DTYPES, default="float32")
    trade.add_argument("--uptrain-steps", type=int, default=0, help="uptrain every variant this many steps")
    trade.add_argument("--learning-rate", type=float, default=3e-4)
    trade.add_argument("--train-batch-size", type=int, default=2)
    trade.add_argument("--distill", action="store_true", help="uptrain by distillation from the source")
    trade.add_argument("--dataset", help="datasets hub id (default: pydoc_data.topics prose)")
    trade.add_argument("--dataset-config")
    trade.add_argument("--dataset-split", default="train")
    trade.add_argument("--data-files", nargs="+", default=[], help="local .txt/.jsonl/.json/.parquet files")
    trade.add_argument("--text-column", default="text")
    trade.add_argument("--block-size", type=int, default=256, help="tokens per training and evaluation window")
    trade.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks scored")
    trade.add_argument("--eval-stride", type=int, help="window stride for the metrics (default: block size)")
    trade.add_argument("--batch", type=int, default=8, help="decode latency: sequences")
    trade.add_argument("--context", type=int, default=2048, help="decode latency: cached tokens")
    trade.add_argument("--prefill-tokens", type=int, default=256, help="prefill latency: prompt tokens")
    trade.add_argument("--memory-context", type=int, default=8192, help="context of the KV-memory column")
    trade.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    trade.add_argument("--lm-eval-tasks", nargs="+", default=[], help="lm-evaluation-harness tasks")
    trade.add_argument("--lm-eval-limit", type=int, help="examples per lm-eval task")
    trade.add_argument("--save-checkpoints", action="store_true", help="save every variant's weights too")
    trade.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    trade.add_argument("--seed", type=int, default=0)
    add_recipe_arguments(trade)

    train = commands.add_parser(
        "train", add_help=False, help="uptrain or fine-tune a variant (train --help lists the options)"
    )
    train.add_argument("options", nargs=argparse.REMAINDER)  # main() hands them to the training parser
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = argparse.Namespace(command="train", options=argv[1:]) if argv[:1] == ["train"] else parser.parse_args(argv)
    try:
        commands = {"convert": _convert, "kv-cache": _kv_cache, "train": _train, "tradeoff": _tradeoff}
        with signals_as_exceptions():  # SIGINT/SIGTERM/SIGHUP unwind like an error: temporary output removed
            return commands[args.command](args)
    except Stopped as stop:  # one line, no traceback; the shell's status of a process the signal ended
        print(f"hf-attn-variants {args.command}: {stop}", file=sys.stderr)
        return stop.exit_status
    except (ValueError, OSError) as err:  # FileExistsError and missing files are OSErrors
        message = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the message held
        print(f"hf-attn-variants {args.command}: error: {message}", file=sys.stderr)
        return 2


def _convert(args) -> int:
    from .checkpoint import convert_checkpoint

    out = convert_checkpoint(
        args.src,
        args.out,
        args.variant,
        args.num_kv_heads,
        recipe_from_args(args),
        gguf_file=args.gguf_file,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    config = json.loads((Path(out) / "config.json").read_text())
    recorded, dtype = config.get("attn_variant_recipe", {}), config.get("dtype") or config.get("torch_dtype")
    print(f"wrote {out} (K/V heads: {_recipe_words(recorded)}; weights {dtype})")
    return 0


def _recipe_words(recorded: dict) -> str:
    from types import SimpleNamespace

    from .model_card import recipe_text

    if recorded.get("kv_init") == "exact duplication":
        return "exact copies, no recipe needed"
    return recipe_text(SimpleNamespace(attn_variant_recipe=recorded))


def _tradeoff(args) -> int:
    from .recipe import RECIPE_OPTIONS
    from .tradeoff import FILES, TradeoffConfig, run_tradeoff

    options = {k: v for k, v in vars(args).items() if k != "command" and k not in RECIPE_OPTIONS}
    run_tradeoff(TradeoffConfig(**options, recipe=recipe_from_args(args)))
    print((Path(args.out) / "tradeoff.md").read_text())
    print(f"wrote {', '.join(str(Path(args.out) / f) for f in FILES)} and a model card per variant")
    return 0


def _train(args) -> int:
    from .training import parse_arguments, run

    run(*parse_arguments(args.options, prog="hf-attn-variants train"))
    return 0


def _kv_cache(args) -> int:
    from .default_model import resolve_source
    from .kv_cache import format_bytes, kv_cache_plan, largest_batch, parse_size
    from .sources import load_config
    from .variants import parse_variant_list

    variants = parse_variant_list(args.variants)
    if args.allocate and not args.budget:
        raise ValueError("--allocate needs --budget: it allocates the largest batch whose cache fits the budget")
    budget = parse_size(args.budget) if args.budget else None
    src, gguf_file = resolve_source(args.src, args.gguf_file)
    config = load_config(src, gguf_file)
    rows = kv_cache_plan(config, variants, args.seq_len, args.batch, args.dtype)
    if budget is not None:
        device = "cpu" if args.allocate else "meta"
        for row in rows:
            try:
                fit = largest_batch(config, row["num_key_value_heads"], args.seq_len, budget, args.dtype, device)
            except ValueError as err:
                raise ValueError(f"--budget {args.budget}{' --allocate' if args.allocate else ''}: {err}") from err
            row["budget"] = {"bytes": budget, "allocated_on": device, **fit}
    if args.json:
        print(
            json.dumps(
                {
                    "source": args.src,
                    "seq_len": args.seq_len,
                    "batch": args.batch,
                    "dtype": args.dtype,
                    "variants": rows,
                },
                indent=2,
            )
        )
        return 0
    print(f"KV cache of {args.src}: {args.seq_len} tokens x batch {args.batch}, {args.dtype}")
    budget_header = f" {'max batch':>9} {'its cache':>12}" if args.budget else ""
    print(f"{'variant':<10} {'K/V heads':>9} {'per token':>12} {'total':>12} {'vs MHA':>7}{budget_header}")
    for row in rows:
        mark = "  (source)" if row["source"] else ""
        fit = row.get("budget")
        budget_cells = f" {fit['max_batch']:>9} {format_bytes(fit['allocated_bytes']):>12}" if fit else ""
        print(
            f"{row['variant']:<10} {row['num_key_value_heads']:>9} {format_bytes(row['bytes_per_token']):>12} "
            f"{format_bytes(row['total_bytes']):>12} {row['fraction_of_mha']:>7.3f}{budget_cells}{mark}"
        )
    if args.budget:
        how = "allocated on the CPU" if args.allocate else "transformers' StaticCache built on the meta device"
        print(f"max batch: the most sequences of {args.seq_len} tokens whose cache fits {args.budget} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
