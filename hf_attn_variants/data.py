"""Text for training and evaluation: a datasets hub id, local files, or English prose every Python carries.

Every source becomes a ``datasets.Dataset`` with one ``text`` column; :func:`pack` tokenizes it and cuts the
token stream into blocks, and :func:`split_blocks` holds the last blocks out for evaluation, so one file
or one hub split serves both training and a held-out perplexity.
"""

from __future__ import annotations

import os
from pathlib import Path

# local file suffix -> datasets builder
LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DEFAULT_DATASET = "pydoc_data.topics"


def load_texts(
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    data_files: list[str] | str | None = None,
    text_column: str = "text",
):
    """A ``datasets.Dataset`` with a ``text`` column from ``data_files``, a hub ``dataset``, or the default prose.

    ``.txt`` files are read one paragraph per row (blank lines separate), ``.jsonl``/``.json``/``.parquet``
    take ``text_column``. With neither ``dataset`` nor ``data_files`` it is the English help text of the
    Python standard library (``pydoc_data.topics``, one topic per row, sorted), which needs no download.

    Raises:
        ValueError: an unknown file type, a missing ``text_column``, or no text at all.
        FileNotFoundError: a local file that does not exist.
    """
    import datasets

    if data_files:
        files = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
        builder = _builder_for(files)
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
        source = ", ".join(map(str, files))
    elif dataset in (None, DEFAULT_DATASET):
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
        ds = datasets.Dataset.from_dict({"text": [topics[k] for k in sorted(topics)]})
        source = DEFAULT_DATASET
    else:
        ds = datasets.load_dataset(dataset, dataset_config, split=split)
        source = dataset
    if text_column not in ds.column_names:
        raise ValueError(f"dataset {source!r} has no column {text_column!r}; its columns are {ds.column_names}")
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    ds = ds.select_columns(["text"]).filter(lambda row: bool(row["text"] and row["text"].strip()))
    if len(ds) == 0:
        raise ValueError(f"dataset {source!r} has no text in column {text_column!r}")
    return ds


def _builder_for(files: list) -> str:
    builders = set()
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        if path.suffix not in LOCAL_BUILDERS:
            raise ValueError(f"data file {str(path)!r}: type {path.suffix!r} is not one of {sorted(LOCAL_BUILDERS)}")
        builders.add(LOCAL_BUILDERS[path.suffix])
    if len(builders) > 1:
        raise ValueError(f"data files mix types {sorted(builders)}; give files of one type")
    return builders.pop()


def pack(ds, tokenizer, block_size: int, num_proc: int | None = None):
    """Tokenize ``ds`` and cut the concatenated tokens into ``block_size`` blocks (``input_ids``, ``labels``).

    Documents are joined with the tokenizer's EOS token when it has one; the remainder shorter than a
    block is dropped. Blocks keep the order of the text, so the last ones can be held out.
    """
    if block_size < 2:
        raise ValueError(f"block_size {block_size} must be at least 2")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def tokenize(batch):
        return {"input_ids": [ids + eos for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]}

    def group(batch):
        stream = [token for ids in batch["input_ids"] for token in ids]
        usable = len(stream) // block_size * block_size
        blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    tokens = ds.map(tokenize, batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenize")
    # one batch over everything: no tokens lost at batch edges (these corpora are small; large ones stream)
    blocks = tokens.map(group, batched=True, batch_size=None, num_proc=None, desc=f"pack into {block_size}")
    if len(blocks) == 0:
        raise ValueError(f"the text holds fewer than block_size={block_size} tokens; use a smaller --block_size")
    return blocks


def split_blocks(blocks, eval_fraction: float, max_eval_blocks: int | None = None):
    """``(train, held_out)``: the last ``eval_fraction`` of the blocks (at least one) are held out."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction {eval_fraction} must lie strictly between 0 and 1")
    n_eval = max(1, round(len(blocks) * eval_fraction))
    if max_eval_blocks is not None:
        n_eval = min(n_eval, max_eval_blocks)
    if n_eval >= len(blocks):
        raise ValueError(f"only {len(blocks)} blocks: nothing left to train on after holding out {n_eval}")
    n_train = len(blocks) - n_eval
    return blocks.select(range(n_train)), blocks.select(range(n_train, len(blocks)))
