"""Loading: the source model and tokenizer, and the text blocks, as every front end reads them.

``train``, the trade-off table and the benchmarks load through here: a source is checked (config, family,
variant) before any weight is read, only safetensors or GGUF weights are read, and the text is packed into
blocks of which the last are held out for evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import transformers

from .checkpoint import dtype_from_name
from .convert import drop_gguf_record
from .data import load_texts, pack, split_blocks
from .default_model import resolve_source, source_name
from .families import family_for
from .io import check_checkpoint_folder
from .sources import load_config, load_tokenizer
from .variants import resolve_num_kv_heads

if TYPE_CHECKING:
    from .training import DataArguments, ModelArguments


def check_source(model_name_or_path: str, gguf_file: str | None = None, model_args=None):
    """Read the source's config and check it (and the variant asked for, against its heads) before any weight is
    read or output_dir exists; returns the config."""
    src, gguf_file = resolve_source(model_name_or_path, gguf_file)
    config = load_config(src, gguf_file)
    family = family_for(config)
    family.check_config(config)
    if model_args is not None and (model_args.attn_variant or model_args.num_key_value_heads):
        resolve_num_kv_heads(model_args.attn_variant, model_args.num_key_value_heads, family.num_heads(config))
    return config


def load_source(model_args: ModelArguments):
    """``(source model, tokenizer, display name)``; only safetensors or GGUF weights are read."""
    name = source_name(model_args.model_name_or_path, model_args.gguf_file)
    src, gguf_file = resolve_source(model_args.model_name_or_path, model_args.gguf_file)
    located = {"gguf_file": gguf_file} if gguf_file else {}
    if not gguf_file and Path(src).is_dir():
        check_checkpoint_folder(src)  # safetensors only, intact, no index entry outside the folder
    tokenizer = load_tokenizer(src, gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = dict(located or {"use_safetensors": True}, dtype=dtype_from_name(model_args.dtype))
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    source = drop_gguf_record(transformers.AutoModelForCausalLM.from_pretrained(src, **kwargs))
    return source, tokenizer, name


def load_blocks(data_args: DataArguments, tokenizer):
    """``(train, held_out)`` token blocks of the text ``data_args`` names."""
    texts = load_texts(
        data_args.dataset_name,
        data_args.dataset_config,
        data_args.dataset_split,
        data_args.data_files,
        data_args.text_column,
    )
    return split_blocks(
        pack(texts, tokenizer, data_args.block_size), data_args.eval_fraction, data_args.max_eval_blocks
    )
