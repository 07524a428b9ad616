"""Reading checkpoints that may be damaged or hostile, and writing without a half-written folder or touching the source.

What a conversion reads and writes is a *model folder*: ``config.json``, ``generation_config.json``, tokenizer
files (``MODEL_FILES``, ``TOKENIZER_SUFFIXES``, ``additional_chat_templates/*.jinja``), ``*.safetensors`` with
their index, and the ``README.md`` card. Nothing else of a source is read or copied (no pickles, no ``*.py``, no
notes), and a file of the source may be a symbolic link only to a file inside the source folder, or, in the
Hugging Face cache layout (``models--org--name/snapshots/<hash>/``), inside that ``models--*`` folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILES = frozenset({"config.json", "generation_config.json"})
# tokenizer files transformers reads and writes (its VOCAB_FILES_NAMES, the chat template and legacy files)
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
        "chat_template.jinja", "chat_template.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
        "spiece.model", "sentencepiece.model", "sentencepiece.bpe.model", "spm.model", "spm_char.model",
        "bpe.codes", "dict.txt", "normalizer.json", "byte_maps.json", "emoji.json", "entity_vocab.json",
        "vocab-src.json", "vocab-tgt.json", "prophetnet.tokenizer", "word_pronunciation.json", "word_shape.json",
    }
)  # fmt: skip
TOKENIZER_SUFFIXES = (".tiktoken",)
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # holds only *.jinja files
CARD = "README.md"
MODEL_FILES = CONFIG_FILES | TOKENIZER_FILES | {SAFETENSORS_INDEX, CARD}
_NO_CODE = ("auto_map",)  # config keys that make transformers import code (with trust_remote_code)


def is_model_file(name: str) -> bool:
    """Whether the path ``name`` (relative to a model folder) is one a model folder holds."""
    parts = Path(name).parts
    if len(parts) == 2 and parts[0] == CHAT_TEMPLATE_DIR:
        return parts[1].endswith(".jinja")
    return len(parts) == 1 and (name in MODEL_FILES or name.endswith((".safetensors", *TOKENIZER_SUFFIXES)))


def model_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a model folder a conversion could have written (``None``: it is, or it is empty).

    The rule: every entry is a regular file (not a link) that ``is_model_file`` names, or the
    ``additional_chat_templates`` folder holding only such ``*.jinja`` files. Anything else is somebody's work.
    """
    for entry in sorted(folder.iterdir()):
        if entry.name == CHAT_TEMPLATE_DIR and entry.is_dir() and not entry.is_symlink():
            inner = sorted(entry.iterdir())
            entries = [(f"{CHAT_TEMPLATE_DIR}/{p.name}", p) for p in inner]
        else:
            entries = [(entry.name, entry)]
        for name, path in entries:
            if path.is_symlink():
                return f"{name!r} is a symbolic link"
            if path.is_dir():
                return f"it holds the folder {name!r}"
            if not is_model_file(name) or not path.is_file():
                return f"it holds {name!r}, which a conversion does not write"
    return None


model_folder_problem.describes = ("a model folder", "a folder of config, tokenizer, *.safetensors and README.md files")


def files_folder_problem(names: frozenset[str], what: str, model_folders: bool = False):
    """A ``replaceable`` for :func:`check_output_dir`: an output folder holding only the regular files ``names``
    (and, with ``model_folders``, folders that ``model_folder_problem`` accepts), as ``what`` writes it."""

    def problem(folder: Path) -> str | None:
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink():
                return f"{entry.name!r} is a symbolic link"
            if entry.is_dir() and model_folders:
                inner = model_folder_problem(entry)
                if inner:
                    return f"its folder {entry.name!r}: {inner}"
            elif entry.is_dir():
                return f"it holds the folder {entry.name!r}"
            elif entry.name not in names or not entry.is_file():
                return f"it holds {entry.name!r}, which {what} does not write"
        return None

    shown = ", ".join(sorted(names)) + (" and model folders" if model_folders else "")
    problem.describes = (f"the output of {what}", f"a folder of {shown}")
    return problem


