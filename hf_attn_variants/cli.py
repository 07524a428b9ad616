"""The ``hf-attn-variants`` command line.

    hf-attn-variants convert SRC OUT --variant gqa --num-kv-heads 4 [--kv-init mean|first|random] [--gguf-file F]
    hf-attn-variants kv-cache SRC --variants mha,gqa:4,mqa --seq-len 4096 --batch 8 [--dtype bfloat16] [--json]
    hf-attn-variants train --attn_variant mqa --output_dir OUT [...]   (the options of scripts/finetune.py)

SRC is a local folder, a hub id, or ``smollm2`` (SmolLM2-135M-Instruct from its registry package).
Bad input exits with status 2 and a message naming the bad value and the valid choices.
"""

from __future__ import annotations

import argparse
import json
import sys

from .checkpoint import DTYPES, convert_checkpoint
from .heads import KV_INIT_METHODS
from .kv_cache import CACHE_DTYPES
from .variants import ATTN_VARIANTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-attn-variants", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a checkpoint to MHA, GQA or MQA")
    convert.add_argument("src", metavar="SRC")
    convert.add_argument("out", metavar="OUT")
    convert.add_argument("--variant", choices=ATTN_VARIANTS, required=True)
    convert.add_argument("--num-kv-heads", type=int, help="K/V heads (required for gqa)")
    convert.add_argument("--kv-init", choices=KV_INIT_METHODS, default="mean")
    convert.add_argument("--seed", type=int, default=0, help="seed of --kv-init random")
    convert.add_argument("--gguf-file", help="the GGUF file inside SRC")
    convert.add_argument("--dtype", choices=DTYPES, default="auto")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    plan = commands.add_parser("kv-cache", help="KV-cache memory per variant, from the config alone")
    plan.add_argument("src", metavar="SRC")
    plan.add_argument("--variants", default="mha,mqa", help="comma-separated: mha, gqa:G, mqa")
    plan.add_argument("--seq-len", type=int, default=4096)
    plan.add_argument("--batch", type=int, default=1)
    plan.add_argument("--dtype", choices=CACHE_DTYPES, default="bfloat16")
    plan.add_argument("--gguf-file", help="the GGUF file inside SRC")
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")

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
        return {"convert": _convert, "kv-cache": _kv_cache, "train": _train}[args.command](args)
    except (ValueError, OSError) as err:  # FileExistsError and missing files are OSErrors
        print(f"hf-attn-variants {args.command}: error: {err}", file=sys.stderr)
        return 2


def _convert(args) -> int:
    out = convert_checkpoint(
        args.src,
        args.out,
        args.variant,
        args.num_kv_heads,
        kv_init=args.kv_init,
        seed=args.seed,
        gguf_file=args.gguf_file,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def _train(args) -> int:
    from .training import parser, run

    parsed = parser()
    parsed.prog = "hf-attn-variants train"
    run(*parsed.parse_args_into_dataclasses(args=args.options))
    return 0


def _kv_cache(args) -> int:
    from transformers import AutoConfig

    from .default_model import resolve_source
    from .kv_cache import kv_cache_plan
    from .variants import parse_variant_list

    variants = parse_variant_list(args.variants)
    src, gguf_file = resolve_source(args.src, args.gguf_file)
    config = AutoConfig.from_pretrained(src, **({"gguf_file": gguf_file} if gguf_file else {}))
    rows = kv_cache_plan(config, variants, args.seq_len, args.batch, args.dtype)
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
    print(f"{'variant':<10} {'K/V heads':>9} {'per token':>12} {'total':>12} {'vs MHA':>7}")
    for row in rows:
        mark = "  (source)" if row["source"] else ""
        print(
            f"{row['variant']:<10} {row['num_key_value_heads']:>9} {_size(row['bytes_per_token']):>12} "
            f"{_size(row['total_bytes']):>12} {row['fraction_of_mha']:>7.3f}{mark}"
        )
    return 0


def _size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while n >= 1024 and power < len(units) - 1:
        n, power = n / 1024, power + 1
    return f"{n:.0f} B" if power == 0 else f"{n:.2f} {units[power]}"


if __name__ == "__main__":
    sys.exit(main())
