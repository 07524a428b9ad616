"""Convert a checkpoint on disk into a new folder: validated first, written atomically, safetensors only."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .auto import AttnVariantForCausalLM, source_tokenizer
from .choices import DTYPES
from .configuration import AttnVariantConfig
from .convert import record_recipe
from .data import check_data_files
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
from .recipe import KVRecipe
from .sources import GGUF_FLOAT_TYPES, source_metadata

logger = logging.getLogger(__name__)


def dtype_from_name(name: str):
    """The ``dtype`` argument of ``from_pretrained`` for one of ``DTYPES`` (``"auto"`` stays a string)."""
    return name if name == "auto" else getattr(torch, name)


def gguf_dtype(path: Path) -> str:
    """What ``dtype="auto"`` writes for the GGUF file ``path``: its float type, or float32 (logged) if quantized."""
    from .sources import gguf_weights_dtype

    dtype, types = gguf_weights_dtype(path)
    if not set(types) <= GGUF_FLOAT_TYPES.keys():
        logger.warning(
            "%s holds quantized weights (%s): writing them as float32, which holds their dequantized values "
            "exactly (about 4 bytes per weight); --dtype bfloat16 or float16 writes half that, rounded",
            path.name,
            ", ".join(types),
        )
    return dtype


def convert_checkpoint(
    src: str,
    out: str | os.PathLike,
    attn_variant: str | None,
    num_key_value_heads: int | None = None,
    kv_init: KVRecipe | str | None = None,
    seed: int | None = None,
    gguf_file: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    **recipe_options,
) -> Path:
    """Write ``src`` (folder, hub id, GGUF file, or ``smollm2``) in ``attn_variant`` to the folder ``out``.

    ``kv_init`` is the recipe (a ``KVRecipe``, a method or a preset name; default ``auto``: ``best`` with the
    source's tokenizer, else ``mean``), ``recipe_options`` its fields. A recipe that does not merge from
    calibration (mean, first, random; any expansion) streams a local safetensors checkpoint shard by shard.

    Everything is checked before any weight is read; the model, its tokenizer and a model card are
    written to a temporary folder beside ``out`` that replaces ``out`` only once complete, under a lock
    (``.OUT.lock``) held from the first check to the end. Only a model folder's files reach ``out``
    (``io.is_model_file``: no pickles, no ``*.py``, no ``auto_map``), and ``--overwrite`` only replaces a
    folder a conversion could have written (``io.model_folder_problem``). Only safetensors (and GGUF)
    weights are read; pickled checkpoints are refused by transformers' ``use_safetensors=True``.

    Raises:
        ValueError, FileExistsError, OSError: bad variant or head count, unsupported family, an ``out``
            that exists (without ``overwrite``), would clobber the source or a user's folder, is a link or
            is being written by another conversion (``io.OutputBusy``); a missing or unreadable source.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    recipe = KVRecipe.build(kv_init, kv_init_seed=seed, **recipe_options)
    if recipe.calibration_data_files:  # every input read and checked before the model is loaded
        check_data_files(recipe.calibration_data_files)
    asked = (src, gguf_file)  # as given: "smollm2" names its Hub model in the card
    src, gguf_file = resolve_source(src, gguf_file)
    # OUT checked, then locked (a second conversion to it fails at once) and checked again, for the whole run
    with locked_output_dir(src, out, overwrite, replaceable=model_folder_problem) as out:
        return _convert(src, out, asked, attn_variant, num_key_value_heads, recipe, gguf_file, dtype)


def _convert(src, out, asked, attn_variant, num_key_value_heads, recipe: KVRecipe, gguf_file, dtype) -> Path:
    """``asked``: the source and GGUF file as the caller named them, for the card and the saved config."""
    located = {"gguf_file": gguf_file} if gguf_file else {}
    files = check_checkpoint_folder(src) if not gguf_file and Path(src).is_dir() else []
    # reads and checks config.json, or a GGUF file's header and metadata, before anything reads its tensors
    request = AttnVariantConfig.from_pretrained(src, attn_variant, num_key_value_heads, kv_init=recipe, **located)
    if dtype == "auto" and gguf_file and Path(src, gguf_file).is_file():
        dtype = gguf_dtype(Path(src, gguf_file))
    source = (source_name(*asked), source_metadata(*asked))
    base = request.base()
    check_kv_shapes(files, base)
    torch_dtype = dtype_from_name(dtype)
    tokenizer = _load_tokenizer(src, located)
    fewer = request.num_key_value_heads % family_for(base).num_kv_heads(base) != 0
    if fewer:  # auto: best with the source's tokenizer to read calibration text, else mean (logged)
        readable = tokenizer is not None and source_tokenizer(src, located, base) is not None
        recipe = recipe.resolve(can_calibrate=readable)
        if recipe.needs_calibration and not readable:
            raise ValueError(
                f"kv_init={recipe.kv_init!r} with {recipe.merge_kwargs()} calibrates on text, which needs the "
                f"source's tokenizer, and {src!r} has none; use --kv-init mean (or first, random)"
            )
        request.recipe = recipe.options()
    merging = fewer and recipe.needs_calibration
    if files and not merging:  # a local safetensors checkpoint: shard by shard, never the whole model in memory
        from .streaming import NotStreamable

        try:
            return _convert_streaming(src, files, base, out, source, attn_variant, num_key_value_heads,
                                      recipe if fewer else None, None if dtype == "auto" else torch_dtype)  # fmt: skip
        except NotStreamable as why:
            logger.warning("converting in memory: %s", why)
    try:
        model = AttnVariantForCausalLM.from_pretrained(
            src, config=request, dtype=torch_dtype, **(located or {"use_safetensors": True})
        )
    except RuntimeError as err:  # transformers' report of weights whose shapes do not fit the config
        raise ValueError(
            f"the weights of {src!r} do not fit its config (transformers' report is above): {err}"
        ) from err
    if fewer:
        model.config.attn_variant_recipe["preset"] = recipe.preset  # "auto -> best": what was asked, and got
    name_source(model.config, source)
    card = render_model_card(model, source[0], family_for(base).num_kv_heads(base), **source[1])
    with atomic_output_dir(out) as tmp, write_errors(out):  # a full disk: an OSError, not a SafetensorError
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        card.save(tmp / "README.md")
        keep_only_model_files(tmp)  # not what transformers' save may add (a custom model's *.py files)
    return out


def _convert_streaming(src, files, config, out, source, attn_variant, num_key_value_heads, recipe, dtype):
    """Shard by shard; ``recipe`` is a pooling one (``None``: more K/V heads, exact copies)."""
    from types import SimpleNamespace

    from .streaming import stream_convert

    kv_init, seed = (recipe.kv_init, recipe.kv_init_seed) if recipe is not None else ("mean", 0)
    with atomic_output_dir(out) as tmp:
        target = stream_convert(
            Path(src), files, config, tmp, attn_variant, num_key_value_heads, kv_init, seed, dtype=dtype
        )
        converted = SimpleNamespace(config=target)
        record_recipe(converted, recipe, None)
        name_source(target, source)
        target.save_pretrained(tmp)  # config.json again, with the recipe recorded
        card = render_model_card(converted, source[0], family_for(config).num_kv_heads(config), **source[1])
        card.save(tmp / "README.md")
        keep_only_model_files(tmp)
    return out


def name_source(config, source) -> None:
    """Name the source in ``config``: its Hub id where known, else how the card names it.

    transformers keeps ``_name_or_path`` out of ``config.json``; a GGUF source leaves its ``general.name``
    there as ``_model_name_or_path`` (SmolLM2's reads "Smollm2 135M 8k Lc100K Mix1 Ep2"), replaced here.
    """
    name = source[1].get("base_model") or source[0]
    config._name_or_path = name
    if hasattr(config, "_model_name_or_path"):
        config._model_name_or_path = name


def check_kv_shapes(files: list[Path], config) -> None:
    """Refuse safetensors ``files`` whose K/V projections do not have the shape ``config`` gives them.

    Reads only the headers: every K/V tensor is checked by its family's ``check_kv_tensor``, which checks its
    rows against the config's K/V heads x head_dim (a wrong ``head_dim`` is caught here, before transformers
    would fail half-way through loading).

    Raises:
        ValueError: a K/V tensor's shape does not fit the config.
    """
    from safetensors import safe_open

    from .convert import check_kv_weight_count
    from .streaming import _DTYPES

    if not files:  # a GGUF file or a hub id: no safetensors headers to read (the load itself checks)
        return
    family = family_for(config)
    found = 0
    for path in files:
        with safe_open(str(path), "pt") as handle:
            for key in filter(family.is_kv_tensor, handle.keys()):
                header = handle.get_slice(key)  # an integer K/V tensor is refused by its header's dtype
                family.check_kv_tensor(key, header.get_shape(), _DTYPES.get(header.get_dtype(), torch.uint8), config)
                found += key.endswith("weight")
    check_kv_weight_count(family, config, found)  # the config's layers against the weights, before any is built
    check_weight_shapes(files, config)


def check_weight_shapes(files: list[Path], config) -> None:
    """Refuse safetensors ``files`` holding a tensor whose shape is not the one the config's own model gives it
    (a vocabulary, hidden or MLP size the weights do not have): from the headers and the model built on the meta
    device, before transformers would allocate a model of the config's sizes to load them into.

    Raises:
        ValueError: the first tensor that does not fit, with both shapes.
    """
    import transformers
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except ValueError:  # no causal-LM class for this config: nothing to compare with here
        return
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    for path in files:
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                shape = list(handle.get_slice(key).get_shape())
                if key in expected and shape != expected[key]:
                    raise ValueError(
                        f"{path.name}: {key} would have shape {shape}, but a {type(model).__name__} of this config "
                        f"needs {expected[key]}; the checkpoint does not fit its config"
                    )


def _load_tokenizer(src, located: dict):
    from .sources import load_tokenizer

    try:
        return load_tokenizer(src, **located)
    except (OSError, ValueError, KeyError) as err:  # a weights-only folder: the checkpoint is still complete
        logger.warning("no tokenizer saved: %s", err)
        return None
