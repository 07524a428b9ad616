"""Writes ``pydoc_next_word.jsonl`` from ``pydoc_data.topics`` (deterministic per Python version); loads it for lm-eval."""

import json
import random
import re
from pathlib import Path

DATA = Path(__file__).with_name("pydoc_next_word.jsonl")
N_TRAIN, N_TEST, N_CHOICES, SEED = 8, 32, 4, 1234


def load(**kwargs):
    """The task's ``custom_dataset``: the JSONL next to this file as a ``DatasetDict`` (no cache, no network)."""
    import datasets

    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    splits = {split: [r for r in rows if r["split"] == split] for split in ("train", "test")}
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs) for split, docs in splits.items()})


def first_sentence(text: str):
    """The first prose sentence of 8-30 words ending in a plain lowercase word, as ``(context, word)``."""
    for para in text.split("\n\n"):
        if para.startswith(" ") or "\n   " in para or "*" in para:
            continue  # code blocks, grammar rules and headings
        for sent in re.split(r"(?<=\.)\s+", " ".join(para.split())):
            words = sent.split()
            if (
                8 <= len(words) <= 30
                and re.fullmatch(r"[a-z]{4,}\.", words[-1])
                and sent.isascii()
                and '"' not in sent
                and "- " not in sent
            ):
                return " ".join(words[:-1]), words[-1][:-1]
    return None


def main() -> None:
    from pydoc_data.topics import topics

    rng = random.Random(SEED)
    items = [(name, found) for name in sorted(topics) if (found := first_sentence(topics[name]))]
    items = items[: N_TRAIN + N_TEST]
    pool = sorted({word for _, (_, word) in items})
    with DATA.open("w") as f:
        for i, (name, (context, word)) in enumerate(items):
            choices = rng.sample([w for w in pool if w != word], N_CHOICES - 1) + [word]
            rng.shuffle(choices)
            split = "train" if i < N_TRAIN else "test"
            row = {"split": split, "topic": name, "context": context, "choices": choices, "label": choices.index(word)}
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(items)} items to {DATA}")


if __name__ == "__main__":
    main()
