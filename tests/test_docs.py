"""Every ```python and ```bash block of README.md and docs/*.md runs, exactly as a user copies it.

Blocks are read by pytest-codeblocks' Markdown parser (``pytest_codeblocks.extract_from_file``) and run
here, each in a process of its own. The conventions, for whoever writes README.md or docs/:

- A ```python block runs in a fresh ``python`` process; a ```bash (or ```sh) block runs as one
  ``bash -e -o pipefail`` script, stopping at the first command that fails (the failure names it). Both run
  in a new temporary folder laid out like the repository root (its top-level files and folders linked in,
  ``out/`` not), so ``python scripts/finetune.py``, ``hf_attn_variants/accelerate_configs/...`` and
  ``out/...`` work as they do in a clone, with the interpreter's folder (``.venv/bin``) first on ``PATH``.
- A block defines everything it uses: the default model comes from ``hav.smollm2()`` (or the name
  ``smollm2``), never from hidden setup. Real-model blocks keep their sizes small (a few calibration
  blocks, a few training steps) and say so in the block.
- ``make main`` and ``make test`` lines of a ```bash block are not run here: they are what CI itself runs
  (``.ci/run`` is ``make test``, which runs this file), and ``make main`` is the trade-off table; a block of
  nothing else is skipped.
- ``<!--pytest-codeblocks:cont-->`` on the line before a block: it continues the block before it (one
  process runs both, the names of the first defined in the second), for a section written as a sequence.
- ``<!--pytest.mark.slow-->`` before a block: it loads the real model (run in CI too, like every slow test).
- ``<!--pytest.mark.skip(reason="...")-->`` before a block: it is not run, for the reason given (what CI
  itself runs, a measurement that takes half an hour). Every skip needs a reason; keep them few.
- Marks go before the first block of a continued sequence, and apply to the whole sequence.
- ```text (or ```console) blocks are not run: usage synopses with placeholders (``SRC``,
  ``[--flag ...]``, ``...``) and printed output. A command a user is meant to copy is a ```bash block.
- Every fence names its language (an unlabelled fence fails ``test_every_block_names_its_language``).

The environment adds ``HF_HUB_OFFLINE=1``: a block that reaches for a hub fails at once instead of retrying.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_codeblocks import extract_from_file

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python": "python", "bash": "bash", "sh": "bash"}  # fence language -> how it runs
NOT_RUN = {"text", "console", "json", "yaml", "toml", "ini", "diff", "markdown"}  # shown, never run
CI_ITSELF = re.compile(r"^\s*make\s+(main|test)\s*(#.*)?$")  # what CI runs: not run again inside it
TIMEOUT_S = 1800  # a hung block fails with its output rather than holding CI forever
NOT_LINKED = {"out", "build", "dist"}  # what blocks write stays in their own folder


def _blocks():
    for path in DOCS:
        for block in extract_from_file(path):
            if block.syntax in RUN:
                marks = [eval(mark, {"pytest": pytest}) for mark in block.marks]  # noqa: S307 (our own Markdown)
                for mark in marks:
                    if mark.name == "skip" and not mark.kwargs.get("reason"):
                        raise ValueError(f"{path.name}:{block.lineno}: a skip mark needs reason='...'")
                if RUN[block.syntax] == "bash" and all(
                    CI_ITSELF.match(line) or not line.strip() for line in block.code.splitlines()
                ):
                    marks.append(pytest.mark.skip(reason="make main / make test: what CI itself runs"))
                yield pytest.param(block, id=f"{path.relative_to(ROOT)}:{block.lineno}", marks=marks)


BLOCKS = list(_blocks())


def _workdir(tmp_path: Path) -> Path:
    """A folder that looks like the repository root to a block, whose own writes stay inside it."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in NOT_LINKED and not entry.name.endswith(".egg-info"):
            (work / entry.name).symlink_to(entry)
    return work


def _environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    return env


def _numbered(code: str) -> str:
    return "\n".join(f"{i:3} | {line}" for i, line in enumerate(code.splitlines(), 1))


@pytest.mark.parametrize("block", BLOCKS)
def test_block_runs_as_written(block, tmp_path):
    work = _workdir(tmp_path)
    if RUN[block.syntax] == "python":
        command = [sys.executable, "-c", block.code]  # as if pasted into python in the repository root
    else:
        code = "\n".join(line for line in block.code.splitlines() if not CI_ITSELF.match(line))
        script = "trap 'echo \"docs block: this command failed: $BASH_COMMAND\" >&2' ERR\n" + code
        command = ["bash", "-e", "-o", "pipefail", "-c", script]
    try:
        done = subprocess.run(
            command, cwd=work, env=_environment(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the block ran past {TIMEOUT_S} s:\n{_numbered(block.code)}\n{err.stderr or ''}"[-8000:])
    assert done.returncode == 0, (
        f"exit status {done.returncode}:\n{_numbered(block.code)}\n--- stdout:\n{done.stdout[-3000:]}\n"
        f"--- stderr:\n{done.stderr[-5000:]}"
    )


def test_every_block_names_its_language():
    fence = re.compile(r"^\s*```")
    for path in DOCS:
        opened = False
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if fence.match(line):
                language = line.strip().strip("`").strip()
                if not opened:
                    assert language in RUN or language in NOT_RUN, (
                        f"{path.name}:{lineno}: a fence names {language!r}; use one of "
                        f"{sorted(RUN)} (run by tests/test_docs.py) or {sorted(NOT_RUN)} (shown only)"
                    )
                opened = not opened
        assert not opened, f"{path.name}: a fence is never closed"


def test_no_mark_sits_on_a_continued_block():
    """pytest-codeblocks would carry a mark before a ``cont`` block over to the next new block, silently."""
    comment = re.compile(r"^\s*<!--[-\s]*(pytest\.mark\.|pytest-codeblocks:cont)")
    for path in DOCS:
        comments = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if comment.match(line):
                comments.append((lineno, line.strip()))
                if "pytest-codeblocks:cont" in line:
                    marks = [f"{path.name}:{n}" for n, text in comments if "pytest.mark." in text]
                    assert not marks, f"{marks}: a mark on a continued block; put it before the first block"
            elif line.strip():
                comments = []


def test_the_quick_start_is_the_first_block_that_runs_and_it_needs_nothing_before_it():
    readme = (ROOT / "README.md").read_text().splitlines()
    first = next(
        p.values[0] for p in BLOCKS if p.id.startswith("README.md:") and not any(m.name == "skip" for m in p.marks)
    )
    headings = [line for line in readme[: first.lineno] if line.startswith("## ")]
    assert headings[-1] == "## Quick start", f"README.md:{first.lineno} runs first, under {headings[-1]!r}"
    assert first.syntax == "python"
    assert "hav.smollm2()" in first.code  # src comes from the documented entry point, not thin air
