"""Does a converted model still answer? Greedy answers to a shipped set of short factual chat prompts.

Perplexity can stay close while answers break, so conversions are also judged on answers: the prompts of
``prompts/factual_chat.jsonl`` (each with the words a right answer contains) are asked as chat turns (plain
text where the tokenizer has no chat template), answered greedily, and compared with the source model's
answers to the same prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

import torch

PROMPTS_FILE = "prompts/factual_chat.jsonl"


@dataclass(frozen=True)
class Prompt:
    prompt: str
    answers: tuple[str, ...]  # a right answer contains one of these as a word (case-insensitive)

    def is_right(self, answer: str) -> bool:
        return any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", answer, re.IGNORECASE) for word in self.answers)


def factual_prompts() -> list[Prompt]:
    """The shipped prompts, in file order."""
    text = resources.files("hf_attn_variants").joinpath(PROMPTS_FILE).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [Prompt(row["prompt"], tuple(row["answers"])) for row in rows]


def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 24, batch_size: int = 8) -> list[str]:
    """``model``'s greedy answers to ``prompts``, left-padded batches, special tokens dropped."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:  # the template writes the special tokens itself
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
    else:
        texts = list(prompts)
    pad = pad_token_id(tokenizer)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=not chat).to(model.device)  # fmt: skip
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            new = out[:, batch["input_ids"].shape[1] :]
            answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    finally:
        tokenizer.padding_side = side
    return answers


def pad_token_id(tokenizer) -> int | None:
    """The id ``generate`` pads with: the tokenizer's pad token, else its EOS token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def first_sentence(answer: str) -> str:
    """The answer up to its first full stop, question or exclamation mark, or line break (whitespace folded)."""
    end = len(answer)
    for mark in (". ", "? ", "! ", "\n"):
        found = answer.find(mark)
        if found != -1:
            end = min(end, found + 1)
    return " ".join(answer[:end].split())


def compare_answers(answers: list[str], reference: list[str], prompts: list[Prompt]) -> dict:
    """How ``answers`` agree with ``reference`` (the source's) on ``prompts``.

    ``right``: answers that contain a right word; ``right_as_source``: prompts the source answers rightly that
    these answer rightly too; ``same_first_sentence`` and ``identical``: answers that match the source's.
    """
    pairs = list(zip(answers, reference, prompts, strict=True))
    return {
        "prompts": len(pairs),
        "right": sum(p.is_right(a) for a, _, p in pairs),
        "source_right": sum(p.is_right(r) for _, r, p in pairs),
        "right_as_source": sum(p.is_right(a) and p.is_right(r) for a, r, p in pairs),
        "same_first_sentence": sum(first_sentence(a) == first_sentence(r) for a, r, _ in pairs),
        "identical": sum(a == r for a, r, _ in pairs),
    }
