"""Sliding-window next-token scores of a causal LM over a token stream, shared by the metrics.

This follows transformers' guide "Perplexity of fixed-length models": the texts are joined by blank lines
into one token stream, read in windows of ``max_length`` tokens that move by ``stride``, and the labels of
tokens an earlier window already scored are masked with -100, so every token is scored once, with as much
context as its window holds.

Conventions: input position ``i`` of the stream predicts token ``i + 1``, and a window feeding tokens
``begin:end`` is scored against tokens ``begin + 1:end + 1``; its last prediction is scored too (the guide's
``labels=input_ids`` shift drops it), so no token is lost at a window boundary and ``count`` is always the
stream's length minus one, for every stride. The stream starts with the tokenizer's BOS token when
``add_start_token`` asks for it, which makes the first text token scored too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

SEPARATOR = "\n\n"  # between texts, as in the guide
MAX_LENGTH_CAP = 1024  # default window cap: a longer one costs memory more than it changes the score
IGNORE_INDEX = -100  # label of a token not scored in a window, as transformers' losses take it

# the arguments both metrics take, for their ``inputs_description``
ARGS_DESCRIPTION = """
    predictions (`list` of `str`): the texts, joined by blank lines into one token stream.
    model: an in-memory causal LM (a transformers `PreTrainedModel`) whose forward returns `.logits`.
    tokenizer: the model's tokenizer.
    max_length (`int`, optional): tokens per window (at least 2); default the model's maximum positions,
        capped at 1024.
    stride (`int`, optional): tokens a window moves by, 1 to `max_length`; default `max_length // 2`.
    batch_size (`int`, defaults to 1): windows run together.
    add_start_token (`bool`, optional): lead the stream with the tokenizer's BOS token so the first text token
        is scored too; default: when the tokenizer has one.
    device (optional): where the windows are sent; default the model's device (the model is never moved).
    progress (`bool`, defaults to False): show a progress bar over the windows.
"""

CITATION = """\
@inproceedings{wolf-etal-2020-transformers,
    title = "Transformers: State-of-the-Art Natural Language Processing",
    author = "Thomas Wolf and Lysandre Debut and Victor Sanh and Julien Chaumond and Clement Delangue and
              Anthony Moi and Pierric Cistac and Tim Rault and Remi Louf and Morgan Funtowicz and
              Joe Davison and Sam Shleifer and Patrick von Platen and Clara Ma and Yacine Jernite and
              Julien Plu and Canwen Xu and Teven Le Scao and Sylvain Gugger and Mariama Drame and
              Quentin Lhoest and Alexander M. Rush",
    booktitle = "Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing:
                 System Demonstrations",
    year = "2020",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2020.emnlp-demos.6",
    pages = "38--45"
}
"""

GUIDE_URL = "https://huggingface.co/docs/transformers/perplexity"


def default_max_length(model, cap: int = MAX_LENGTH_CAP) -> int:
    """The model's maximum positions (``max_position_embeddings`` or ``n_positions``), capped at ``cap``."""
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(positions, cap) if positions else cap


