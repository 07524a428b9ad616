"""Hostile inputs, grouped by kind: config, files, data, kv-cache, training, messages.

Each case is a row of the README's table of bad inputs, and each asserts what a user must get: exit status 2,
exactly one line on stderr (progress bars aside) naming the bad value, no traceback, no OUT, no temporary
folder beside it, the source byte for byte unchanged and the current folder untouched. Most run in-process
through ``cli.main`` for speed; one per group runs as a subprocess, as a user types it. The full disk and
the read-only disk are a real tmpfs and a real read-only bind mount where this process may mount them (root),
simulated otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

import hf_attn_variants as hav
from hf_attn_variants import cli

from .conftest import save_tiny_checkpoint
from .test_cli import digest

DELETE = object()  # a config field to remove
PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]|examples/s\]|\? examples")  # tqdm's bars: not messages
FAST = 30  # seconds: far less than a config of 10**9 layers takes to expand, or the hub's retries


# -- helpers -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama (8 query heads, 4 K/V heads, 2 layers) with a tokenizer, saved once for the module."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "src", "llama")


@pytest.fixture
def src(tiny, tmp_path):
    """A copy of the tiny checkpoint that a test may damage."""
    return Path(shutil.copytree(tiny, tmp_path / "src"))


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path, monkeypatch):
    """Every test runs in an empty current folder, which must stay empty; progress bars off where they can be."""
    import datasets

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    yield cwd
    datasets.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    values = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            values.pop(key, None)
        else:
            values[key] = value
    path.write_text(json.dumps(values))
    return folder


def message_lines(err: str) -> list[str]:
    """The lines of ``err`` that are not progress bars (tqdm rewrites its bar with carriage returns)."""
    lines = (part.strip() for line in err.splitlines() for part in line.split("\r"))
    return [line for line in lines if line and not PROGRESS.search(line)]


def check_refused(status, err, expect, src, before, out, cwd_before) -> str:
    lines = message_lines(err)
    assert status == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for text in expect:
        assert text in lines[0], lines[0]
    if out is not None:
        out = Path(out)
        assert not os.path.lexists(out)
        if out.parent.is_dir():
            assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []
    if src is not None:
        assert digest(src) == before
    assert sorted(os.listdir(Path.cwd())) == cwd_before
    return lines[0]


def refused(capfd, argv, *expect, src=None, out=None) -> str:
    """Run ``cli.main(argv)`` in-process; check everything a refused input must leave; the one message line."""
    before = digest(src) if src is not None else None
    cwd_before = sorted(os.listdir(Path.cwd()))
    capfd.readouterr()
    status = cli.main([str(a) for a in argv])
    return check_refused(status, capfd.readouterr().err, expect, src, before, out, cwd_before)


def refused_subprocess(argv, *expect, src=None, out=None, env=None) -> str:
    """The same, as a user runs it: ``python -m hf_attn_variants.cli ...`` in a fresh process."""
    before = digest(src) if src is not None else None
    cwd_before = sorted(os.listdir(Path.cwd()))
    environment = {**os.environ, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "hf_attn_variants.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    return check_refused(result.returncode, result.stderr, expect, src, before, out, cwd_before)


def convert_argv(src, out, *extra):
    return ["convert", src, out, "--variant", "mqa", "--kv-init", "mean", *extra]


def train_argv(src, out, *extra):
    return ["train", "--model_name_or_path", src, "--output_dir", out, "--use_cpu", "--report_to", "none", *extra]


@contextlib.contextmanager
def mounted(target: Path, *options: str):
    """``mount *options target`` for the block (True), or False where this process may not mount."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    done = subprocess.run(["mount", *options, str(target)], capture_output=True)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def write_gguf(path: Path, block_count: int, tensors: int = 1) -> Path:
    """A well-formed GGUF file of the llama architecture with ``block_count`` layers and ``tensors`` tensors."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(block_count)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.attn_k.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- config: values no model can have, refused before transformers or a conversion builds on them -----------------
CONFIG_CASES = {
    "zero heads": (dict(num_attention_heads=0), ["num_attention_heads=0", "from 1 to 65536"]),
    "zero K/V heads": (dict(num_key_value_heads=0), ["num_key_value_heads=0", "from 1 to 65536"]),
    "heads as a string": (dict(num_attention_heads="8"), ["num_attention_heads='8'", "not a str"]),
    "heads as a float": (dict(num_attention_heads=8.0), ["num_attention_heads=8.0", "not a float"]),
    "K/V heads as a string": (dict(num_key_value_heads="4"), ["num_key_value_heads='4'", "not a str"]),
    "negative heads": (dict(num_attention_heads=-8), ["num_attention_heads=-8"]),
    "10**9 heads": (dict(num_attention_heads=10**9), ["num_attention_heads=1000000000", "from 1 to 65536"]),
    "10**9 layers": (dict(num_hidden_layers=10**9), ["num_hidden_layers=1000000000", "from 1 to 4096"]),
    "zero layers": (dict(num_hidden_layers=0), ["num_hidden_layers=0"]),
    "hidden not divisible by heads": (
        dict(num_attention_heads=7, head_dim=DELETE),
        ["hidden_size=64 is not a multiple of num_attention_heads=7", "[1, 2, 4, 8, 16, 32, 64]"],
    ),
    "K/V heads not dividing the heads": (
        dict(num_key_value_heads=3),
        ["num_key_value_heads=3 does not divide num_attention_heads=8", "[1, 2, 4, 8]"],
    ),
    "bogus rope type": (
        dict(rope_parameters={"rope_type": "bogus", "rope_theta": 10000.0}),
        ["rope_type='bogus'", "'default'", "'yarn'"],
    ),
    "unknown dtype": (dict(dtype="float33"), ["dtype='float33' is not a torch dtype", "'bfloat16'"]),
    "architectures not a list": (
        dict(architectures="LlamaForCausalLM"),
        ["architectures='LlamaForCausalLM' must be a list of model class names"],
    ),
    "architectures naming a tokenizer": (
        dict(architectures=["AutoTokenizer"]),
        ["'AutoTokenizer', which is not a llama model class", "'LlamaForCausalLM'"],
    ),
    "architectures naming another family's model": (
        dict(architectures=["GPT2LMHeadModel"]),
        ["'GPT2LMHeadModel', which is not a llama model class", "'LlamaForCausalLM'"],
    ),
    "negative MLP size": (dict(intermediate_size=-1), ["intermediate_size=-1 must be a whole number of at least 1"]),
    "zero vocabulary": (dict(vocab_size=0), ["vocab_size=0 must be a whole number of at least 1"]),
    "more layers than the weights hold": (
        dict(num_hidden_layers=3),
        ["found 4 K/V projection weights where a llama model with 3 layers has 6"],
    ),
}


@pytest.mark.parametrize("changes, expect", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_config(src, tmp_path, capfd, changes, expect):
    edit_config(src, **changes)
    started = time.monotonic()
    refused(capfd, convert_argv(src, tmp_path / "out"), *expect, src=src, out=tmp_path / "out")
    assert time.monotonic() - started < FAST


@pytest.mark.parametrize(
    "changes, expect",
    [(dict(vocab_size=10**9), "lm_head.weight would have shape [101, 64], but a LlamaForCausalLM of this config needs "
      "[1000000000, 64]"),
     (dict(hidden_size=2**20), "lm_head.weight would have shape [101, 64], but a LlamaForCausalLM of this config "
      "needs [101, 1048576]")],
    ids=["10**9 vocabulary", "2**20 hidden size"],
)  # fmt: skip
def test_config_sizes_the_weights_do_not_have_on_the_in_memory_path(src, tmp_path, capfd, changes, expect):
    """Checked against the safetensors headers before transformers allocates a model of the config's sizes."""
    edit_config(src, **changes)
    started = time.monotonic()
    refused(capfd, in_memory_argv(src, tmp_path / "out"), expect, src=src, out=tmp_path / "out")
    assert time.monotonic() - started < FAST


