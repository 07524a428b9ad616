"""Convert a safetensors checkpoint shard by shard: never the whole model in memory.

Every tensor goes through its family's ``convert_tensor`` (the same code as an in-memory conversion), one
input shard at a time; each output shard keeps its input's name and tensors, so the index carries over.
Peak memory is about one shard read plus its converted K/V tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .convert import check_kv_weight_count
from .families import family_for
from .io import SAFETENSORS_INDEX
from .variants import check_kv_init, resolve_num_kv_heads

# files of a checkpoint folder that are not carried over as they are
_REWRITTEN = {"config.json", SAFETENSORS_INDEX, "README.md"}


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
    keys = sum(_count_keys(f) for f in files)
    with tqdm(total=keys, desc="converting tensors", unit="tensor") as progress:
        for path in files:
            converted = {}
            with _open(path) as handle:
                metadata = handle.metadata() or {}
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    new = family.convert_tensor(key, tensor, config, dst, kv_init, seed)
                    changed += new is not None and key.endswith("weight")
                    tensor = tensor if new is None else new
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    converted[renamed.get(key, key)] = tensor.contiguous()
                    progress.update()
            _save(converted, out / path.name, {**metadata, "format": "pt"})
            total += sum(t.numel() * t.element_size() for t in converted.values())
            weight_map.update(dict.fromkeys(converted, path.name))
            del converted
    check_kv_weight_count(family, config, changed)
    if (src / SAFETENSORS_INDEX).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    target.save_pretrained(out)
    for extra in src.iterdir():  # tokenizer, generation config, chat template...
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in _REWRITTEN:
            shutil.copy2(extra, out / extra.name)
    return target


def _source_class(config) -> type:
    import transformers

    names = getattr(config, "architectures", None) or []
    source_class = getattr(transformers, names[0], None) if names else None
    if source_class is None:
        raise NotStreamable(f"config.architectures {names!r} names no transformers model class")
    return source_class


def _target_class(family, config, dst: int) -> type:
    return family.target_class(_source_class(config), dst, config)


def check_against_model(files: list[Path], config, target, target_class: type, dst: int) -> dict[str, str]:
    """Refuse, before writing anything, a conversion whose tensors would not load into the converted model.

    Reads only the headers: every tensor is converted on the meta device and compared, name and shape, with
    the converted model built on the meta device. Names follow save_pretrained on both sides (transformers
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
                meta = torch.empty(handle.get_slice(key).get_shape(), device="meta")
                new = family.convert_tensor(key, meta, config, dst, "first")  # the shape is the same for all
                shape, name = tuple((meta if new is None else new).shape), renamed.get(key, key)
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


def _count_keys(path: Path) -> int:
    with _open(path) as handle:
        return len(list(handle.keys()))


def _save(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
