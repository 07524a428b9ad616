"""Writing checkpoints without ever leaving a half-written folder or touching the source."""

from __future__ import annotations

import contextlib
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