@pytest.mark.parametrize("text, expect", [("[1, 2]", "is a JSON list, not an object"), ("{nope", "not valid JSON")])
def test_config_file_that_is_not_an_object(src, tmp_path, capfd, text, expect):
    (src / "config.json").write_text(text)
    refused(capfd, convert_argv(src, tmp_path / "out"), expect, "config.json", src=src, out=tmp_path / "out")


def test_config_of_a_plugin_family_names_its_own_field(tmp_path, capfd):
    src = edit_config(save_tiny_checkpoint(tmp_path / "gpt2", "gpt2"), n_head=0)
    refused(capfd, convert_argv(src, tmp_path / "out"), "n_head=0", src=src, out=tmp_path / "out")


def test_architectures_are_never_called(src, tmp_path, capfd, monkeypatch):
    """A config naming any attribute of transformers: looked up as a model class, never called."""
    calls = []
    monkeypatch.setattr(transformers, "hav_trap", lambda *a, **k: calls.append(a), raising=False)
    edit_config(src, architectures=["hav_trap"])
    refused(capfd, convert_argv(src, tmp_path / "out"), "'hav_trap', which is not a llama model class", src=src)
    assert calls == []


def test_config_errors_reach_the_python_api_as_the_same_value_error(src, tmp_path, capfd):
    edit_config(src, num_attention_heads=0)
    line = refused(capfd, convert_argv(src, tmp_path / "out"), "num_attention_heads=0", src=src)
    with pytest.raises(ValueError) as caught:
        hav.AttnVariantConfig.from_pretrained(src, "mqa")
    assert line.endswith(str(caught.value))
    config = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=8, hidden_size=64)
    config.num_attention_heads = 0  # set after construction: transformers' own checks have run
    with pytest.raises(
        ValueError, match="^llama config: num_attention_heads=0 must be a whole number from 1 to 65536$"
    ):
        hav.kv_cache_plan(config, [("mqa", None)], 16)


