"""Conversion on disk, shard by shard: the same tensors as converting in memory, with the index carried over."""

import errno
import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

import hf_attn_variants as hav
from hf_attn_variants import cli

from .conftest import FAMILIES, tiny_model

# one family of each kind: native, native fused, plugin blocks, plugin grouped, plugin separate, mixed
KINDS = [f for f in ("llama", "phi3", "gpt2", "gpt_neox", "opt", "falcon", "gpt_bigcode") if f in FAMILIES]


def saved_tensors(folder) -> dict:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.mark.parametrize("family", KINDS)
@pytest.mark.parametrize("variant, count", [("gqa", 2), ("mqa", None), ("mha", None)])
def test_streamed_conversion_equals_the_in_memory_one(family, variant, count, tmp_path, input_ids):
    source = tiny_model(family)
    source.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert run_convert(tmp_path / "src", tmp_path / "out", variant, count) == 0

    expected = hav.convert(source, variant, count)
    expected.save_pretrained(tmp_path / "reference")
    streamed, reference = saved_tensors(tmp_path / "out"), saved_tensors(tmp_path / "reference")
    assert streamed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(streamed[key], reference[key]), key

    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(streamed)
    assert len(set(index["weight_map"].values())) > 1  # still sharded
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert type(loaded) is type(expected) and loaded.config.model_type == expected.config.model_type
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, expected.eval()(input_ids).logits)


def test_dtype_is_cast_tensor_by_tensor(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "src")
    assert run_convert(tmp_path / "src", tmp_path / "out", "mqa", None, "--dtype", "bfloat16") == 0
    assert {t.dtype for t in saved_tensors(tmp_path / "out").values()} == {torch.bfloat16}
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def run_convert(src, out, variant, count, *extra) -> int:
    argv = ["convert", str(src), str(out), "--variant", variant, *extra]
    return cli.main(argv + (["--num-kv-heads", str(count)] if count else []))


def test_unchanged_tensors_are_copied_byte_for_byte_and_only_kv_tensors_loaded(tmp_path, monkeypatch):
    from safetensors import safe_open

    from hf_attn_variants import streaming

    tiny_model("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    loaded = []
    real_open = streaming._open

    class Spy:
        def __init__(self, path):
            self.handle = real_open(path)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_tensor(self, key):
            loaded.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(streaming, "_open", lambda path: Spy(path))
    assert run_convert(tmp_path / "src", tmp_path / "out", "mqa", None) == 0
    assert loaded and all(k.endswith(("k_proj.weight", "v_proj.weight")) for k in loaded)  # nothing else read
    source, out = saved_tensors(tmp_path / "src"), saved_tensors(tmp_path / "out")
    for key in source.keys() - set(loaded):
        assert torch.equal(out[key], source[key]), key
    for path in (tmp_path / "out").glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            assert handle.metadata() == {"format": "pt"}


def test_write_shard_round_trips_every_dtype_and_shape(tmp_path):
    from safetensors.torch import save_file

    from hf_attn_variants import streaming

    tensors = {
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "f8": torch.randn(4).to(torch.float8_e4m3fn),
    }
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"format": "pt"})
    header, metadata, start = streaming.read_header(tmp_path / "a.safetensors")
    assert metadata == {"format": "pt"}
    raw = [(k, streaming.ByteRange(v["dtype"], v["shape"], start + v["data_offsets"][0], start + v["data_offsets"][1]))
           for k, v in header.items() if k != "bf16"]  # fmt: skip
    doubled = streaming.Deferred(torch.bfloat16, (3, 5), lambda: tensors["bf16"] * 2)
    entries = [*raw, ("bf16", doubled), ("new", torch.ones(2, 2, dtype=torch.float64))]
    written = []
    metadata = {"format": "pt", "n": 1}
    size = streaming.write_shard(
        tmp_path / "b.safetensors",
        entries,
        metadata,
        source=tmp_path / "a.safetensors",
        written=lambda: written.append(1),
    )
    assert len(written) == len(entries) and size == sum(t.numel() * t.element_size() for t in tensors.values()) + 32
    back = load_file(str(tmp_path / "b.safetensors"))
    assert back.keys() == tensors.keys() | {"new"}
    for key, tensor in tensors.items():
        expected = tensor * 2 if key == "bf16" else tensor
        assert back[key].dtype == expected.dtype and back[key].shape == expected.shape
        assert torch.equal(back[key].reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))
    with pytest.raises(ValueError, match="complex64.*safetensors"):
        streaming.write_shard(tmp_path / "c.safetensors", [("z", torch.zeros(2, dtype=torch.complex64))], {})
    with pytest.raises(ValueError, match="no source file"):
        streaming.write_shard(tmp_path / "e.safetensors", raw[:1], {})
    wrong = streaming.Deferred(torch.float32, (2,), lambda: torch.zeros(3))
    with pytest.raises(ValueError, match=r"'w' came out torch.float32 \[3\], planned torch.float32 \[2\]"):
        streaming.write_shard(tmp_path / "d.safetensors", [("w", wrong)], {})


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, 0])
def test_without_kernel_copies_the_bytes_go_through_the_process(code, tmp_path, monkeypatch):
    def refuse(*args):
        if code == 0:
            return 0  # what some file systems answer instead of an error
        raise OSError(code, os.strerror(code))

    tiny_model("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert run_convert(tmp_path / "src", tmp_path / "kernel", "mqa", None) == 0
    monkeypatch.setattr(os, "copy_file_range", refuse)
    assert run_convert(tmp_path / "src", tmp_path / "process", "mqa", None) == 0
    for path in (tmp_path / "kernel").glob("*.safetensors"):
        assert path.read_bytes() == (tmp_path / "process" / path.name).read_bytes()


def test_a_full_disk_during_a_kernel_copy_is_reported_not_worked_around(tmp_path, monkeypatch, capsys):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    tiny_model("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    monkeypatch.setattr(os, "copy_file_range", full)
    assert run_convert(tmp_path / "src", tmp_path / "out", "mqa", None) != 0
    assert os.strerror(errno.ENOSPC) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
