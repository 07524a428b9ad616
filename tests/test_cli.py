"""The command line: outputs, and bad input refused with status 2 and nothing written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import typing
import zlib
from pathlib import Path
from typing import Literal

import pytest
import torch
import transformers

import hf_attn_variants as hav
from hf_attn_variants import cli
from hf_attn_variants.arguments import options_from_args
from hf_attn_variants.heads import kv_cache_bytes_per_token
from hf_attn_variants.options import ConvertOptions, KvCacheOptions, TradeoffConfig
from hf_attn_variants.recipe import KVRecipe, recipe_from_args

from .conftest import tiny_model


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def src(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "src")
    return tmp_path / "src"


def run(*argv) -> int:
    """The exit status of the command line, whether it returns it or argparse exits with it."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exit_info:
        return exit_info.code


def test_convert_writes_a_checkpoint_that_plain_transformers_loads(src, tmp_path):
    assert run("convert", src, tmp_path / "out", "--variant", "gqa", "--num-kv-heads", "2") == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_key_value_heads == 2
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_convert_writes_a_model_card(tmp_path):
    from huggingface_hub import ModelCard

    tiny_model("gpt2").save_pretrained(tmp_path / "gpt2")
    assert run("convert", tmp_path / "gpt2", tmp_path / "out", "--variant", "gqa", "--num-kv-heads", "2") == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert {"hf_attn_variants", "gqa", "gpt2"} <= set(card.data.tags) and card.data.library_name == "transformers"
    assert "| K/V heads | 8 | 2 |" in card.text and "import hf_attn_variants" in card.text
    assert "mean pooling" in card.text and "quality drops until the model is uptrained" in card.text


