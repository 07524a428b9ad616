"""Damaged and hostile inputs, full or read-only disks, killed runs: a clear error, exit 2, nothing written or lost.

Each case is one row of the README's table of bad inputs. Every test checks that OUT does not exist, that
no temporary folder is left behind, and that the source's files are byte for byte unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hf_attn_variants as hav
from hf_attn_variants import cli
from hf_attn_variants.families import refused_model_types

from .conftest import save_tiny_checkpoint, tiny_model
from .test_cli import digest

PREFIX = "hf-attn-variants convert: error: "


@pytest.fixture
def sharded(tmp_path):
    """A tiny Llama saved in several safetensors shards with an index."""
    tiny_model("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    return tmp_path / "src"


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def refused(tmp_path, capsys, src, *extra, command: str = "convert") -> str:
    """Run the CLI on ``src``; check exit 2, no output, no temporary folder, the source unchanged; the error.

    ``convert SRC OUT *extra``, or ``train --model_name_or_path SRC --output_dir OUT *extra``.
    """
    before = digest(src)
    out = tmp_path / "out"
    if command == "convert":
        argv = ["convert", str(src), str(out), *extra]
    else:
        argv = ["train", "--model_name_or_path", str(src), "--output_dir", str(out), "--use_cpu", *extra]
    assert cli.main(argv) == 2
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert digest(src) == before
    return capsys.readouterr().err


def test_truncated_shard(sharded, tmp_path, capsys):
    victim = shards(sharded)[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    err = refused(tmp_path, capsys, sharded, "--variant", "mqa")
    # the reader's own reason (safetensors' words) sits between the file's name and the hint
    assert re.fullmatch(
        rf"{PREFIX}'{re.escape(victim.name)}' is not a readable safetensors file: Error while deserializing header: "
        r"incomplete metadata, file not fully covered \(truncated or corrupt\?\)",
        err.splitlines()[-1],
    )


def test_corrupt_safetensors_header(sharded, tmp_path, capsys):
    victim = shards(sharded)[0]
    victim.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + victim.read_bytes()[24:])
    err = refused(tmp_path, capsys, sharded, "--variant", "mqa")
    assert re.fullmatch(
        rf"{PREFIX}'{re.escape(victim.name)}' is not a readable safetensors file: Error while deserializing header: "
        r"invalid JSON in header: .* \(truncated or corrupt\?\)",
        err.splitlines()[-1],
    )


def test_missing_shard(sharded, tmp_path, capsys):
    victim = shards(sharded)[-1]
    victim.unlink()
    err = refused(tmp_path, capsys, sharded, "--variant", "mqa")
    assert err.splitlines()[-1] == (
        f"{PREFIX}model.safetensors.index.json names '{victim.name}', which is missing from '{sharded}'"
    )


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_naming_a_file_outside_the_checkpoint(sharded, tmp_path, capsys, name):
    (tmp_path / "outside.safetensors").write_bytes(shards(sharded)[0].read_bytes())
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = name
    index.write_text(json.dumps(data))
    err = refused(tmp_path, capsys, sharded, "--variant", "mqa")
    assert err.splitlines()[-1] == (
        f"{PREFIX}model.safetensors.index.json names '{name}', which lies outside the checkpoint folder; refused"
    )


def test_corrupt_index(sharded, tmp_path, capsys):
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": ')
    err = refused(tmp_path, capsys, sharded, "--variant", "mqa")
    assert err.splitlines()[-1] == (
        f"{PREFIX}'{sharded / 'model.safetensors.index.json'}' is not a valid safetensors index (JSONDecodeError: "
        "Expecting value: line 1 column 16 (char 15))"
    )  # the 15 characters of '{"weight_map": ', then nothing


def test_pickled_weights_are_refused_by_training_too(tmp_path, capsys):
    src = save_tiny_checkpoint(tmp_path / "src", "llama")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")  # refused by its name: it is never opened
    err = refused(tmp_path, capsys, src, "--max_steps", "1", "--report_to", "none", command="train")
    assert err.splitlines()[-1] == (
        f"hf-attn-variants train: error: '{src}' holds only pickled weights ['pytorch_model.bin'], which can run "
        "code when loaded; they are refused: save the model with safetensors "
        "(model.save_pretrained(..., safe_serialization=True))"
    )


def test_gguf_of_another_architecture(tmp_path, capsys):
    import gguf
    import numpy as np

    folder = tmp_path / "gguf"
    folder.mkdir()
    writer = gguf.GGUFWriter(str(folder / "m.gguf"), arch="mamba")
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    err = refused(tmp_path, capsys, folder, "--variant", "mqa", "--gguf-file", "m.gguf")
    assert err.splitlines()[-1] == (
        f"{PREFIX}model_type 'mamba' is not supported by hf_attn_variants; supported: {hav.supported_model_types()}; "
        f"'mamba': {refused_model_types()['mamba']}"
    )


def test_a_dataset_with_no_text(tmp_path, capsys):
    src = save_tiny_checkpoint(tmp_path / "src", "llama")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    err = refused(tmp_path, capsys, src, "--data_files", str(tmp_path / "empty.txt"), command="train")
    assert err.splitlines()[-1] == (
        f"hf-attn-variants train: error: dataset '{tmp_path / 'empty.txt'}' has no text in column 'text'"
    )


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk(sharded, tmp_path, capsys, monkeypatch, code):
    """The disk fills up (or turns out read-only) while the weights are written: the partial folder goes."""
    from hf_attn_variants import streaming

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(streaming, "write_shard", fail)  # where the converted shards are written
    err = refused(tmp_path, capsys, sharded, "--variant", "mqa")
    assert os.strerror(code) in err


def test_read_only_destination(sharded, tmp_path, capsys, monkeypatch):
    """OUT's parent cannot be written: refused before any weight is read."""
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name.startswith(".out.tmp-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert "Read-only file system" in refused(tmp_path, capsys, sharded, "--variant", "mqa")


def test_a_killed_conversion_leaves_no_out_and_a_rerun_succeeds(sharded, tmp_path):
    """SIGKILL while the output is being written (not a Python exception: nothing can clean up)."""
    out = tmp_path / "out"
    script = (
        "import sys, time\n"
        "from hf_attn_variants import cli, streaming\n"
        "save = streaming.write_shard\n"
        "def slow(*a, **k):\n"
        "    save(*a, **k)\n"
        "    print('written', flush=True)\n"
        "    time.sleep(60)\n"
        "streaming.write_shard = slow\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, "convert", str(sharded), str(out), "--variant", "mqa"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "written"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(0.1)
    assert not out.exists()
    assert cli.main(["convert", str(sharded), str(out), "--variant", "mqa"]) == 0
    assert (out / "config.json").is_file()


def test_a_head_dim_that_does_not_match_the_weights(tmp_path, capsys):
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    config["head_dim"] = 4  # the weights have head_dim 8
    (src / "config.json").write_text(json.dumps(config))
    err = refused(tmp_path, capsys, src, "--variant", "mqa")
    assert "k_proj.weight: 32 K/V rows, but the config says 4 K/V heads x head_dim 4 = 16" in err


def test_query_heads_that_do_not_match_the_weights(tmp_path, capsys):
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    config.update(num_attention_heads=4, head_dim=8)  # K/V rows still fit (4 x 8), q_proj (64 rows) does not
    (src / "config.json").write_text(json.dumps(config))
    err = refused(tmp_path, capsys, src, "--variant", "mqa")
    assert "would have shape [64, 64], but a LlamaForCausalLM of this config needs [64, 32]" in err
