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
_CHUNK = 1 << 20  # bytes read at a time when a text file's encoding is checked


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
        ValueError: an unknown file type, a file that is not UTF-8 text (``.txt``, ``.json``, ``.jsonl``) or not
            parquet, one the reader cannot parse, a ``text_column`` missing or not of strings, or no text at all.
        FileNotFoundError: a local file that does not exist.
    """
    import datasets

    if data_files:
        files = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
        builder = check_data_files(files)
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        source = ", ".join(map(str, files))
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
        except (datasets.exceptions.DatasetGenerationError, ValueError, TypeError, StopIteration) as err:
            cause = _root_cause(err)  # datasets wraps the parser's error (pyarrow's, json's) in its own
            raise ValueError(
                f"data file {source!r} cannot be read as {builder} ({type(cause).__name__}: {_first_line(cause)})"
            ) from err
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
    feature = ds.features[text_column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(
            f"dataset {source!r}: column {text_column!r} holds {_feature_name(feature)} values, not text; give a "
            "column of strings (--text_column names another)"
        )
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    ds = ds.select_columns(["text"]).filter(lambda row: bool(row["text"] and row["text"].strip()))
    if len(ds) == 0:
        raise ValueError(f"dataset {source!r} has no text in column {text_column!r}")
    return ds


def check_data_files(files: list) -> str:
    """The datasets builder of local data ``files``, each checked readable as its type; refuse anything else.

    Checked without parsing: the file exists, its suffix is known, text and JSON files are UTF-8 (read in
    chunks, nothing kept), a JSON file is not empty, a parquet file has parquet's magic bytes at both ends.

    Raises:
        FileNotFoundError: a file that does not exist.
        ValueError: an unknown suffix, types mixed, a file that is not what its suffix says.
    """
    builders = set()
    for f in files:
        path = Path(f)
        if not path.is_file():
            if path.exists():
                raise ValueError(f"data file {str(path)!r} is a folder, not a file; name the files in it")
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        if path.suffix not in LOCAL_BUILDERS:
            raise ValueError(f"data file {str(path)!r}: type {path.suffix!r} is not one of {sorted(LOCAL_BUILDERS)}")
        builder = LOCAL_BUILDERS[path.suffix]
        if builder == "parquet":
            _check_parquet(path)
        else:
            _check_utf8(path, builder)
        builders.add(builder)
    if len(builders) > 1:
        raise ValueError(f"data files mix types {sorted(builders)}; give files of one type")
    return builders.pop()


def _check_utf8(path: Path, builder: str) -> None:
    import codecs

    decoder, offset, blank = codecs.getincrementaldecoder("utf-8")(), 0, True
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            try:
                blank = not decoder.decode(chunk).strip() and blank
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"data file {str(path)!r} is not UTF-8 text (byte {chunk[err.start]:#04x} at offset "
                    f"{offset + err.start}): binary data, or another encoding"
                ) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"data file {str(path)!r} is not UTF-8 text: it ends inside a character") from None
    if blank and builder == "json":
        raise ValueError(f"data file {str(path)!r} is empty: no JSON rows, so no text")


def _check_parquet(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise ValueError(f"data file {str(path)!r} is not a parquet file (no PAR1 magic bytes at its start and end)")


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while (err.__cause__ or err.__context__) is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else repr(err)


def _feature_name(feature) -> str:
    """``int64``, ``list of string``, ``json``... for a datasets feature."""
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"list of {_feature_name(inner)}"
    return str(getattr(feature, "dtype", None) or type(feature).__name__.lower())


def pack(ds, tokenizer, block_size: int, num_proc: int | None = None, option: str = "block_size"):
    """Tokenize ``ds`` and cut the concatenated tokens into ``block_size`` blocks (``input_ids``, ``labels``).

    Documents are joined with the tokenizer's EOS token when it has one; the remainder shorter than a
    block is dropped. Blocks keep the order of the text, so the last ones can be held out. ``option`` is how
    errors name ``block_size`` (``calibration_seq_len`` when calibration packs its text).
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise ValueError(f"{option}={block_size!r} must be a whole number of tokens, at least 2")
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
        held = sum(len(ids) for ids in tokens["input_ids"])
        raise ValueError(
            f"the text holds {held} tokens, fewer than {option}={block_size} (one block); give a smaller "
            f"{option} or more text"
        )
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
