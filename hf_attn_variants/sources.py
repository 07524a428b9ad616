"""Reading a model source (a local folder, a GGUF file in it, or a hub id): its config and its tokenizer.

What transformers, huggingface_hub and the GGUF reader raise on a damaged, missing or unreachable source
(struct errors, strict-dataclass errors, KeyErrors, messages that name a hub URL for a local folder) becomes
one ``ValueError`` or ``OSError`` line naming the file and the bad value. A local ``config.json`` and a GGUF
file's header are checked before transformers builds anything on them: 10**9 layers in a config would
otherwise be expanded (``layer_types``) before any check could run.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .default_model import ALIAS, BASE_MODEL, check_source_exists, reads_as_path, resolve_source
from .families.base import MAX_HEADS, MAX_LAYERS, check_config_values, check_count

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
GGUF_HEADER_BYTES = 24  # magic, version, tensor count, metadata count
GGUF_VERSIONS = (2, 3)


def load_config(src: str | os.PathLike, gguf_file: str | None = None, **kwargs):
    """``AutoConfig.from_pretrained(src, gguf_file=..., **kwargs)``, with one-line errors for a bad source.

    Raises:
        ValueError: a config or GGUF file that cannot be read, or whose values no model could have.
        OSError: a missing folder, file or hub model (FileNotFoundError where it is local).
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    folder = Path(src) / kwargs.get("subfolder", "")
    local = folder.is_dir()
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if local:
        where = check_gguf_file(folder / gguf_file) if gguf_file else check_config_file(folder / "config.json")
    else:
        check_source_exists(src)  # a missing folder said so, before transformers reads it as a hub id
        where = f"the config of {str(src)!r}"
    try:
        return AutoConfig.from_pretrained(src, **kwargs)
    except StrictDataclassError as err:  # transformers' own checks of the values, worded as a dataclass error
        raise ValueError(f"{where}: {_last_line(err)}") from err
    except (ArithmeticError, AttributeError, KeyError, TypeError, IndexError, struct.error) as err:
        raise ValueError(f"{where} is not a valid config ({type(err).__name__}: {_last_line(err)})") from err
    except OSError as err:
        if local:
            raise
        raise hub_error(src, err) from err


def check_config_file(path: Path) -> str:
    """Refuse a missing, unparsable or impossible ``config.json``; returns how errors name it."""
    try:
        values = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{str(path.parent)!r} has no config.json, so it is not a model folder (a checkpoint folder holds "
            "config.json and its weights)"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err})") from err
    check_config_values(values, str(path))
    return str(path)


def check_gguf_file(path: Path) -> str:
    """Refuse a missing GGUF file, one that is not GGUF (too short, wrong magic or version, damaged metadata), or
    one whose head and layer counts are impossible; returns how errors name it.

    Reads the header and metadata with the ``gguf`` package (a memory map: the tensors are not read).
    """
    if not path.is_file():
        found = sorted(p.name for p in path.parent.glob("*.gguf"))
        raise FileNotFoundError(
            f"GGUF file {path.name!r} is not in {str(path.parent)!r}; GGUF files there: {found or 'none'}"
        )
    where = str(path)
    with open(path, "rb") as handle:
        header = handle.read(GGUF_HEADER_BYTES)
    if len(header) < GGUF_HEADER_BYTES:
        raise ValueError(
            f"{where!r} is {len(header)} bytes long, too short for a GGUF file (its header alone is "
            f"{GGUF_HEADER_BYTES} bytes)"
        )
    if header[:4] != b"GGUF":
        raise ValueError(f"{where!r} is not a GGUF file: it does not start with the bytes 'GGUF' ({header[:4]!r})")
    version = int.from_bytes(header[4:8], "little")
    if version not in GGUF_VERSIONS and int.from_bytes(header[4:8], "big") not in GGUF_VERSIONS:
        raise ValueError(f"{where!r} is GGUF version {version}; readable versions: {list(GGUF_VERSIONS)}")
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        values = {name: _gguf_value(field) for name, field in reader.fields.items()}
        tensors = len(reader.tensors)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, struct.error) as err:
        raise ValueError(
            f"{where!r} is not a readable GGUF file ({type(err).__name__}: {_last_line(err)}); truncated or corrupt?"
        ) from err
    arch = values.get("general.architecture")
    for key, bound in ((f"{arch}.attention.head_count", MAX_HEADS), (f"{arch}.attention.head_count_kv", MAX_HEADS)):
        if isinstance(values.get(key), int):
            check_count(where, key, values[key], bound)
    layers = values.get(f"{arch}.block_count")
    if layers is not None and check_count(where, f"{arch}.block_count", layers, MAX_LAYERS) > tensors:
        raise ValueError(
            f"{where}: {arch}.block_count={layers} layers, but the file holds only {tensors} tensors (at least one "
            "per layer); the file is damaged or not a model"
        )
    return where


GGUF_FLOAT_TYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_WIDTH = {"float16": 0, "bfloat16": 1, "float32": 2}  # a mix of floats is written in the widest