def check_window(max_length: int, stride: int, batch_size: int = 1) -> None:
    """Raise ValueError unless ``max_length >= 2``, ``1 <= stride <= max_length`` and ``batch_size >= 1``.

    A shorter window would score each token from its predecessor alone; a longer stride would skip tokens.
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride={stride} must be between 1 and max_length={max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")


def token_stream(tokenizer, texts: str | Sequence[str], add_start_token: bool | None = None) -> list[int]:
    """Token ids of ``texts`` joined by blank lines, tokenized once without special tokens.

    ``add_start_token``: ``None`` leads the stream with the tokenizer's BOS token when it has one, ``True``
    requires one (ValueError if there is none), ``False`` never adds it.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    ids = list(tokenizer(SEPARATOR.join(texts), add_special_tokens=False, verbose=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_start_token and bos is None:
        raise ValueError(f"add_start_token={add_start_token} but the tokenizer has no bos_token")
    if add_start_token is not False and bos is not None:
        ids.insert(0, bos)
    if len(ids) < 2:
        raise ValueError(f"the texts make {len(ids)} token(s); scoring needs at least 2")
    return ids


def windows(num_inputs: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, scored_from)`` of each window over input positions ``0:num_inputs``.

    A window feeds positions ``begin:end`` and scores the predictions from ``scored_from`` on: those no
    earlier window scored.
    """
    spans, scored_to = [], 0
    for begin in range(0, num_inputs, stride):
        end = min(begin + max_length, num_inputs)
        spans.append((begin, end, scored_to))
        scored_to = end
        if end == num_inputs:
            break
    return spans


def window_batches(spans: list[tuple[int, int, int]], batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive windows, ``batch_size`` at most at a time, a batch never mixing lengths (so no padding)."""
    batch = []
    for span in spans:
        if batch and (len(batch) == batch_size or span[1] - span[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(span)
    if batch:
        yield batch


def window_labels(stream: torch.Tensor, begin: int, end: int, scored_from: int) -> torch.Tensor:
    """The tokens that positions ``begin:end`` predict, -100 where an earlier window scored them already."""
    labels = stream[begin + 1 : end + 1].clone()
    labels[: max(scored_from - begin, 0)] = IGNORE_INDEX
    return labels


def score_batch(model, stream: torch.Tensor, batch: list[tuple[int, int, int]], device) -> tuple[float, int, int]:
    """Summed NLL (in float32), argmax hits and count of the predictions a batch of windows scores."""
    input_ids = torch.stack([stream[begin:end] for begin, end, _ in batch]).to(device)
    logits = model(input_ids=input_ids, use_cache=False).logits
    # labels go where the logits are: on a model split over devices, its last one
    labels = torch.stack([window_labels(stream, *span) for span in batch]).to(logits.device)
    scored = labels != IGNORE_INDEX
    logits, targets = logits[scored].float(), labels[scored]  # (count, vocab), (count,)
    nll = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.argmax(dim=-1) == targets).sum()
    return nll.item(), int(correct.item()), int(targets.numel())


def model_device(model) -> torch.device:
    """The device of the model's first parameter (where its embeddings usually are), CPU if it has none."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def windowed_token_scores(
    model,
    tokenizer,
    texts: str | Sequence[str],
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    add_start_token: bool | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """Summed NLL, correct argmax predictions and count of the scored tokens of ``texts``, over sliding windows.

    Args:
        model: a causal LM whose ``forward(input_ids=..., use_cache=False)`` returns ``.logits``; run in eval
            mode under ``torch.inference_mode`` (its training mode is restored after) and never moved.
        tokenizer: the model's tokenizer.
        texts: the texts, joined by blank lines into one token stream.
        max_length: tokens per window; default the model's maximum positions, capped at 1024.
        stride: tokens a window moves by; default ``max_length // 2``. ``stride == max_length`` reads
            disjoint windows; a smaller one gives every token scored after the first window at least
            ``max_length - stride + 1`` tokens of context.
        batch_size: windows of one length run together.
        add_start_token: see ``token_stream``.
        device: where the windows are sent; default the device of the model's first parameter.
        progress: show a tqdm bar over the batches of windows.

    Returns:
        ``{"nll_sum": float, "correct": int, "count": int}``, ``count`` being the stream's length minus one.
    """
    max_length = default_max_length(model) if max_length is None else max_length
    stride = max(max_length // 2, 1) if stride is None else stride
    check_window(max_length, stride, batch_size)
    stream = torch.tensor(token_stream(tokenizer, texts, add_start_token), dtype=torch.long)
    batches = list(window_batches(windows(len(stream) - 1, max_length, stride), batch_size))
    device = model_device(model) if device is None else device
    nll_sum, correct, count = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="windows", disable=not progress):
                batch_nll, batch_correct, batch_count = score_batch(model, stream, batch, device)
                nll_sum, correct, count = nll_sum + batch_nll, correct + batch_correct, count + batch_count
    finally:
        model.train(was_training)
    return {"nll_sum": nll_sum, "correct": correct, "count": count}


def metric_info(description: str, inputs_description: str):
    """The ``evaluate.MetricInfo`` both metrics share: their texts differ, the one feature does not."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=CITATION,
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string")}),
        reference_urls=[GUIDE_URL],
    )
