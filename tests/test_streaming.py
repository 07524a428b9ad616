"""Conversion on disk, shard by shard: the same tensors as converting in memory, with the index carried over."""

import json

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