def gguf_weights_dtype(path: str | os.PathLike) -> tuple[str, list[str]]:
    """The dtype that holds ``path``'s weight matrices exactly, and their GGUF types (sorted).

    Float matrices (F32, BF16, F16) keep their dtype (the widest where they are mixed); a quantized file
    (Q4_1, Q8_0, K-quants ...) is written as float32, which holds its dequantized values exactly. Vectors
    (norms, biases) are stored as F32 by llama.cpp whatever the file's type and do not count.
    """
    from gguf import GGUFReader

    types = sorted({t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) > 1})
    floats = [GGUF_FLOAT_TYPES[t] for t in types if t in GGUF_FLOAT_TYPES]
    if not types or len(floats) < len(types):
        return "float32", types
    return max(floats, key=_WIDTH.__getitem__), types


def source_metadata(src: str | os.PathLike, gguf_file: str | None = None) -> dict:
    """What a model card can say of ``src``'s origin: ``base_model`` (a Hub id) and ``license``, where known.

    The Hub id is ``src`` itself when it is one, the repository of a Hugging Face cache snapshot folder
    (``.../models--org--name/snapshots/<commit>``), or SmolLM2's for ``smollm2``; the license comes from the
    GGUF file's ``general.license``, else the card (``README.md``) in the folder. Unknown stays ``None``: a
    card never claims a license or a base model it did not read.
    """
    path = Path(src)
    base_model = None
    if str(src) == ALIAS and not path.exists():
        base_model = BASE_MODEL
        src, gguf_file = resolve_source(str(src), gguf_file)
        path = Path(src)
    elif not path.exists() and not reads_as_path(str(src)):
        base_model = str(src)
    else:
        parts = path.resolve().parts
        if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
            base_model = parts[-3].removeprefix("models--").replace("--", "/", 1)
    return {"base_model": base_model, "license": _license(path, gguf_file)}


def _license(folder: Path, gguf_file: str | None) -> str | None:
    """The license ``folder``'s GGUF file or model card declares, or ``None``."""
    if gguf_file and (folder / gguf_file).is_file():
        from gguf import GGUFReader

        field = GGUFReader(folder / gguf_file).fields.get("general.license")
        return _gguf_value(field) if field is not None else None
    card = folder / "README.md"
    if card.is_file():
        from huggingface_hub import ModelCard

        try:
            return ModelCard.load(card).data.license
        except (ValueError, OSError):  # a README without (valid) metadata says nothing about the license
            return None
    return None


def _gguf_value(field):
    """A GGUF metadata field's value: an int, float or str for a scalar; ``None`` for an array."""
    import gguf

    if not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    part = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def load_tokenizer(src: str | os.PathLike, gguf_file: str | None = None, **kwargs):
    """``AutoTokenizer.from_pretrained(src, gguf_file=..., **kwargs)``, with one-line errors for a bad source.

    A local folder must hold tokenizer files (else transformers asks to install sentencepiece or tiktoken, to
    convert a tokenizer that is not there), and those that are JSON must parse as JSON objects.

    Raises:
        FileNotFoundError: a local folder without tokenizer files.
        ValueError: a tokenizer file that cannot be read.
    """
    from transformers import AutoTokenizer

    folder = Path(src) / kwargs.get("subfolder", "")
    local = folder.is_dir()
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if not local:
        check_source_exists(src)
    elif not gguf_file:
        present = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
        if not present:
            raise FileNotFoundError(
                f"{str(folder)!r} has no tokenizer (none of {list(TOKENIZER_FILES)}); copy the source model's "
                "tokenizer files into it"
            )
        for path in present:
            if path.suffix == ".json":
                _check_json_object(path)
    try:
        return AutoTokenizer.from_pretrained(src, **kwargs)
    except OSError as err:
        if local:
            raise
        raise hub_error(src, err) from err
    except Exception as err:  # tokenizers' Rust errors are plain Exceptions; transformers adds KeyErrors, TypeErrors
        raise ValueError(
            f"the tokenizer of {str(src)!r} cannot be loaded ({type(err).__name__}: {_last_line(err)})"
        ) from err


def _check_json_object(path: Path) -> None:
    try:
        value = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"tokenizer file {str(path)!r} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"tokenizer file {str(path)!r} is a JSON {type(value).__name__}, not an object")


def hub_error(src, err: OSError) -> OSError:
    """transformers' error for a hub id that could not be fetched, in words that name ``src`` and no URL."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause = err.__cause__ or err.__context__
    if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return OSError(
            f"{str(src)!r} is not a local folder, nor in the Hugging Face cache, and the hub could not be reached "
            "to download it (offline, or HF_HUB_OFFLINE=1); give a local model folder or 'smollm2'"
        )
    if isinstance(cause, GatedRepoError):
        return OSError(f"hub model {str(src)!r} is gated: log in (hf auth login) with an account granted access")
    if isinstance(cause, RepositoryNotFoundError):
        return OSError(
            f"{str(src)!r} is neither a local folder nor a model on the Hugging Face hub (a private model needs "
            "hf auth login)"
        )
    if isinstance(cause, RevisionNotFoundError):
        return OSError(f"hub model {str(src)!r} has no such revision (branch, tag or commit)")
    return err


def _last_line(err: BaseException) -> str:
    """The informative line of a (possibly multi-line) message: its last non-empty line, without a type prefix."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [repr(err)]
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.isidentifier() and head.endswith(("Error", "Exception")) else last
