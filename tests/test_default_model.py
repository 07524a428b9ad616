"""hav.smollm2(), the Python entry point of the default model, and the name "smollm2" in the Auto classes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import hf_attn_variants as hav
import hf_attn_variants.default_model as dm


def test_importing_the_package_downloads_nothing(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, HF_ATTN_VARIANTS_CACHE=str(cache))
    code = "import hf_attn_variants as hav; print(callable(hav.smollm2))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
    assert not cache.exists()


def test_default_model_returns_the_cached_folder_and_file_without_downloading(tmp_path, monkeypatch):
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    (folder / dm.GGUF_FILE).write_bytes(b"cached")
    monkeypatch.setenv("HF_ATTN_VARIANTS_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("downloaded although cached"))
    assert hav.smollm2() == (str(folder), "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "smollm2" in hav.__all__


def test_auto_class_resolves_the_alias_like_the_command_line(monkeypatch):
    seen = {}

    def load(cls, src, *args, **kwargs):
        seen.update(src=src, **kwargs)
        return "loaded"

    monkeypatch.setattr(dm, "default_model", lambda: ("/cache/smollm2-135m-instruct", dm.GGUF_FILE))
    monkeypatch.setattr(hav.AutoModelForCausalLM.__mro__[1], "from_pretrained", classmethod(load))
    assert hav.AutoModelForCausalLM.from_pretrained("smollm2", dtype="float32") == "loaded"
    assert seen == {"src": "/cache/smollm2-135m-instruct", "gguf_file": dm.GGUF_FILE, "dtype": "float32"}


def test_auto_class_refuses_another_gguf_file_for_the_alias():
    with pytest.raises(ValueError) as err:
        hav.AutoModelForCausalLM.from_pretrained("smollm2", gguf_file="other.gguf")
    assert str(err.value) == "the 'smollm2' model is the file 'SmolLM2-135M-Instruct.Q4_1.gguf', not 'other.gguf'"


def test_a_local_folder_named_smollm2_is_not_the_alias(tmp_path, monkeypatch):
    (tmp_path / "smollm2").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dm, "default_model", lambda: pytest.fail("the alias shadowed a local folder"))
    with pytest.raises((OSError, ValueError), match="smollm2"):  # transformers' own: the folder holds no model
        hav.AutoModelForCausalLM.from_pretrained("smollm2")