def check_output_dir(
    src: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    replaceable: Callable[[Path], str | None] | None = None,
) -> Path:
    """Resolve ``out`` and refuse an output that would clobber the source, the user's folders or existing work.

    Refused always: an empty name (an unset shell variable), a symbolic link (never written through), the
    file system's root, the home folder, the current folder, any of their ancestors; the source's folder,
    a folder inside it or one containing it; a folder holding a file the source links to. Without
    ``overwrite`` an existing ``out`` is refused; with it, one that is not a folder, or of which
    ``replaceable`` (e.g. ``model_folder_problem``) says why it is not ours to replace.

    Raises:
        ValueError: any of the above but the first; FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    shown = repr(str(out))
    if not str(out).strip():
        raise ValueError(f"OUT {shown} is empty (an unset shell variable?); name the folder to write")
    _check_name_length(Path(out), shown)
    given = Path.cwd() / out
    if given.is_symlink():
        raise ValueError(
            f"OUT {shown} is a symbolic link (to {os.readlink(given)!r}); it is never written through: "
            "name the real folder, or a new one"
        )
    real = given.resolve()
    if str(real) != str(out):
        shown = f"{shown} ({str(real)!r})"
    if real == Path(real.anchor):
        raise ValueError(f"OUT {shown} is the root of the file system; refused: name a new folder")
    for what, folder in (("the current folder", Path.cwd().resolve()), ("your home folder", Path.home().resolve())):
        if real == folder or real in folder.parents:
            raise ValueError(f"OUT {shown} is {what} or contains it; refused: name a new folder")
    source = Path(src).resolve() if os.path.lexists(src) else None
    if source is not None:
        source_dir = source if source.is_dir() else source.parent
        if real == source_dir or source_dir in real.parents:
            raise ValueError(f"OUT {shown} is or lies inside the source {str(source_dir)!r}; choose another folder")
        if real in source.parents:
            raise ValueError(f"OUT {shown} contains the source {str(source)!r}; choose another folder")
        for link, target in _links(Path(src)):
            if target == real or real in target.parents:
                raise ValueError(
                    f"OUT {shown} holds {str(target)!r}, which the source's {str(link)!r} links to; replacing OUT "
                    "would change the source: choose another folder"
                )
    if os.path.lexists(real) and not overwrite:
        raise FileExistsError(f"OUT {shown} exists; pass --overwrite (overwrite=True) to replace it")
    if os.path.lexists(real) and not real.is_dir():
        raise ValueError(f"OUT {shown} is a file, not a folder")
    if os.path.lexists(real) and replaceable is not None:
        problem = replaceable(real)
        if problem:
            what, holds = getattr(replaceable, "describes", model_folder_problem.describes)
            raise ValueError(
                f"OUT {shown} does not look like {what} ({problem}); --overwrite only replaces {holds}: "
                "remove it yourself or choose another OUT"
            )
    return real


TEMP_AFFIX = len(".") + len(".tmp-") + 8  # what a temporary (or .old-) folder beside OUT adds to its name


def _check_name_length(out: Path, shown: str) -> None:
    """Refuse an OUT whose name, or the name of the temporary folder written beside it, the file system cannot
    hold (the error would otherwise name the temporary folder)."""
    parent = next((p for p in (Path.cwd() / out).parents if p.is_dir()), Path(Path.cwd().anchor))
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer: the usual limit
        limit = 255
    length = len(os.fsencode(out.name))
    if length + TEMP_AFFIX > limit:
        raise ValueError(
            f"OUT {shown}: its name is {length} bytes long, and at most {limit - TEMP_AFFIX} fit here (the file "
            f"system allows {limit}, and a temporary '.{{name}}.tmp-XXXXXXXX' is written beside OUT); use a "
            "shorter name"
        )


def _links(src: Path):
    """``(link, its real target)`` of every symbolic link in the file or folder ``src`` (links to folders too)."""
    if src.is_symlink():
        yield src, src.resolve()
    if not src.is_dir():
        return
    for root, dirs, files in os.walk(src):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                yield path, path.resolve()


@contextlib.contextmanager
def locked_output_dir(
    src: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    replaceable: Callable[[Path], str | None] | None = None,
):
    """``check_output_dir``, then hold OUT's lock (``output_lock``) and check again under it; yields OUT's path.

    A second conversion to the same OUT fails at once; one that had passed the first check while another
    was writing sees that run's OUT under the lock.
    """
    real = check_output_dir(src, out, overwrite, replaceable)
    with output_lock(real):
        again = check_output_dir(src, out, overwrite, replaceable)
        if again != real:  # the path itself changed meanwhile (a parent moved or linked elsewhere)
            raise ValueError(f"OUT {str(out)!r} changed while it was checked (now {str(again)!r}); run again")
        yield real


class OutputBusy(OSError):
    """Another process holds the lock of the output folder."""


_HELD: set[Path] = set()  # outputs whose lock this process holds


@contextlib.contextmanager
def output_lock(out: Path):
    """Hold ``.OUT.lock`` beside ``out`` (an exclusive ``flock``) for the duration; it is removed afterwards.

    Under the lock, what a killed run left of the same OUT goes: ``.OUT.tmp-*`` folders, and ``.OUT.old-*``
    (the previous OUT, moved back if OUT itself is missing: killed between the two renames). Folders made
    for ``out``'s parent are removed again if nothing was written in them. Re-entrant within a process.

    Raises:
        OutputBusy: another process holds the lock.
    """
    out = Path(out)
    if out in _HELD:
        yield
        return
    made = _make_parents(out.parent)
    try:
        lock = out.parent / f".{out.name}.lock"
        fd = _acquire(lock, out)
        _HELD.add(out)
        try:
            _remove_stale(out)
            yield
        finally:
            _HELD.discard(out)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            os.close(fd)
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty


def _make_parents(folder: Path) -> list[Path]:
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)][::-1]
    made = []
    for path in missing:
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except BaseException:
            for done in reversed(made):
                with contextlib.suppress(OSError):
                    done.rmdir()
            raise
        made.append(path)
    return made


def _acquire(lock: Path, out: Path) -> int:
    import fcntl

    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ValueError(f"the lock file {str(lock)!r} is a symbolic link; refused: remove it") from err
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held, now = os.fstat(fd), os.stat(lock, follow_symlinks=False)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(
                f"another conversion is writing OUT {str(out)!r} (it holds {lock.name!r}); wait for it to end or "
                "choose another OUT"
            ) from None
        except FileNotFoundError:  # its holder removed the file as we locked it: lock the next one
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)  # locked a file its holder had already removed: lock the one now there


def _remove_stale(out: Path) -> None:
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-[0-9a-f]{{8}}")
    stale = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]
    old = [p for p in stale if p.name.startswith(f".{out.name}.old-") and p.is_dir() and not p.is_symlink()]
    if old and not os.path.lexists(out):
        previous = max(old, key=lambda p: p.stat().st_mtime)
        os.replace(previous, out)
        stale.remove(previous)
        logger.warning("restored %s, the OUT a killed run had moved aside", out)
    for path in stale:
        logger.warning("removing %s, left by a killed run", path)
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike):
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it is removed.

    OUT's lock is held meanwhile (``output_lock``). If the final rename fails, the temporary folder is
    removed and any previous OUT is back in place.
    """
    out = Path(out)
    with output_lock(out):
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        try:
            if os.path.lexists(out):
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(out, old)
            os.replace(tmp, out)
        except BaseException:
            try:
                if old is not None and not os.path.lexists(out):
                    os.replace(old, out)  # the previous OUT back (if this fails too, the next run restores it)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


