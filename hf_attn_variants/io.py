"""Reading checkpoints that may be damaged or hostile, and writing without a half-written folder or touching the source."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path


def check_output_dir(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Resolve ``out`` and refuse an output that would clobber the source or existing work.

    Raises:
        ValueError: ``out`` equals ``src``, lies inside it or contains it.
        FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    out = Path(out).resolve()
    source = Path(src).resolve() if Path(src).exists() else None
    if source is not None:
        source_dir = source if source.is_dir() else source.parent
        if out == source_dir or source_dir in out.parents:
            raise ValueError(
                f"OUT {str(out)!r} is or lies inside the source {str(source_dir)!r}; choose another folder"
            )
        if out in source.parents:
            raise ValueError(f"OUT {str(out)!r} contains the source {str(source)!r}; choose another folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"OUT {str(out)!r} exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT {str(out)!r} is a file, not a folder")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike):
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_INDEX = "model.safetensors.index.json"


def check_checkpoint_folder(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of the local checkpoint ``folder``, each checked readable; refuse anything else.

    Only safetensors are accepted: pickled weights (``.bin``, ``.pt``...) can run code when loaded. An index
    may only name files inside ``folder``. Checked: the index parses, no file it names is missing, every
    header is intact and covers its file (a truncated shard fails here). Flipped bytes inside tensor data
    cannot be detected: safetensors carries no checksum.

    Raises:
        ValueError: pickled-only weights, a corrupt index or file, a file name escaping the folder.
        FileNotFoundError: no weights, or a shard the index names is missing.
    """
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        files = [_inside(folder, name, index) for name in _index_files(index)]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ValueError(
                f"{str(folder)!r} holds only pickled weights {pickled}, which can run code when loaded; they are "
                "refused: save the model with safetensors (model.save_pretrained(..., safe_serialization=True))"
            )
        raise FileNotFoundError(f"{str(folder)!r} holds no safetensors weights")
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{index.name} names {path.name!r}, which is missing from {str(folder)!r}")
        _check_safetensors(path)
    return files


def _index_files(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{str(index)!r} is not a valid safetensors index ({type(err).__name__}: {err})") from err
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"{str(index)!r}: the weight_map values must be file names")
    return names


def _inside(folder: Path, name: str, index: Path) -> Path:
    path = (folder / name).resolve()
    if Path(name).is_absolute() or path.parent != folder.resolve():
        raise ValueError(f"{index.name} names {name!r}, which lies outside the checkpoint folder; refused")
    return path


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, neither OSError nor ValueError
        raise ValueError(f"{path.name!r} is not a readable safetensors file: {err} (truncated or corrupt?)") from err


def write_json(path: str | os.PathLike | None, data) -> None:
    """Write ``data`` as indented JSON to ``path`` (its folder created); nothing when ``path`` is ``None``."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
