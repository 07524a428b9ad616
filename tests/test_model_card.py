"""Model cards ready for the Hub: metadata that huggingface_hub's card classes read back, honest wording."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_attn_variants.sources import source_metadata

from .conftest import card_metadata, check_hub_ready, tiny_model

CLI = [sys.executable, "-m", "hf_attn_variants.cli"]


def convert(src: Path, out: Path, *argv: str) -> ModelCard:
    """``hf-attn-variants convert SRC OUT ARGV`` as a user runs it; the card it wrote, read back."""
    result = subprocess.run([*CLI, "convert", str(src), str(out), *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ModelCard.load(out / "README.md")


@pytest.fixture(scope="module")
def hub_snapshot(tmp_path_factory):
    """A tiny GQA-4 llama laid out as the Hugging Face cache lays out a download, with the source's own card."""
    root = tmp_path_factory.mktemp("hub")
    folder = root / "models--tiny-org--tiny-llama" / "snapshots" / ("0" * 40)
    tiny_model("llama", num_key_value_heads=4).save_pretrained(folder)
    ModelCard("---\nlicense: mit\nlibrary_name: transformers\n---\n\n# tiny llama\n").save(folder / "README.md")
    return folder


def test_a_converted_card_names_its_base_model_license_and_dtype(hub_snapshot, tmp_path):
    card = convert(hub_snapshot, tmp_path / "mqa", "--variant", "mqa", "--kv-init", "mean", "--dtype", "bfloat16")
    data = check_hub_ready(tmp_path / "mqa" / "README.md")
    assert (data.base_model, getattr(data, "base_model_relation", None), data.license) == (
        "tiny-org/tiny-llama",
        "finetune",
        "mit",
    )
    assert "converted to **MQA** attention: 8 query heads share 1 K/V head (the source, GQA-4, had 4)" in card.text
    assert "- Weights saved in bfloat16" in card.text
    assert "- K/V heads: made by `mean` — mean pooling of the K/V heads of each group" in card.text
    assert json.loads((tmp_path / "mqa" / "config.json").read_text())["dtype"] == "bfloat16"


def test_mha_and_the_source_layout_are_said_as_such(hub_snapshot, tmp_path):
    mha = convert(hub_snapshot, tmp_path / "mha", "--variant", "mha")
    assert "converted to **MHA**: each of the 8 query heads has its own K/V head (the source, GQA-4, had 4)" in mha.text
    assert "- K/V heads: exact copies of the source's K/V heads (the model's function is unchanged)" in mha.text
    assert "quality drops" not in mha.text
    same = convert(hub_snapshot, tmp_path / "same", "--variant", "gqa", "--num-kv-heads", "4")
    assert "kept in its own layout, **GQA-4** (8 query heads, 4 K/V heads): weights unchanged" in same.text
    assert "- K/V heads: the source's own (unchanged)" in same.text
    for name in ("mha", "same"):
        check_hub_ready(tmp_path / name / "README.md")


def test_a_folder_of_unknown_origin_claims_no_base_model_or_license(tmp_path):
    tiny_model("gpt2").save_pretrained(tmp_path / "gpt2")
    convert(tmp_path / "gpt2", tmp_path / "out", "--variant", "gqa", "--num-kv-heads", "2")
    data = check_hub_ready(tmp_path / "out" / "README.md")
    assert (data.base_model, getattr(data, "base_model_relation", None), data.license) == (None, None, None)
    assert set(card_metadata(tmp_path / "out" / "README.md")) == {"library_name", "model_name", "pipeline_tag", "tags"}


@pytest.mark.parametrize(
    "src, expected",
    [
        ("HuggingFaceTB/SmolLM2-135M", {"base_model": "HuggingFaceTB/SmolLM2-135M", "license": None}),
        ("./not-here", {"base_model": None, "license": None}),
    ],
)
def test_source_metadata_of_names_that_are_not_folders(src, expected):
    assert source_metadata(src) == expected


def test_a_readme_without_metadata_says_nothing_of_the_license(tmp_path):
    (tmp_path / "README.md").write_text("# a model\n\nno metadata here\n")
    assert source_metadata(tmp_path) == {"base_model": None, "license": None}
