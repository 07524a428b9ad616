"""The dataset API: local files of each type, the default prose, packing into blocks, the held-out split."""

import json
import re

import pytest

from hf_attn_variants.data import DEFAULT_DATASET, load_texts, pack, split_blocks

from .conftest import char_tokenizer


def test_default_text_is_python_help_prose():
    ds = load_texts()
    assert ds.column_names == ["text"] and len(ds) > 50
    assert load_texts(DEFAULT_DATASET)["text"] == ds["text"]  # the same, by name


def test_local_files_of_each_type(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph\nstill first.\n\nSecond one.\n\n\n")
    assert load_texts(data_files=str(tmp_path / "a.txt"))["text"] == ["First paragraph\nstill first.", "Second one."]

    rows = [{"body": "alpha"}, {"body": ""}, {"body": "beta"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_texts(data_files=[tmp_path / "b.jsonl"], text_column="body")["text"] == ["alpha", "beta"]

    import datasets

    datasets.Dataset.from_dict({"text": ["gamma", "delta"]}).to_parquet(str(tmp_path / "c.parquet"))
    assert load_texts(data_files=[str(tmp_path / "c.parquet")])["text"] == ["gamma", "delta"]


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("x.csv", "a,b", {}, "data file '{path}': type '.csv' is not one of ['.json', '.jsonl', '.parquet', '.txt']"),
        ("x.jsonl", '{"body": "a"}', {}, "dataset '{path}' has no column 'text'; its columns are ['body']"),
        ("x.jsonl", '{"text": "  "}', {}, "dataset '{path}' has no text in column 'text'"),
        ("x.txt", "\n\n\n", {}, "dataset '{path}' has no text in column 'text'"),
    ],
)
def test_bad_datasets_name_the_problem(tmp_path, name, content, kwargs, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=f"^{re.escape(message.format(path=tmp_path / name))}$"):
        load_texts(data_files=[str(tmp_path / name)], **kwargs)


def test_missing_and_mixed_files(tmp_path):
    missing = f"data file '{tmp_path / 'nope.txt'}' does not exist"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(missing)}$"):
        load_texts(data_files=[str(tmp_path / "nope.txt")])
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.jsonl").write_text('{"text": "b"}')
    with pytest.raises(ValueError, match=r"^data files mix types \['json', 'text'\]; give files of one type$"):
        load_texts(data_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")])


def test_pack_joins_documents_with_eos_and_cuts_equal_blocks():
    import datasets

    tok = char_tokenizer()
    ds = datasets.Dataset.from_dict({"text": ["abcd", "efghij", "k"]})
    blocks = pack(ds, tok, block_size=4)
    stream = tok("abcd")["input_ids"] + [tok.eos_token_id] + tok("efghij")["input_ids"] + [tok.eos_token_id]
    stream += tok("k")["input_ids"] + [tok.eos_token_id]
    assert blocks["input_ids"] == [stream[0:4], stream[4:8], stream[8:12]]  # 14 tokens: the last 2 dropped
    assert blocks["labels"] == blocks["input_ids"]
    with pytest.raises(
        ValueError,
        match=r"^the text holds 14 tokens, fewer than block_size=64 \(one block\); give a smaller block_size or more text$",
    ):
        pack(ds, tok, block_size=64)


def test_split_holds_out_the_last_blocks():
    import datasets

    blocks = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(10)]})
    train, held_out = split_blocks(blocks, 0.2)
    assert train["input_ids"] == [[i] for i in range(8)] and held_out["input_ids"] == [[8], [9]]
    assert len(split_blocks(blocks, 0.5, max_eval_blocks=3)[1]) == 3
    with pytest.raises(ValueError, match="^eval_fraction 1.5 must lie strictly between 0 and 1$"):
        split_blocks(blocks, 1.5)
    with pytest.raises(ValueError, match="^only 1 blocks: nothing left to train on after holding out 1$"):
        split_blocks(blocks.select(range(1)), 0.5)
