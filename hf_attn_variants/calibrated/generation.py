"""Text the source model writes itself, for distillation: what it does when it is used, not only what it reads.

Calibration text (Python's help topics by default) shows a converted model one domain; a chat model is used
in chat turns. :func:`generated_blocks` samples whole turns from the source: where the tokenizer has a chat
template, a user message (sampled from the start of a user turn) and the model's own answer to it; otherwise
free text from the start of a document. Sampling is temperature 1 with nucleus 0.9, seeded.
"""

from __future__ import annotations

import torch

MARK = "\x00MARK\x00"
SAMPLING = {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 0}


def generated_blocks(model, tokenizer, num_samples: int, seq_len: int, seed: int = 0, batch_size: int = 8):
    """``(input_ids, attention_mask)``, each ``(num_samples, seq_len)``: sequences the model wrote, right-padded.

    With a chat template each row is a chat (the template's system turn, if any, a sampled user message, the
    model's sampled answer to it, up to its end of turn); without one, text sampled from the BOS (or EOS)
    token. Rows are cut at ``seq_len``.

    Raises:
        ValueError: a tokenizer with no chat template and neither a BOS nor an EOS token.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: list[torch.Tensor] = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            if getattr(tokenizer, "chat_template", None):
                rows += _chats(model, tokenizer, count, seq_len, pad)
            else:
                rows += _documents(model, tokenizer, count, seq_len, pad)
    ids = torch.full((num_samples, seq_len), pad if pad is not None else 0, dtype=torch.long)
    mask = torch.zeros(num_samples, seq_len, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:seq_len]
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


def _sample(model, tokenizer, texts: list[str], max_new_tokens: int, pad) -> list[torch.Tensor]:
    """Each of ``texts`` (left-padded into one batch) with its sampled continuation, up to its end of turn."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tokenizer.padding_side = side
    out = model.generate(**batch, max_new_tokens=max(1, max_new_tokens), pad_token_id=pad, **SAMPLING).cpu()
    stops = set(_eos_ids(model, tokenizer))
    width = batch["input_ids"].shape[1]
    rows = []
    for prompt, mask, row in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu(), out, strict=True):
        new = row[width:].tolist()
        end = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))  # the end-of-turn token included
        rows.append(torch.cat([prompt[mask.bool()], torch.tensor(new[:end], dtype=torch.long)]))
    return rows


def _chats(model, tokenizer, count: int, seq_len: int, pad) -> list[torch.Tensor]:
    template = tokenizer.apply_chat_template([{"role": "user", "content": MARK}], tokenize=False)
    user_start = template[: template.index(MARK)]
    questions = _sample(model, tokenizer, [user_start] * count, seq_len // 4, pad)
    width = len(tokenizer(user_start, add_special_tokens=False)["input_ids"])
    messages = [tokenizer.decode(q[width:], skip_special_tokens=True).strip() or "Hello." for q in questions]
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True)
        for m in messages
    ]
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chats]
    return _sample(model, tokenizer, chats, seq_len - min(lengths), pad)


def _documents(model, tokenizer, count: int, seq_len: int, pad) -> list[torch.Tensor]:
    start = tokenizer.bos_token or tokenizer.eos_token
    if start is None:
        raise ValueError("text the model writes itself starts from its chat template, BOS or EOS token; the "
                         "tokenizer has none of them")  # fmt: skip
    return _sample(model, tokenizer, [start] * count, seq_len - 1, pad)


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])
