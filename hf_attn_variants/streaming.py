"""Convert a safetensors checkpoint shard by shard: never the whole model in memory.

Every K/V tensor goes through its family's ``convert_tensor`` (the same code as an in-memory conversion), one
input shard at a time; each output shard keeps its input's name and tensors, so the index carries over. The
tensors a conversion does not change (most of a model) are not loaded at all: their bytes are copied from the
input file into the output file by the kernel (``os.copy_file_range``, as ``cp`` does), behind a header
written for the new layout. Peak memory is about the converted K/V tensors of one shard.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .convert import check_kv_weight_count
from .families import family_for
from .io import CARD, SAFETENSORS_INDEX, copy_model_file, source_model_files
from .variants import check_kv_init, resolve_num_kv_heads

# model files of a checkpoint folder that are written anew, not carried over
_REWRITTEN = {"config.json", SAFETENSORS_INDEX, CARD}


def stream_convert(
    src: Path,
    files: list[Path],
    config,
    out: Path,
    attn_variant: str | None,
    num_key_value_heads: int | None = None,
    kv_init: str = "mean",
    seed: int = 0,
    dtype: torch.dtype | None = None,
):
    """Write ``src`` (safetensors ``files``, ``config``) converted into the existing, empty folder ``out``.

    Returns the converted model's config. ``dtype`` casts floating-point tensors (``None`` keeps them).
    """
    family = family_for(config)
    family.check_config(config)
    check_kv_init(kv_init)
    dst = resolve_num_kv_heads(attn_variant, num_key_value_heads, family.num_heads(config))
    target = family.target_config(config, dst)
    target_class = _target_class(family, config, dst)
    target.architectures = [target_class.__name__]
    if dtype is not None:
        target.dtype = dtype
    renamed = check_against_model(files, config, target, target_class, dst)

    weight_map, total, changed = {}, 0, 0
    headers = {path: read_header(path) for path in files}
    keys = sum(len(header) for header, _, _ in headers.values())
    with tqdm(total=keys, desc="converting tensors", unit="tensor") as progress:
        for path in files:
            header, metadata, data_start = headers[path]
            entries = []  # (name, ByteRange of the input file) or (name, Deferred converted tensor)
            with _open(path) as handle:
                for key, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
                    kv = family.is_kv_tensor(key)
                    saved = _DTYPES.get(info["dtype"], torch.uint8)
                    shape = family.kv_tensor_shape(key, info["shape"], saved, config, dst) if kv else info["shape"]
                    cast = dtype is not None and info["dtype"] in _FLOATS and _DTYPES[info["dtype"]] != dtype
                    changed += kv and key.endswith("weight")
                    name = renamed.get(key, key)
                    if not kv and not cast:
                        begin, end = info["data_offsets"]
                        entries.append(
                            (name, ByteRange(info["dtype"], info["shape"], data_start + begin, data_start + end))
                        )
                        continue

                    to, shape = dtype if cast else saved, tuple(shape)

                    def make(key=key, kv=kv, to=to):
                        tensor = handle.get_tensor(key)
                        converted = family.convert_tensor(key, tensor, config, dst, kv_init, seed) if kv else tensor
                        return converted.to(to).contiguous()

                    entries.append((name, Deferred(to, shape, make)))
                total += write_shard(
                    out / path.name, entries, {**metadata, "format": "pt"}, source=path, written=progress.update
                )
            weight_map.update(dict.fromkeys((name for name, _ in entries), path.name))
    check_kv_weight_count(family, config, changed)
    if (src / SAFETENSORS_INDEX).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    target.save_pretrained(out)
    for name, extra in source_model_files(src).items():  # tokenizer, generation config, chat templates: no more
        if not name.endswith(".safetensors") and name not in _REWRITTEN:
            copy_model_file(extra, out / name)
    return target


def _source_class(config) -> type:
    """The transformers model class that ``config.architectures`` names, if it is one for this config.

    Raises:
        ValueError: the name is something else of transformers (``AutoTokenizer``, ``set_seed``, another family's
            model): it is never called.
        NotStreamable: transformers has nothing of that name (a plugin variant's class: converted in memory).
    """
    import transformers
    from transformers.models.auto import modeling_auto

    names = getattr(config, "architectures", None) or []
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    source_class = getattr(transformers, name, None) if name and name.isidentifier() else None
    if source_class is None:
        raise NotStreamable(f"config.architectures {names!r} names no transformers model class")
    config_class = getattr(source_class, "config_class", None)
    if not (
        isinstance(source_class, type)
        and issubclass(source_class, transformers.PreTrainedModel)
        and isinstance(config_class, type)
        and isinstance(config, config_class)
    ):
        mappings = (modeling_auto.MODEL_MAPPING_NAMES, modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                    modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                    modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)  # fmt: skip
        valid = sorted({m[config.model_type] for m in mappings if config.model_type in m})
        raise ValueError(
            f"config.architectures names {name!r}, which is not a {config.model_type} model class of transformers; "
            f"valid: {valid}"
        )
    return source_class


def _target_class(family, config, dst: int) -> type:
    return family.target_class(_source_class(config), dst, config)


def check_against_model(files: list[Path], config, target, target_class: type, dst: int) -> dict[str, str]:
    """Refuse, before writing anything, a conversion whose tensors would not load into the converted model.

    Reads only the headers: every tensor, with a K/V tensor's converted shape (``kv_tensor_shape``), is compared,
    name and shape, with the converted model built on the meta device. Names follow save_pretrained on both sides (transformers
    renames some tensors for their model_type, e.g. GPT-NeoX's ``embed_out``, and a plugin variant's type has
    no such renaming); tied parameters may be absent, as save_pretrained writes them once.

    Returns:
        the new name of every tensor whose saved name differs between source and variant.
    Raises:
        ValueError: an unexpected or missing tensor, or one whose converted shape differs.
    """
    family = family_for(config)
    with torch.device("meta"):
        source_model = _source_class(config)(config)
        model = target_class(target)
    source_names, target_names = _saved_names(source_model), _saved_names(model)
    renamed = {source_names[k]: target_names[k] for k in source_names.keys() & target_names.keys()}
    renamed = {old: new for old, new in renamed.items() if old != new}
    state = model.state_dict()
    expected = {target_names[k]: tuple(t.shape) for k, t in state.items() if k in target_names}
    unique = {
        target_names[k] for k in dict(model.named_parameters()) | dict(model.named_buffers()) if k in target_names
    }
    tied = set(expected) - unique
    found = set()
    for path in files:
        with _open(path) as handle:
            for key in handle.keys():
                shape = tuple(handle.get_slice(key).get_shape())
                if family.is_kv_tensor(key):  # float32 stands for any float type: the shape is the same for all
                    shape = family.kv_tensor_shape(key, shape, torch.float32, config, dst)
                name = renamed.get(key, key)
                if name not in expected:
                    raise ValueError(f"{path.name}: tensor {key!r} does not belong to a {target_class.__name__}")
                if shape != expected[name]:
                    raise ValueError(
                        f"{path.name}: {key} would have shape {list(shape)}, but a {target_class.__name__} of this "
                        f"config needs {list(expected[name])}; the checkpoint does not fit its config"
                    )
                found.add(name)
    missing = sorted(set(expected) - found - tied)
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} tensors of a {target_class.__name__}: {missing[:5]}")
    return renamed


def _saved_names(model) -> dict[str, str]:
    """Each state-dict name of ``model`` -> the name transformers' save_pretrained writes it under.

    Raises:
        NotStreamable: the family's saved layout is not a plain renaming (a converter merges or splits tensors).
    """
    state = model.state_dict()
    by_id = {}
    for name, tensor in state.items():
        by_id.setdefault(id(tensor), name)
    saved = _as_saved(model, state)
    names = {}
    for new_name, tensor in saved.items():
        if id(tensor) not in by_id:
            raise NotStreamable(f"{type(model).__name__} saves tensors that transformers converts, not just renames")
        names[by_id[id(tensor)]] = new_name
    for name, tensor in state.items():  # tied aliases save under their first name's new name
        names.setdefault(name, names.get(by_id[id(tensor)], name))
    return names


class NotStreamable(Exception):
    """This checkpoint cannot be converted tensor by tensor; the caller converts it in memory instead."""


def _as_saved(model, tensors: dict) -> dict:
    """``tensors`` under the names transformers' save_pretrained gives them (its reverse weight conversion)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: names are saved as they are
        return dict(tensors)
    return dict(revert_weight_conversion(model, dict(tensors)))


def _open(path: Path):
    from safetensors import safe_open

    return safe_open(str(path), "pt")


# safetensors' dtype names (https://github.com/huggingface/safetensors, format.md) and torch's
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def read_header(path: Path) -> tuple[dict, dict, int]:
    """A safetensors file's tensors (name -> dtype, shape, data_offsets), its ``__metadata__`` (``{}`` if none)
    and where its data starts. The file must have been checked readable (``io.check_checkpoint_folder``)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return header, header.pop("__metadata__", None) or {}, 8 + size


class ByteRange(NamedTuple):
    """A tensor stored as safetensors' ``dtype`` in bytes ``begin:end`` of a source file."""

    dtype: str
    shape: list[int]
    begin: int
    end: int


class Deferred(NamedTuple):
    """A tensor of known dtype and shape, computed (``make()``) only when it is written."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def write_shard(
    path: Path,
    entries: list[tuple[str, torch.Tensor | ByteRange | Deferred]],
    metadata: dict,
    source: Path | None = None,
    written: Callable[[], object] = lambda: None,
) -> int:
    """Write a safetensors file of ``entries`` in their order; returns the bytes of tensor data written.

    The header is written first, from each entry's dtype and shape; then a thread copies the ``ByteRange``
    entries from ``source`` in the kernel while this one computes and writes the tensors, each at its offset
    (``written()`` is called after each entry).
    """
    header, offset, places = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0, []
    for name, item in entries:
        if isinstance(item, ByteRange):
            dtype, shape, size = item.dtype, list(item.shape), item.end - item.begin
        else:
            if item.dtype not in _NAMES:
                raise ValueError(f"tensor {name!r}: dtype {item.dtype} has no safetensors name ({sorted(_DTYPES)})")
            dtype, shape = _NAMES[item.dtype], list(item.shape)
            size = math.prod(shape) * item.dtype.itemsize
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        places.append(offset)
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    start = 8 + len(encoded)
    ranges = [(item, start + at) for (_, item), at in zip(entries, places, strict=True) if isinstance(item, ByteRange)]
    if ranges and source is None:
        raise ValueError(f"{path.name}: byte ranges of a source file, but no source file given")
    with open(path, "wb") as out, open(source, "rb") if source else contextlib.nullcontext() as src:
        out.write(len(encoded).to_bytes(8, "little") + encoded)
        out.flush()
        with ThreadPoolExecutor(1) as pool, _torch_threads(max(1, torch.get_num_threads() - 1) if ranges else None):
            copying = pool.submit(_copy_ranges, src, out, ranges, written) if ranges else None
            for (name, item), at in zip(entries, places, strict=True):
                if isinstance(item, ByteRange):
                    continue
                tensor = item.make() if isinstance(item, Deferred) else item
                if tensor.dtype != item.dtype or tuple(tensor.shape) != tuple(item.shape):
                    raise ValueError(f"tensor {name!r} came out {tensor.dtype} {list(tensor.shape)}, planned "
                                     f"{item.dtype} {list(item.shape)}")  # fmt: skip
                _write_at(out, tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data, start + at)
                written()
            if copying is not None:
                copying.result()
    return offset


@contextlib.contextmanager
def _torch_threads(count: int | None):
    """torch's intra-op threads set to ``count`` (a core is left to the kernel copy; measured faster on 2 cores)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_at(out, data: memoryview, position: int) -> None:
    while len(data):
        done = os.pwrite(out.fileno(), data, position)
        data, position = data[done:], position + done


def _copy_ranges(src, out, ranges: list[tuple[ByteRange, int]], written: Callable[[], object]) -> None:
    for item, position in ranges:
        _copy_range(src, out, item.begin, item.end - item.begin, position)
        written()


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def _copy_range(src, out, begin: int, size: int, position: int) -> None:
    """Copy bytes ``begin:begin + size`` of ``src`` to ``position`` of ``out``, in the kernel where it can."""
    while size:
        try:
            done = os.copy_file_range(src.fileno(), out.fileno(), size, begin, position)
        except (AttributeError, OSError) as err:  # not Linux, or a file system that refuses: through this process
            if isinstance(err, OSError) and err.errno not in _NO_KERNEL_COPY:
                raise
            done = 0
        if done == 0:  # refused, or some file systems' way of saying so: through this process
            chunk = os.pread(src.fileno(), min(size, 64 << 20), begin)
            _write_at(out, memoryview(chunk), position)
            done = len(chunk)
        if done == 0:
            raise ValueError(f"{src.name}: ends before byte {begin + size}")
        begin, position, size = begin + done, position + done, size - done