def test_config_subprocess(src, tmp_path):
    edit_config(src, num_attention_heads=0)
    refused_subprocess(convert_argv(src, tmp_path / "out"), "num_attention_heads=0", src=src, out=tmp_path / "out")


# -- files: GGUF files that are not GGUF, tokenizer files that are not JSON objects, integer K/V weights, full disks --
def gguf_bytes(kind: str) -> bytes:
    noise = random.Random(0).randbytes(4096)
    return {
        "4 bytes": b"GGUF",
        "4 KB of noise": noise,
        "4 KB behind the magic": b"GGUF" + (3).to_bytes(4, "little") + noise[8:],
        "an unknown version": b"GGUF" + (99).to_bytes(4, "little") + noise[8:],
    }[kind]


GGUF_CASES = {
    "4 bytes": "is 4 bytes long, too short for a GGUF file",
    "4 KB of noise": "is not a GGUF file: it does not start with the bytes 'GGUF'",
    "4 KB behind the magic": "is not a readable GGUF file",
    "an unknown version": "is GGUF version 99; readable versions: [2, 3]",
}


@pytest.mark.parametrize("command", ["convert", "kv-cache"])
@pytest.mark.parametrize("kind", GGUF_CASES)
def test_gguf_garbage(tmp_path, capfd, kind, command):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(gguf_bytes(kind))
    out = tmp_path / "out"
    argv = convert_argv(folder, out) if command == "convert" else ["kv-cache", folder]
    refused(capfd, [*argv, "--gguf-file", "m.gguf"], GGUF_CASES[kind], "m.gguf", src=folder, out=out)


@pytest.mark.parametrize(
    "layers, expect", [(10**9, "llama.block_count=1000000000 must be a whole number from 1 to 4096"),
                       (20, "llama.block_count=20 layers, but the file holds only 1 tensors")],
)  # fmt: skip
def test_gguf_with_impossible_layers(tmp_path, capfd, layers, expect):
    folder = write_gguf(tmp_path / "gguf" / "m.gguf", layers).parent
    started = time.monotonic()
    refused(capfd, ["kv-cache", folder, "--gguf-file", "m.gguf"], expect, src=folder)
    refused(capfd, convert_argv(folder, tmp_path / "out", "--gguf-file", "m.gguf"), expect, src=folder)
    assert time.monotonic() - started < FAST


def test_gguf_file_missing_from_the_folder(tmp_path, capfd):
    folder = write_gguf(tmp_path / "gguf" / "m.gguf", 1).parent
    line = refused(capfd, ["kv-cache", folder, "--gguf-file", "other.gguf"], "GGUF file 'other.gguf' is not in")
    assert "['m.gguf']" in line and "https://" not in line


