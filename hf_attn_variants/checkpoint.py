"""Convert a checkpoint on disk into a new folder: validated first, written atomically, safetensors only."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .auto import AttnVariantForCausalLM
from .calibration import MergeArguments
from .configuration import AttnVariantConfig
from .convert import merges_heads
from .default_model import resolve_source, source_name
from .families import family_for
from .io import (
    atomic_output_dir,
    check_checkpoint_folder,
    keep_only_model_files,
    locked_output_dir,
    model_folder_problem,
    write_errors,
)
from .model_card import render_model_card

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def dtype_from_name(name: str):
    """The ``dtype`` argument of ``from_pretrained`` for one of ``DTYPES`` (``"auto"`` stays a string)."""
    return name if name == "auto" else getattr(torch, name)


def convert_checkpoint(
    src: str,
    out: str | os.PathLike,
    attn_variant: str | None,
    num_key_value_heads: int | None = None,
    kv_init: str = "mean",
    seed: int = 0,
    gguf_file: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    merge: MergeArguments | None = None,
) -> Path:
    """Write ``src`` (folder, hub id, GGUF file, or ``smollm2``) in ``attn_variant`` to the folder ``out``.

    Everything is checked before any weight is read; the model, its tokenizer and a model card are
    written to a temporary folder beside ``out`` that replaces ``out`` only once complete. Only safetensors (and GGUF)
    weights are read; pickled checkpoints are refused by transformers' ``use_safetensors=True``.

    Raises:
        ValueError, FileExistsError, OSError: bad variant or head count, unsupported family, an ``out``
            that exists (without ``overwrite``) or would clobber the source, a missing or unreadable source.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    name = source_name(src, gguf_file)
    src, gguf_file = resolve_source(src, gguf_file)
    with locked_output_dir(src, out, overwrite, replaceable=model_folder_problem) as out:
        return _convert(src, out, name, attn_variant, num_key_value_heads, kv_init, seed, gguf_file, dtype, merge)


def _convert(src, out, name, attn_variant, num_key_value_heads, kv_init, seed, gguf_file, dtype, merge) -> Path:
    located = {"gguf_file": gguf_file} if gguf_file else {}
    files = check_checkpoint_folder(src) if not gguf_file and Path(src).is_dir() else []
    request = AttnVariantConfig.from_pretrained(
        src, attn_variant, num_key_value_heads, kv_init=kv_init, kv_init_seed=seed, **located
    )
    base = request.base()
    check_kv_shapes(files, base)
    torch_dtype = dtype_from_name(dtype)
    merge = merge or MergeArguments()
    merging = merges_heads(kv_init, merge.grouping, merge.fit, merge.sequential, merge.refine_steps) and (
        request.num_key_value_heads % family_for(base).num_kv_heads(base) != 0
    )
    if files and not merging:  # a local safetensors checkpoint: shard by shard, never the whole model in memory
        from .streaming import NotStreamable

        try:
            return _convert_streaming(src, files, base, out, name, attn_variant, num_key_value_heads, kv_init, seed,
                                      None if dtype == "auto" else torch_dtype)  # fmt: skip
        except NotStreamable as why:
            logger.warning("converting in memory: %s", why)
    try:
        options = {}
        if merging:  # merged in memory from calibration statistics (the source's tokenizer reads the text)
            options = dict(
                grouping=merge.grouping, fit=merge.fit, sequential=merge.sequential, refine_steps=merge.refine_steps
            )
            options["calibration"] = dict(
                num_samples=merge.calibration_samples,
                seq_len=merge.calibration_seq_len,
                seed=merge.calibration_seed,
                data_files=merge.calibration_data_files,
            )
        model = AttnVariantForCausalLM.from_pretrained(
            src, config=request, dtype=torch_dtype, **(located or {"use_safetensors": True}), **options
        )
    except RuntimeError as err:  # transformers' report of weights whose shapes do not fit the config
        raise ValueError(
            f"the weights of {src!r} do not fit its config (transformers' report is above): {err}"
        ) from err
    tokenizer = _load_tokenizer(src, located)
    card = render_model_card(model, name, family_for(base).num_kv_heads(base), kv_init)
    with atomic_output_dir(out) as tmp, write_errors(out):  # a full disk: an OSError, not a SafetensorError
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        card.save(tmp / "README.md")
        keep_only_model_files(tmp)
    return out


def _convert_streaming(src, files, config, out, name, attn_variant, num_key_value_heads, kv_init, seed, dtype):
    from types import SimpleNamespace

    from .streaming import stream_convert

    with atomic_output_dir(out) as tmp:
        target = stream_convert(
            Path(src), files, config, tmp, attn_variant, num_key_value_heads, kv_init, seed, dtype=dtype
        )
        card = render_model_card(SimpleNamespace(config=target), name, family_for(config).num_kv_heads(config), kv_init)
        card.save(tmp / "README.md")
        keep_only_model_files(tmp)
    return out


def check_kv_shapes(files: list[Path], config) -> None:
    """Refuse safetensors ``files`` whose K/V projections do not have the shape ``config`` gives them.

    Reads only the headers: every K/V tensor goes through its family's conversion on the meta device, which
    checks its rows against the config's K/V heads x head_dim (a wrong ``head_dim`` is caught here, before
    transformers would fail half-way through loading).

    Raises:
        ValueError: a K/V tensor's shape does not fit the config.
    """
    from safetensors import safe_open

    from .convert import check_kv_weight_count
    from .streaming import _DTYPES

    family = family_for(config)
    kv, found = family.num_kv_heads(config), 0
    for path in files:
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                header = handle.get_slice(key)  # an integer K/V tensor is refused by its header's dtype
                dtype = _DTYPES.get(header.get_dtype(), torch.uint8)
                meta = torch.empty(header.get_shape(), dtype=dtype, device="meta")
                found += family.convert_tensor(key, meta, config, kv, "first") is not None and key.endswith("weight")
    check_kv_weight_count(family, config, found)  # the config's layers against the weights, before any is built


def _load_tokenizer(src, located: dict):
    from .sources import load_tokenizer

    try:
        return load_tokenizer(src, **located)
    except (OSError, ValueError, KeyError) as err:  # a weights-only folder: the checkpoint is still complete
        logger.warning("no tokenizer saved: %s", err)
        return None
