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

from .arguments import SPELLINGS, ArgumentParser, add_dataclass_arguments, options_from_args
from .io import Stopped, signals_as_exceptions
from .options import ConvertOptions, ExportOptions, KvCacheOptions, TradeoffConfig
from .recipe import add_recipe_arguments, recipe_from_args

DESCRIPTION = "Run, convert, fine-tune and evaluate decoder LLMs in MHA, GQA or MQA attention."
EXAMPLES = """\
SRC is a local folder, a Hub id, or smollm2 (SmolLM2-135M-Instruct, from its registry package).

examples:
  hf-attn-variants convert smollm2 out/smollm2-mqa --variant mqa
  hf-attn-variants convert ./my-llama out/my-llama-gqa4 --variant gqa --num-kv-heads 4 --kv-init fast
  hf-attn-variants export out/smollm2-mqa out/smollm2-mqa-ct2 --engine ctranslate2
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


SUBCOMMAND = {"epilog": SPELLINGS}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="hf-attn-variants",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a checkpoint to MHA, GQA or MQA", **SUBCOMMAND)
    add_dataclass_arguments(convert, ConvertOptions)
    add_recipe_arguments(convert)
    export = commands.add_parser("export", help="a saved variant as an inference engine's model", **SUBCOMMAND)
    add_dataclass_arguments(export, ExportOptions)
    plan = commands.add_parser("kv-cache", help="KV-cache memory per variant, from the config alone", **SUBCOMMAND)
    add_dataclass_arguments(plan, KvCacheOptions)
    trade = commands.add_parser(
        "tradeoff", help="the trade-off table: latency, memory and quality per variant", **SUBCOMMAND
    )
    add_dataclass_arguments(trade, TradeoffConfig)
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
        commands = {
            "convert": _convert,
            "export": _export,
            "kv-cache": _kv_cache,
            "train": _train,
            "tradeoff": _tradeoff,
        }
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

    opts = options_from_args(ConvertOptions, args)
    out = convert_checkpoint(
        opts.src,
        opts.out,
        opts.variant,
        opts.num_kv_heads,
        recipe_from_args(args),
        gguf_file=opts.gguf_file,
        dtype=opts.dtype,
        overwrite=opts.overwrite,
    )
    config = json.loads((Path(out) / "config.json").read_text())
    recorded, dtype = config.get("attn_variant_recipe", {}), config.get("dtype") or config.get("torch_dtype")
    print(f"wrote {out} (K/V heads: {_recipe_words(recorded)}; weights {dtype})")
    return 0


def _export(args) -> int:
    opts = options_from_args(ExportOptions, args)
    if opts.engine == "llama.cpp":
        from .llama_cpp_support import convert_to_gguf, serving_note

        out = convert_to_gguf(opts.src, opts.out, opts.quantization, opts.overwrite)
        served = f"llama.cpp GGUF; serve it with llama_cpp.Llama({out!r}) or llama-server -m {out}"
    else:
        try:
            from .ctranslate2_support import convert_to_ctranslate2, serving_note
        except ImportError as err:
            raise ValueError(f"--engine {opts.engine} needs its package: pip install ctranslate2 ({err})") from None
        out = convert_to_ctranslate2(opts.src, opts.out, opts.quantization, opts.overwrite)
        served = f"CTranslate2; serve it with ctranslate2.Generator({str(out)!r})"
    note = serving_note(opts.src)  # how the engine runs this family otherwise than transformers, if it does
    if note:
        print(f"hf-attn-variants export: note: {note}", file=sys.stderr)
    print(f"wrote {out} ({served})")
    return 0


def _recipe_words(recorded: dict) -> str:
    from types import SimpleNamespace

    from .model_card import recipe_text

    if recorded.get("kv_init") == "exact duplication":
        return "exact copies, no recipe needed"
    return recipe_text(SimpleNamespace(attn_variant_recipe=recorded))


def _tradeoff(args) -> int:
    from .tradeoff import FILES, run_tradeoff

    cfg = options_from_args(TradeoffConfig, args, recipe=recipe_from_args(args))
    run_tradeoff(cfg)
    print((Path(cfg.out) / "tradeoff.md").read_text())
    print(f"wrote {', '.join(str(Path(cfg.out) / f) for f in FILES)} and a model card per variant")
    return 0


def _train(args) -> int:
    from .training import parse_arguments, run

    run(*parse_arguments(args.options, prog="hf-attn-variants train"))
    return 0


def _kv_cache(args) -> int:
    args = options_from_args(KvCacheOptions, args)
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