def test_gguf_file_given_as_the_source(tmp_path, capfd):
    path = write_gguf(tmp_path / "gguf" / "m.gguf", 1)
    refused(capfd, convert_argv(path, tmp_path / "out"), "is a GGUF file; give its folder", "'m.gguf'")


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("tokenizer.json", b"{garbage", "tokenizer file"),
        ("tokenizer.json", b"\x00\xff\xfe binary", "tokenizer file"),
        ("tokenizer_config.json", b"[1, 2]", "is a JSON list, not an object"),
    ],
    ids=["corrupt tokenizer.json", "binary tokenizer.json", "tokenizer_config.json a list"],
)
def test_tokenizer_files(src, tmp_path, capfd, name, content, expect):
    (src / name).write_bytes(content)
    refused(capfd, train_argv(src, tmp_path / "out", "--max_steps", "1"), expect, name, src=src, out=tmp_path / "out")


def test_integer_kv_weights(src, tmp_path, capfd):
    from safetensors.torch import load_file, save_file

    state = load_file(src / "model.safetensors")
    for key in [k for k in state if ".k_proj." in k or ".v_proj." in k]:
        state[key] = (state[key] * 1000).to(torch.int32)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    refused(
        capfd,
        convert_argv(src, tmp_path / "out"),
        "model.layers.0.self_attn.k_proj.weight: a K/V tensor of dtype int32",
        src=src,
        out=tmp_path / "out",
    )
    config = transformers.AutoConfig.from_pretrained(src)
    message = (
        "model.layers.0.self_attn.k_proj.weight: a K/V tensor of dtype int32; only floating-point K/V weights can be "
        "regrouped (a quantized or damaged checkpoint? save it in float32, bfloat16 or float16)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.convert_state_dict(state, config, 1)


def in_memory_argv(src, out):
    """A conversion that merges heads in memory (the weights are written by save_pretrained, not streamed)."""
    return ["convert", src, out, "--variant", "mqa", "--kv-init", "svd", "--calibration-samples", "2",
            "--calibration-seq-len", "8"]  # fmt: skip


def test_full_disk_on_the_in_memory_path(src, tmp_path, capfd, monkeypatch):
    disk = tmp_path / "disk"
    with mounted(disk, "-t", "tmpfs", "-o", "size=96k", "tmpfs") as real:
        if not real:  # simulated: the weights' writer fails half-way, as on a full disk

            def full(tensors, filename, metadata=None):
                Path(filename).write_bytes(b"\0" * 1000)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

            monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
        out = disk / "out"
        refused(capfd, in_memory_argv(src, out), "[Errno 28] No space left on device", src=src, out=out)
        assert os.listdir(disk) == []


@pytest.mark.parametrize("path", ["streaming", "in memory"])
def test_read_only_disk(src, tmp_path, capfd, monkeypatch, path):
    disk = tmp_path / "disk"
    (tmp_path / "ro").mkdir()
    with mounted(disk, "--bind", "-o", "ro", str(tmp_path / "ro")) as real:
        if real:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(disk)], capture_output=True)
            real = not os.access(disk, os.W_OK) or _cannot_write(disk)
        if not real:  # simulated: the temporary folder cannot be made
            made = Path.mkdir

            def read_only(self, *args, **kwargs):
                if self.parent == disk:
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
                return made(self, *args, **kwargs)

            monkeypatch.setattr(Path, "mkdir", read_only)
        out = disk / "out"
        argv = convert_argv(src, out) if path == "streaming" else in_memory_argv(src, out)
        refused(capfd, argv, "Read-only file system", src=src)
        assert not os.path.lexists(out)


def _cannot_write(folder: Path) -> bool:
    try:
        (folder / ".probe").mkdir()
    except OSError:
        return True
    (folder / ".probe").rmdir()
    return False