def test_convert_dtype_and_kv_init(src, tmp_path):
    assert (
        run(
            "convert",
            src,
            tmp_path / "out",
            "--variant",
            "mqa",
            "--kv-init",
            "random",
            "--kv-init-seed",
            "1",
            "--dtype",
            "bfloat16",
        )
        == 0
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.bfloat16 and model.config.num_key_value_heads == 1
    recorded = model.config.attn_variant_recipe
    assert (recorded["kv_init"], recorded["kv_init_seed"], recorded["preset"]) == ("random", 1, None)
    # random was applied: fresh K/V weights, neither the mean nor the first head of the source
    source = transformers.AutoModelForCausalLM.from_pretrained(src)
    key = "model.layers.0.self_attn.k_proj.weight"
    for kv_init in ("mean", "first"):
        pooled = hav.convert(source, "mqa", kv_init=kv_init).to(torch.bfloat16)
        assert not torch.equal(model.state_dict()[key], pooled.state_dict()[key]), kv_init
    # drawn with seed 1 in float32, then cast: the Python API's result in bfloat16, bit for bit
    drawn = hav.convert(source, "mqa", kv_init="random", seed=1).to(torch.bfloat16)
    assert torch.equal(model.state_dict()[key], drawn.state_dict()[key])


def test_kv_init_random_typed_at_the_console_is_applied(src, tmp_path):
    """``hf-attn-variants convert SRC OUT --variant mqa --kv-init random`` as a user types it: each K/V weight is
    drawn afresh, ``randn`` from the default seed 0 plus the CRC-32 of its key, scaled by the source rows' standard
    deviation (``families/base.py`` ``_regroup``, ``heads.py`` ``regroup_kv_heads``), and the config says so."""
    exe = Path(sys.executable).parent / "hf-attn-variants"
    out = tmp_path / "out"
    done = subprocess.run(
        [str(exe), "convert", str(src), str(out), "--variant", "mqa", "--kv-init", "random"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"wrote {out} (K/V heads: random; weights float32)\n"
    recipe = json.loads((out / "config.json").read_text())["attn_variant_recipe"]
    assert recipe == {"kv_init": "random", "kv_init_seed": 0, "preset": None, "grouping": "contiguous",
                      "fit": False, "sequential": False, "refine_steps": 0, "refine_lr": 0.0001, "distill_steps": 0,
                      "distill_lr": 0.0001, "distill_generated": 0}  # fmt: skip
    converted = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    source = transformers.AutoModelForCausalLM.from_pretrained(src)
    mean = hav.convert(source, "mqa", kv_init="mean").state_dict()
    in_memory = hav.convert(source, "mqa", kv_init="random").state_dict()  # the Python API, the same default seed
    kv_keys = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "kv"]
    for key in kv_keys:
        rows = source.state_dict()[key]  # (4 K/V heads * head_dim 8, hidden 64)
        generator = torch.Generator().manual_seed(0 + zlib.crc32(key.encode()))
        expected = torch.randn((1 * 8, 64), generator=generator) * rows.std()
        assert torch.equal(converted[key], expected), key
        assert torch.equal(converted[key], in_memory[key]), key
        assert not torch.allclose(converted[key], mean[key]), key
    assert len({converted[key].flatten()[0].item() for key in kv_keys}) == 4  # one draw per key, not one per model
    for key, tensor in converted.items():  # every other weight is the source's, bit for bit
        if key not in kv_keys:
            assert torch.equal(tensor, source.state_dict()[key]), key


def test_kv_cache_table_and_json(src, capsys):
    assert (
        run(
            "kv-cache",
            src,
            "--variants",
            "mha,gqa:4,gqa:2,mqa",
            "--seq-len",
            "1000",
            "--batch",
            "3",
            "--dtype",
            "float16",
            "--json",
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    per_token = [row["bytes_per_token"] for row in report["variants"]]
    assert per_token == [kv_cache_bytes_per_token(2, g, 8, 2) for g in (8, 4, 2, 1)]
    assert [row["total_bytes"] for row in report["variants"]] == [b * 3000 for b in per_token]
    assert [row["source"] for row in report["variants"]] == [False, True, False, False]
    assert run("kv-cache", src, "--variants", "mha,mqa") == 0
    table = capsys.readouterr().out
    # 2 layers x (k, v) x heads x head_dim 8 x 2 bytes (the default bfloat16) a token, at 4096 tokens x batch 1
    assert table.splitlines() == [
        f"KV cache of {src}: 4096 tokens x batch 1, bfloat16",
        "variant    K/V heads    per token        total  vs MHA",
        "MHA-8              8        512 B     2.00 MiB   1.000",
        "MQA                1         64 B   256.00 KiB   0.125",
    ]


def test_console_script_is_installed(src):
    exe = Path(sys.executable).parent / "hf-attn-variants"
    result = subprocess.run([str(exe), "kv-cache", str(src), "--variants", "mqa"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "MQA                1         64 B   256.00 KiB   0.125"


# runs the installed console script in a fresh process and prints its exit status and what it imported
_IMPORTED = (
    "import runpy, sys\n"
    "sys.argv = ['hf-attn-variants', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_path({exe!r}, run_name='__main__')\n"
    "except SystemExit as done:\n"
    "    print('EXIT', done.code, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
)


@pytest.mark.parametrize(
    "argv, status, shown",
    [
        (["--help"], 0, "hf-attn-variants convert smollm2 out/smollm2-mqa --variant mqa"),
        (["--version"], 0, f"hf-attn-variants {hav.__version__}"),
        (["convert", "--help"], 0, "--kv-init"),
        (["convert", "only-src"], 2, "the following arguments are required: OUT, --variant/--attn-variant"),
        (["bogus"], 2, "invalid choice: 'bogus'"),
    ],
)
def test_help_version_and_bad_usage_answer_without_importing_torch(argv, status, shown):
    """``--help``, ``--version`` and usage errors are parsed before the package imports torch and transformers."""
    exe = Path(sys.executable).parent / "hf-attn-variants"
    code = _IMPORTED.format(exe=str(exe))
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == f"EXIT {status} False False", result.stdout + result.stderr
    assert shown in result.stdout + result.stderr
    assert "``" not in result.stdout  # no reStructuredText markup in what the user reads


def test_help_shows_examples_and_plain_words():
    help_text = cli.build_parser().format_help()
    assert help_text.split("\n\n")[1] == cli.DESCRIPTION  # the paragraph after the usage, however wide the terminal
    assert "examples:" in help_text and "docs/cli.md" in help_text


def test_train_help_lists_the_project_options_before_trainers():
    from hf_attn_variants.training import TRAINING_ARGUMENTS_DOCS, parser

    help_text = parser().format_help()
    groups = [line for line in help_text.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert groups == [
        "model and variant:",
        "conversion recipe (how fewer K/V heads are made):",
        "training and evaluation text:",
        "uptraining:",
        "Trainer's options (transformers.TrainingArguments):",
    ]
    assert TRAINING_ARGUMENTS_DOCS in help_text.splitlines()[-2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--variant", "mla"],
            "argument --variant/--attn-variant: invalid choice: 'mla' (choose from 'mha', 'gqa', 'mqa')",
        ),
        (["--variant", "gqa"], "attn_variant='gqa' needs num_key_value_heads; valid choices for 8 query heads: [2, 4]"),
        (
            ["--variant", "gqa", "--num-kv-heads", "3"],
            "num_key_value_heads=3 does not divide num_attention_heads=8; valid choices for attn_variant='gqa': [2, 4]",
        ),
        (
            ["--variant", "gqa", "--num-kv-heads", "9"],
            "num_key_value_heads=9 is not between 1 and num_attention_heads=8; valid choices for attn_variant='gqa': "
            "[2, 4]",
        ),
        (
            ["--variant", "mqa", "--kv-init", "median"],
            "argument --kv-init: invalid choice: 'median' (choose from 'auto', 'fast', 'best', 'mean', 'first', "
            "'random', 'aligned', 'svd')",
        ),
        (
            ["--variant", "mqa", "--dtype", "int8"],
            "argument --dtype: invalid choice: 'int8' (choose from 'auto', 'float32', 'bfloat16', 'float16')",
        ),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(src, tmp_path, capsys, argv, message):
    before = digest(src)
    assert run("convert", src, tmp_path / "out", *argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"hf-attn-variants convert: error: {message}"
    assert not (tmp_path / "out").exists() and digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_unsupported_family_exits_2(tmp_path, capsys):
    bert = transformers.BertModel(
        transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    bert.save_pretrained(tmp_path / "bert")
    assert run("convert", tmp_path / "bert", tmp_path / "out", "--variant", "mqa") == 2
    assert "model_type 'bert' is not supported by hf_attn_variants; supported: [" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_out_is_refused_unless_overwrite(src, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("work")
    assert run("convert", src, out, "--variant", "mqa") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hf-attn-variants convert: error: OUT '{out}' exists; pass --overwrite (overwrite=True) to replace it"
    )
    assert (out / "precious.txt").read_text() == "work"
    assert run("convert", src, out, "--variant", "mqa", "--overwrite") == 2  # not a model folder: never replaced
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hf-attn-variants convert: error: OUT '{out}' does not look like a model folder (it holds 'precious.txt', "
        "which a conversion does not write); --overwrite only replaces a folder of config, tokenizer, *.safetensors "
        "and README.md files: remove it yourself or choose another OUT"
    )
    assert (out / "precious.txt").read_text() == "work"
    (out / "precious.txt").unlink()
    (out / "config.json").write_text("{}")  # a model folder (tests/test_output_safety.py has the rule's cases)
    assert run("convert", src, out, "--variant", "mqa", "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 1


@pytest.mark.parametrize("where", ["same", "inside"])
def test_out_equal_to_or_inside_src_is_refused(src, capsys, where):
    before = digest(src)
    out = src if where == "same" else src / "converted"
    assert run("convert", src, out, "--variant", "mqa", "--overwrite") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hf-attn-variants convert: error: OUT '{out}' is or lies inside the source '{src}'; choose another folder"
    )
    assert digest(src) == before


def test_missing_source_exits_2(tmp_path, capsys):
    assert run("convert", tmp_path / "nowhere", tmp_path / "out", "--variant", "mqa") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hf-attn-variants convert: error: '{tmp_path / 'nowhere'}' does not exist: no such folder (a source is a "
        "model folder, a hub id such as 'org/name', or 'smollm2')"
    )
    assert not (tmp_path / "out").exists()


def test_pickled_checkpoint_is_refused(src, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    state = transformers.AutoModelForCausalLM.from_pretrained(src).state_dict()
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    assert run("convert", pickled, tmp_path / "out", "--variant", "mqa") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hf-attn-variants convert: error: '{pickled}' holds only pickled weights ['pytorch_model.bin'], which can "
        "run code when loaded; they are refused: save the model with safetensors "
        "(model.save_pretrained(..., safe_serialization=True))"
    )
    assert not (tmp_path / "out").exists()


def test_interrupted_conversion_leaves_no_out_and_a_rerun_succeeds(src, tmp_path, monkeypatch):
    from hf_attn_variants import streaming

    original = streaming.write_shard

    def crash(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt("killed mid-way")

    monkeypatch.setattr(streaming, "write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        run("convert", src, tmp_path / "out", "--variant", "mqa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    monkeypatch.setattr(streaming, "write_shard", original)
    assert run("convert", src, tmp_path / "out", "--variant", "mqa") == 0


@pytest.mark.parametrize("allocate", [False, True])
def test_kv_cache_largest_batch_for_a_budget(src, capsys, allocate):
    """Largest batch per variant whose cache fits the budget, checked against transformers' own StaticCache."""
    seq_len, budget = 64, 100_000
    argv = ["kv-cache", src, "--variants", "mha,gqa:2,mqa", "--seq-len", seq_len, "--budget", "100KB", "--json"]
    assert run(*argv, *(["--allocate"] if allocate else [])) == 0
    rows = json.loads(capsys.readouterr().out)["variants"]
    for row in rows:
        fit = row["budget"]
        per_sequence = kv_cache_bytes_per_token(2, row["num_key_value_heads"], 8, 2) * seq_len  # 2 layers, bf16
        assert fit["max_batch"] == budget // per_sequence
        assert fit["allocated_bytes"] == fit["max_batch"] * per_sequence <= budget < fit["next_batch_bytes"]
        assert fit["allocated_on"] == ("cpu" if allocate else "meta")
    assert [r["budget"]["max_batch"] for r in rows] == [3, 12, 24]  # 32 KiB, 8 KiB, 4 KiB per sequence


@pytest.mark.parametrize("size", ["8XB", "1.5 PB", "GiB", "0"])
def test_kv_cache_bad_budget_exits_2(src, capsys, size):
    assert run("kv-cache", src, "--variants", "mqa", "--budget", size) == 2
    assert f"size '{size}' is not a positive number" in capsys.readouterr().err


# -- one vocabulary: each subcommand's options are one dataclass, parsed by one factory -------------------------
SUBCOMMAND_OPTIONS = [
    ("convert", ["SRC", "OUT", "--variant", "mqa"], ConvertOptions),
    ("kv-cache", ["SRC"], KvCacheOptions),
    ("tradeoff", [], TradeoffConfig),
]


@pytest.mark.parametrize("command, operands, options", SUBCOMMAND_OPTIONS, ids=[c for c, *_ in SUBCOMMAND_OPTIONS])
def test_the_command_line_defaults_are_the_dataclass_defaults(command, operands, options):
    args = cli.build_parser().parse_args([command, *operands])
    parsed = options_from_args(options, args, **({"recipe": recipe_from_args(args)} if command == "tradeoff" else {}))
    given = {"src": "SRC", "out": "OUT", "variant": "mqa"} if command == "convert" else {}
    given = {"src": "SRC"} if command == "kv-cache" else given
    assert parsed == options(**given)
    if command != "kv-cache":
        assert recipe_from_args(args) == KVRecipe()


@pytest.mark.parametrize("command, operands, options", SUBCOMMAND_OPTIONS, ids=[c for c, *_ in SUBCOMMAND_OPTIONS])
def test_every_option_answers_to_its_hyphen_and_underscore_spelling(command, operands, options):
    parser = cli.build_parser()
    values = {int: "3", float: "0.5", str: "x"}
    for f in dataclasses.fields(options):
        if not f.init or f.metadata.get("cli") is False or f.metadata.get("positional"):
            continue
        kind = typing.get_type_hints(options)[f.name]
        if kind is bool:
            tail = []
        else:
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
            choices = f.metadata.get("choices") or (typing.get_args(kind) if typing.get_origin(kind) is Literal else ())
            other = [c for c in choices if c != f.default and c not in operands]  # a choice that changes something
            tail = [other[0] if choices else values.get(kind, "x")]
        hyphen = parser.parse_args([command, *operands, "--" + f.name.replace("_", "-"), *tail])
        underscore = parser.parse_args([command, *operands, f"--{f.name}", *tail])
        assert vars(hyphen) == vars(underscore), f.name
        assert vars(hyphen) != vars(parser.parse_args([command, *operands])), f"--{f.name} changed nothing"


def test_an_underscore_spelling_is_named_in_its_hyphen_spelling_in_errors(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.build_parser().parse_args(["kv-cache", "smollm2", "--seq_len", "many"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "hf-attn-variants kv-cache: error: argument --seq-len: invalid int value: 'many'"
    )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["kv-cache", "smollm2", "--seq_lenx", "1"])
    assert capsys.readouterr().err.splitlines()[-1] == "hf-attn-variants: error: unrecognized arguments: --seq_lenx 1"
