"""Text the source model writes itself, for distillation: what it does when it is used, not only what it reads.

Calibration text (Python's help topics by default) shows a converted model one domain; a chat model is used
in chat turns. :func:`generated_blocks` samples blocks from the source itself, starting where a user's message
starts in its chat template (its system turn, if any, then the user's turn header), or, without a chat template,
at its BOS (or EOS) token; the end of a turn is not allowed to stop a block, so the model goes on into further
turns and text of its own. Sampling is temperature 1 with nucleus 0.9, seeded.

Measured on SmolLM2-135M-Instruct (docs/conversion.md): distilling on these blocks with the calibration text
kept more of the source's answers and of its perplexity on text of another domain than on the calibration
text alone; sampled whole chats (a question, then the answer up to its end of turn) did no better than these.
"""

from __future__ import annotations

import torch

from ..answers import pad_token_id

MARK = "\x00MARK\x00"
SAMPLING = {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 0}


def can_write(tokenizer) -> bool:
    """Whether :func:`generated_blocks` has somewhere to start (see :func:`start_ids`)."""
    return bool(start_ids(tokenizer))


def start_ids(tokenizer) -> list[int]:
    """Where the model starts writing: the chat template up to a user message's text, else its BOS (EOS) token.

    Empty where there is neither (a template that starts with the message's text, or leaves it out, falls back to
    the tokens).
    """
    if getattr(tokenizer, "chat_template", None):
        template = tokenizer.apply_chat_template([{"role": "user", "content": MARK}], tokenize=False)
        ids = tokenizer(template.partition(MARK)[0], add_special_tokens=False)["input_ids"] if MARK in template else []
        if ids:
            return ids
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [] if token is None else [token]


def generated_blocks(model, tokenizer, num_samples: int, seq_len: int, seed: int = 0, batch_size: int = 16):
    """``(num_samples, seq_len)`` token blocks the model wrote from :func:`start_ids`, ``batch_size`` at a time.

    Every block is full: the start, then ``seq_len`` minus its length sampled tokens (ends of turn do not stop
    it). The caller's random state is left as it was.

    Raises:
        ValueError: nowhere to start (see :func:`start_ids`), or a start as long as ``seq_len``.
    """
    ids = start_ids(tokenizer)
    if not ids:
        raise ValueError("text the model writes itself starts from its chat template, BOS or EOS token; the "
                         "tokenizer has none of them")  # fmt: skip
    start = torch.tensor([ids])
    new = seq_len - start.shape[1]
    if new < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room after the {start.shape[1]} tokens the model starts from")
    pad = pad_token_id(tokenizer)
    rows = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        for first in range(0, num_samples, batch_size):
            ids = start.repeat(min(batch_size, num_samples - first), 1).to(model.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, pad_token_id=pad, **SAMPLING)  # fmt: skip
            rows.append(out.cpu())
    return torch.cat(rows)