def test_files_subprocess(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF")
    out = tmp_path / "out"
    refused_subprocess([*convert_argv(folder, out), "--gguf-file", "m.gguf"], "is 4 bytes long", src=folder, out=out)


# -- data: training and calibration text that is not text ------------------------------------------------------------
DATA_CASES = {
    "binary .txt": ("bin.txt", random.Random(1).randbytes(3000), "is not UTF-8 text"),
    "binary .jsonl": ("bin.jsonl", random.Random(2).randbytes(3000), "is not UTF-8 text"),
    "empty .jsonl": ("empty.jsonl", b"", "is empty: no JSON rows"),
    "blank .jsonl": ("blank.jsonl", b"\n\n  \n", "is empty: no JSON rows"),
    "malformed .jsonl": ("bad.jsonl", b'{"text": "a"}\n{not json\n', "cannot be read as json"),
    "int values": ("int.jsonl", b'{"text": 5}\n{"text": 7}\n', "column 'text' holds int64 values, not text"),
    "list values": ("list.jsonl", b'{"text": ["a"]}\n{"text": ["b"]}\n', "holds list of string values, not text"),
    "mixed values": ("mixed.jsonl", b'{"text": "a"}\n{"text": 5}\n', "holds json values, not text"),
    "binary .parquet": ("bin.parquet", random.Random(3).randbytes(3000), "is not a parquet file"),
}


@pytest.mark.parametrize("name, content, expect", DATA_CASES.values(), ids=DATA_CASES.keys())
def test_training_data(src, tmp_path, capfd, name, content, expect):
    data = tmp_path / name
    data.write_bytes(content)
    argv = train_argv(src, tmp_path / "out", "--max_steps", "1", "--data_files", data)
    refused(capfd, argv, expect, name, src=src, out=tmp_path / "out")


@pytest.mark.parametrize("name, content, expect", [DATA_CASES["binary .txt"], DATA_CASES["int values"]])
def test_calibration_data(src, tmp_path, capfd, name, content, expect):
    data = tmp_path / name
    data.write_bytes(content)
    argv = [*in_memory_argv(src, tmp_path / "out"), "--calibration-data-files", data]
    refused(capfd, argv, expect, name, src=src, out=tmp_path / "out")


def test_data_subprocess(src, tmp_path):
    data = tmp_path / "bin.txt"
    data.write_bytes(DATA_CASES["binary .txt"][1])
    argv = train_argv(src, tmp_path / "out", "--max_steps", "1", "--data_files", data)
    refused_subprocess(argv, "is not UTF-8 text", "bin.txt", src=src, out=tmp_path / "out")


# -- kv-cache: budgets no machine has or no sequence fits, configs with nothing to plan -------------------------------
KV_CASES = {
    "a budget of 1e30": (["--budget", "1e30"], ["--budget 1e30", "more memory than a machine has"]),
    "an infinite budget": (["--budget", "1e999"], ["size '1e999' is not a positive number with a unit"]),
    "a budget of half a byte": (
        ["--budget", "0.5"],
        ["--budget 0.5", "not even one sequence of 4096 tokens fits", "MHA-8 cache needs 2.00 MiB"],
    ),
    "a budget below one sequence": (["--budget", "1MiB", "--seq-len", "4096"], ["not even one sequence"]),
    "--allocate without --budget": (["--allocate"], ["--allocate needs --budget"]),
    "no tokens": (["--seq-len", "0"], ["seq_len=0 must be a whole number of at least 1"]),
}


@pytest.mark.parametrize("extra, expect", KV_CASES.values(), ids=KV_CASES.keys())
def test_kv_cache(src, capfd, extra, expect):
    refused(capfd, ["kv-cache", src, *extra], *expect, src=src)


def test_kv_cache_refuses_to_allocate_more_than_the_machine_has(src, capfd):
    from hf_attn_variants.kv_cache import available_memory

    free = available_memory("cpu")
    if free is None or free >= 2**40:
        pytest.skip("this machine has 1 TiB free, or does not say how much")
    started = time.monotonic()
    line = refused(capfd, ["kv-cache", src, "--budget", "1TiB", "--allocate"], "--budget 1TiB --allocate", src=src)
    assert "(1.00 TiB) on cpu would take more than its" in line and "free memory" in line
    assert time.monotonic() - started < FAST  # refused from the plan: nothing was allocated


@pytest.mark.parametrize(
    "changes, expect",
    [(dict(num_attention_heads=0), "num_attention_heads=0"), (dict(num_hidden_layers=0), "num_hidden_layers=0"),
     (dict(num_hidden_layers=10**9), "num_hidden_layers=1000000000")],
    ids=["zero heads", "zero layers", "10**9 layers"],
)  # fmt: skip
def test_kv_cache_of_an_impossible_config(src, capfd, changes, expect):
    edit_config(src, **changes)
    started = time.monotonic()
    refused(capfd, ["kv-cache", src, "--budget", "1GiB"], expect, src=src)
    assert time.monotonic() - started < FAST


def test_kv_cache_budget_errors_reach_the_python_api(tiny):
    from hf_attn_variants.kv_cache import largest_batch

    config = transformers.AutoConfig.from_pretrained(tiny)
    with pytest.raises(
        ValueError,
        match=r"^not even one sequence of 16 tokens fits in 10 B: the MQA cache needs \S+ \S+ per sequence; give at "
        "least that, or fewer tokens$",
    ):
        largest_batch(config, 1, 16, 10, "float32")
    with pytest.raises(
        ValueError, match=r"^a budget of 1e\+30 bytes is more memory than a machine has; give at most 1024\.00 TiB$"
    ):
        largest_batch(config, 1, 16, 10**30, "float32")


def test_kv_cache_subprocess(src):
    refused_subprocess(["kv-cache", src, "--budget", "1e30"], "--budget 1e30", src=src)


# -- training: numbers that train to NaN or not at all, refused before output_dir exists -----------------------------
TRAIN_CASES = {
    "learning rate inf": (["--learning_rate", "inf"], "--learning_rate inf: give a finite number"),
    "learning rate nan": (["--learning_rate", "nan"], "--learning_rate nan is not a number"),
    "negative learning rate": (["--learning_rate", "-1"], "--learning_rate -1.0: give a finite number, 0 or more"),
    "max_steps -5": (["--max_steps", "-5"], "--max_steps -5: give a number of optimizer steps of at least 1, or -1"),
    "max_steps 0": (["--max_steps", "0"], "--max_steps 0: give a number of optimizer steps of at least 1"),
    "epochs inf": (["--num_train_epochs", "inf"], "--num_train_epochs inf: give a finite number"),
    "batch size 0": (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0"),
    "block size 1": (["--block_size", "1"], "--block_size 1: give a whole number of tokens, at least 2"),
    "eval fraction 1.5": (["--eval_fraction", "1.5"], "--eval_fraction 1.5 must lie strictly between 0 and 1"),
    "distillation temperature 0": (
        ["--distill", "--distill_temperature", "0"],
        "--distill_temperature 0.0 must be a finite number > 0",
    ),
    "K/V heads not dividing the heads": (
        ["--attn_variant", "gqa", "--num_key_value_heads", "3"],
        "num_key_value_heads=3 does not divide num_attention_heads=8",
    ),
    "a missing data file": (["--data_files", "missing.txt"], "data file 'missing.txt' does not exist"),
    "a folder as a data file": (["--data_files", "."], "data file '.' is a folder, not a file"),
    "a missing teacher": (["--distill", "--teacher", "./no-teacher"], "'./no-teacher' does not exist"),
}


@pytest.mark.parametrize("extra, expect", TRAIN_CASES.values(), ids=TRAIN_CASES.keys())
def test_training(src, tmp_path, capfd, extra, expect):
    extra = ["--max_steps", "1", *extra] if "--max_steps" not in extra else extra
    refused(capfd, train_argv(src, tmp_path / "out", *extra), expect, src=src, out=tmp_path / "out")


@pytest.mark.parametrize("existed", [False, True], ids=["made by the run", "there before"])
def test_training_that_fails_late_leaves_no_empty_output_dir(src, tmp_path, capfd, monkeypatch, existed):
    """A failure inside training itself (after Trainer made output_dir): the empty folder goes, unless it was
    there before."""

    def fail(self, *args, **kwargs):
        raise ValueError("the optimizer refused a value")

    monkeypatch.setattr(transformers.Trainer, "train", fail)
    out = tmp_path / "out"
    if existed:
        out.mkdir()
    capfd.readouterr()
    assert cli.main([str(a) for a in train_argv(src, out, "--max_steps", "1")]) == 2
    assert "the optimizer refused a value" in capfd.readouterr().err
    assert out.is_dir() == existed


def test_training_subprocess(src, tmp_path):
    argv = train_argv(src, tmp_path / "out", "--max_steps", "0")
    refused_subprocess(argv, "--max_steps 0", src=src, out=tmp_path / "out")


# -- messages: what a user is told names what they gave, in our words ------------------------------------------------
@pytest.mark.parametrize("given", ["./x", "/no/such/folder", "x/y/z", "models/mine", "not a hub id"])
def test_a_missing_local_folder(tmp_path, capfd, given):
    if given.startswith("models/"):
        Path("models").mkdir()  # "models/mine" reads as a path when models/ is a folder here
    line = refused(capfd, convert_argv(given, tmp_path / "out"), f"'{given}' does not exist: no such folder")
    assert "Repo id" not in line and "https://" not in line
    with pytest.raises(FileNotFoundError) as caught:  # the Python API says the same
        hav.AutoModelForCausalLM.from_pretrained(given, attn_variant="mqa")
    assert line.endswith(str(caught.value))


def test_a_hub_id_that_cannot_be_reached_is_refused_at_once(tmp_path, capfd, monkeypatch):
    """No network (the host name does not resolve) and not in the cache: refused before transformers retries."""
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    started = time.monotonic()
    line = refused(capfd, convert_argv("someorg/somemodel", tmp_path / "out"), "'someorg/somemodel' is not a folder")
    assert "the hub cannot be reached" in line and "https://" not in line
    assert time.monotonic() - started < 5


def test_messages_subprocess_hub_id_offline(tmp_path):
    started = time.monotonic()
    line = refused_subprocess(
        ["kv-cache", "someorg/somemodel"], "'someorg/somemodel' is not a folder here", env={"HF_HUB_OFFLINE": "1"}
    )
    assert "HF_HUB_OFFLINE=1" in line and "https://" not in line
    assert time.monotonic() - started < FAST


def test_no_tokenizer_is_not_a_missing_package(src, tmp_path, capfd):
    (src / "tokenizer.json").unlink()
    (src / "tokenizer_config.json").unlink()
    line = refused(capfd, train_argv(src, tmp_path / "out", "--max_steps", "1"), "has no tokenizer", src=src)
    assert "sentencepiece" not in line and "tiktoken" not in line


def test_calibration_text_too_short_names_the_calibration_option(src, tmp_path, capfd):
    text = tmp_path / "short.txt"
    text.write_text("hello world")  # 12 tokens with the end of text, fewer than one block of 32
    argv = [*in_memory_argv(src, tmp_path / "out"), "--calibration-data-files", text]
    argv[argv.index("--calibration-seq-len") + 1] = "32"
    line = refused(capfd, argv, "holds 12 tokens, fewer than --calibration-seq-len=32", src=src, out=tmp_path / "out")
    assert "--block_size" not in line


def test_an_out_name_too_long_names_out_not_the_temporary_folder(src, tmp_path, capfd):
    out = tmp_path / ("x" * 250)
    line = refused(capfd, convert_argv(src, out), "its name is 250 bytes long, and at most 241 fit", src=src, out=out)
    assert line.count("x" * 250) == 1 and not re.search(r"\.tmp-[0-9a-f]{8}", line)


def test_missing_weights_without_an_index(src, tmp_path, capfd):
    (src / "model.safetensors").unlink()
    line = refused(capfd, convert_argv(src, tmp_path / "out"), "holds no safetensors weights", src=src)
    assert "index" not in line
    os.symlink("blob-that-is-gone", src / "model.safetensors")  # the Hugging Face cache, a blob deleted
    line = refused(capfd, convert_argv(src, tmp_path / "out"), "'model.safetensors'", "broken link", src=src)
    assert "index" not in line


def test_a_folder_without_config(src, tmp_path, capfd):
    (src / "config.json").unlink()
    line = refused(capfd, ["kv-cache", src], "has no config.json, so it is not a model folder", src=src)
    assert "model_type" not in line and "https://" not in line