CTRANSLATE2_VOCABULARIES = ("vocabulary.json", "vocabulary.txt", "shared_vocabulary.json", "shared_vocabulary.txt")


def check_checkpoint_folder(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of the local checkpoint ``folder``, each checked readable; refuse anything else.

    Only safetensors are accepted: pickled weights (``.bin``, ``.pt``...) can run code when loaded. An index
    may only name files directly in ``folder``. Every model file of the folder (weights, config, tokenizer;
    ``source_model_files``) must be a regular file inside it, or a link into it (into the ``models--*``
    folder for the Hugging Face cache), with an index or without. Checked: the index parses, no file it
    names is missing, every header is intact and covers its file (a truncated shard fails here). Flipped
    bytes inside tensor data cannot be detected: safetensors carries no checksum.

    Raises:
        ValueError: pickled-only weights, a corrupt index or file, a file name or link escaping the folder.
        FileNotFoundError: no weights, or a shard the index names is missing.
    """
    folder = Path(folder)
    source_model_files(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        files = [_inside(folder, name, index) for name in _index_files(index)]
    else:
        files = sorted(p for p in folder.glob("*.safetensors") if p.is_file() or p.is_symlink())
    if not files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if "model.bin" in pickled and any((folder / name).is_file() for name in CTRANSLATE2_VOCABULARIES):
            raise ValueError(
                f"{str(folder)!r} is a CTranslate2 model (model.bin and its vocabulary, as `export` writes it), not a "
                "checkpoint: give the checkpoint it was made from"
            )
        if pickled:
            raise ValueError(
                f"{str(folder)!r} holds only pickled weights {pickled}, which can run code when loaded; they are "
                "refused: save the model with safetensors (model.save_pretrained(..., safe_serialization=True))"
            )
        raise FileNotFoundError(f"{str(folder)!r} holds no safetensors weights")
    root = link_root(folder)
    for path in files:
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{index.name} names {path.name!r}, which is missing from {str(folder)!r}")
        check_source_file(folder, path.name, root)
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
    """``folder / name`` for a ``name`` that stays in ``folder`` by its spelling (links are checked later)."""
    plain = os.path.normpath(name)
    if os.path.isabs(name) or os.sep in plain or plain in (".", "..") or "\0" in name:
        raise ValueError(f"{index.name} names {name!r}, which lies outside the checkpoint folder; refused")
    return folder / plain


def link_root(folder: str | os.PathLike) -> Path:
    """Where the files of the checkpoint ``folder`` may really lie: in ``folder`` itself or, for a snapshot of
    the Hugging Face cache (``models--org--name/snapshots/<hash>/``), in that ``models--*`` folder (its files
    are links to ``../../blobs/<sha256>``)."""
    real = Path(folder).resolve()
    for ancestor in (real, *real.parents):
        if ancestor.parent.name == "snapshots" and ancestor.parent.parent.name.startswith("models--"):
            return ancestor.parent.parent
    return real


def check_source_file(folder: Path, name: str, root: Path | None = None) -> Path:
    """``folder / name``, refused unless it really is a regular file inside ``link_root(folder)``.

    Raises:
        ValueError: a link out of the folder, or not a regular file (a folder, a device, a pipe).
        FileNotFoundError: a broken link.
    """
    path = Path(folder) / name
    real, root = path.resolve(), root or link_root(folder)
    if root not in real.parents:
        raise ValueError(
            f"{name!r} in {str(folder)!r} is a link to {str(real)!r}, outside the checkpoint folder; refused "
            "(files outside a checkpoint are never read or copied: copy the file into the folder)"
        )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{name!r} in {str(folder)!r} is a broken link (to {str(real)!r})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{name!r} in {str(folder)!r} is not a regular file; refused")
    return path


def source_model_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The model files of the checkpoint ``folder`` (``is_model_file``; its ``README.md`` is not read), by name,
    each checked with ``check_source_file``. Everything else in the folder is ignored: never read, never copied.
    """
    folder, found = Path(folder), {}
    root = link_root(folder)
    names = [p.name for p in folder.iterdir()]
    if (folder / CHAT_TEMPLATE_DIR).is_dir() and not (folder / CHAT_TEMPLATE_DIR).is_symlink():
        names += [f"{CHAT_TEMPLATE_DIR}/{p.name}" for p in (folder / CHAT_TEMPLATE_DIR).iterdir()]
    for name in sorted(names):
        if is_model_file(name) and name != CARD:
            found[name] = check_source_file(folder, name, root)
    return found


def copy_model_file(source: Path, target: Path) -> None:
    """Copy the checked file ``source`` to the new file ``target`` (never through a link: refused if it exists)."""
    target.parent.mkdir(exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(source, "rb") as reader, open(os.open(target, flags, 0o644), "wb") as writer:
        shutil.copyfileobj(reader, writer)


def keep_only_model_files(folder: str | os.PathLike) -> None:
    """Remove from ``folder`` (a conversion's own temporary output) what a model folder does not hold, and
    the ``auto_map`` entries of its configs (they make transformers import code).

    transformers' ``save_pretrained`` writes a custom model's ``*.py`` files beside its weights, and a
    tokenizer's may write files of its own: what reaches OUT is only the model.
    """
    folder = Path(folder)
    for entry in sorted(folder.iterdir()):
        inner = entry.name == CHAT_TEMPLATE_DIR and entry.is_dir() and not entry.is_symlink()
        for path in sorted(entry.iterdir()) if inner else [entry]:
            name = f"{CHAT_TEMPLATE_DIR}/{path.name}" if inner else path.name
            if path.is_symlink() or not path.is_file() or not is_model_file(name):
                logger.info("not a model file, left out of the output: %s", name)
                _remove(path)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if _strip_code(data):
            path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _strip_code(data) -> bool:
    """Remove every ``_NO_CODE`` key of the JSON ``data``, nested ones too; whether anything was removed."""
    removed = False
    if isinstance(data, dict):
        for key in _NO_CODE:
            removed |= data.pop(key, None) is not None
        items = data.values()
    elif isinstance(data, list):
        items = data
    else:
        return False
    for item in list(items):
        removed |= _strip_code(item)
    return removed


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, neither OSError nor ValueError
        raise ValueError(f"{path.name!r} is not a readable safetensors file: {err} (truncated or corrupt?)") from err


@contextlib.contextmanager
def write_errors(out: str | os.PathLike):
    """safetensors' ``SafetensorError`` of a failed write (``I/O error: No space left on device (os error 28)``)
    raised as the ``OSError`` it reports, naming ``out``: a full or read-only disk is an ``OSError`` everywhere."""
    try:
        yield
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise OSError(errno.EIO, f"writing {str(out)!r} failed: {err}") from err
        code = int(found[1])
        raise OSError(code, os.strerror(code), str(out)) from err


class Stopped(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) stopped the work: raised where the program was, so that cleanup runs.

    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        """The shell's status of a process ended by the signal: 128 + its number (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_as_exceptions(signums=STOP_SIGNALS):
    """Within, ``signums`` raise ``Stopped`` in the main thread (signals ignored at start stay ignored, as under
    ``nohup``); a second signal while the first one's cleanup runs is ignored. Elsewhere than the main
    thread, nothing changes."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def stop(signum, frame):
        if not stopping:  # later ones: the cleanup of the first is running
            stopping.append(signum)
            raise Stopped(signum)

    previous = {}
    for signum in signums:
        before = signal.getsignal(signum)
        if before is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, signal.SIG_DFL if before is None else before)


def write_json(path: str | os.PathLike | None, data) -> None:
    """Write ``data`` as indented JSON to ``path`` (its folder created); nothing when ``path`` is ``None``."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
