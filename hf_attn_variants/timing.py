"""Timing on noisy machines: candidates interleaved round-robin in one run, reported as ratios with spread.

An absolute time on a shared 2-core machine means little; a ratio measured side by side does
(docs/benchmarks.md). Each round times every candidate once, starting from a different one each
round; the ratio of a candidate to the baseline is taken within each round, then summarised.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .compat import cache_kwargs


class SelfTimed:
    """A candidate that times itself: what it returns is the seconds recorded (e.g. per step of a longer call)."""

    def __init__(self, fn: Callable[[], float]):
        self.fn = fn

    def __call__(self) -> float:
        return self.fn()


def interleaved(
    candidates: dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 2, desc: str = "timing"
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, ``rounds`` times each, interleaved, after ``warmup`` untimed rounds.

    A :class:`SelfTimed` candidate records what it returns instead of the call's wall time.
    """
    if rounds < 1:
        raise ValueError(f"rounds {rounds} must be at least 1")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times = {name: [] for name in names}
    for r in tqdm(range(rounds), desc=desc, leave=False):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # a different one goes first each round
            start = time.perf_counter()
            result = candidates[name]()
            elapsed = time.perf_counter() - start
            times[name].append(result if isinstance(candidates[name], SelfTimed) else elapsed)
    return times


def summarize(values: list[float]) -> dict[str, float]:
    """Median and interquartile range."""
    if len(values) < 2:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, _, q3 = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q1, "q3": q3}


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per-round ratio of each candidate's time to ``baseline``'s, summarised (median, IQR)."""
    base = times[baseline]
    return {name: summarize([t / b for t, b in zip(values, base, strict=True)]) for name, values in times.items()}


def _rss_field(name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[object, int | None]:
    """``(fn(), bytes)``: how far memory rose above its level before ``fn`` at its peak while ``fn`` ran.

    On CUDA: allocated device memory (``torch.cuda`` peak statistics). On the CPU: the process's peak
    resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``); ``None`` where neither exists.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak resident set to the current one
    except OSError:
        return fn(), None
    before = _rss_field("VmRSS")
    result = fn()
    peak = _rss_field("VmHWM")
    return result, None if before is None or peak is None else max(0, peak - before)


DECODE_CACHES = ("static", "dynamic")


def decode_step(
    model, batch: int, context: int, cache: str = "static", spare: int = 0
) -> tuple[Callable[[], None], int]:
    """A callable that runs one decode step of ``model`` at ``context`` cached tokens, and the bytes of the
    ``context + 1`` cached positions that the step reads.

    The cache holds ``context`` random keys and values (the time of a step does not depend on their values,
    and prefilling a long context on a CPU takes minutes); each step appends one token and rolls it back, so
    every call reads exactly ``context`` + 1 positions (sliding-window layers: at most their window, as in
    a real generation; a full window stays full). ``cache``:

    - ``"static"``: transformers' ``StaticCache`` with ``context + 1 + spare`` slots (a ``generate()`` call
      sizes it to the prompt plus ``max_new_tokens``, so a step usually has masked slots after it); the step
      writes its token in place.
    - ``"dynamic"``: ``DynamicCache``, ``generate()``'s default, which concatenates: every step copies the
      whole cache.
    """
    from transformers import DynamicCache, StaticCache

    if cache not in DECODE_CACHES:
        raise ValueError(f"cache {cache!r} is not one of {list(DECODE_CACHES)}")
    if cache == "static":
        kv = StaticCache(config=model.config, max_cache_len=context + 1 + spare)
    else:
        kv = DynamicCache(config=model.config)
    token = torch.zeros(batch, 1, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        model(input_ids=token, **cache_kwargs(kv), use_cache=True)  # allocates the layers' tensors
        for layer in kv.layers:
            _as_if_prefilled(layer, context)
    nbytes = sum(_bytes_read(layer, context) for layer in kv.layers)

    def step():
        with torch.inference_mode():
            model(input_ids=token, **cache_kwargs(kv), use_cache=True)
        for layer in kv.layers:  # back to `context` tokens; a full sliding window stays full (it rolls)
            if not layer.is_sliding or layer.get_seq_length() <= _window(layer):
                _drop_last(layer)
        synchronize(token.device)

    return step, nbytes


def _drop_last(layer) -> None:
    """Forget the position a step appended: ``crop(-1)``, or the static layer's lengths before transformers 5.24."""
    if hasattr(layer, "crop"):
        layer.crop(-1)
        return
    layer.cumulative_length.sub_(1)
    if hasattr(layer, "cumulative_length_int"):
        layer.cumulative_length_int -= 1


def _window(layer) -> int:
    """How many positions a sliding-window layer keeps (static) or attends to (dynamic)."""
    return getattr(layer, "sliding_window", None) or layer.get_max_length()


def _as_if_prefilled(layer, context: int) -> None:
    """Fill a cache layer with random keys and values as if ``context`` tokens had been prefilled."""
    from transformers.cache_utils import StaticLayer

    if isinstance(layer, StaticLayer):  # preallocated (a sliding one holds its window): fill, then set the length
        layer.keys.normal_()
        layer.values.normal_()
        held = min(context, layer.max_cache_len) if layer.is_sliding else context
        layer.cumulative_length.fill_(held)
        if hasattr(layer, "cumulative_length_int"):
            layer.cumulative_length_int = context
        return
    held = min(context, _window(layer) - 1) if layer.is_sliding else context  # a dynamic window keeps window - 1
    shape = (*layer.keys.shape[:2], held, layer.keys.shape[-1])
    layer.keys = torch.randn(shape, dtype=layer.keys.dtype, device=layer.keys.device)
    layer.values = torch.randn(shape, dtype=layer.values.dtype, device=layer.values.device)
    if layer.is_sliding:
        layer.cumulative_length = context


def _bytes_read(layer, context: int) -> int:
    """Bytes of the cached positions one step attends to: context + 1, or at most the window."""
    positions = min(context + 1, _window(layer)) if layer.is_sliding else context + 1
    return (layer.keys[:, :, :1].nbytes + layer.values[:, :, :1].nbytes) * positions  # one position's bytes


def synchronize(device: torch.device | str) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously; a timing must include the kernels)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def prefill(model, batch: int, tokens: int) -> Callable[[], None]:
    """A callable that runs the prefill forward pass of ``tokens`` tokens for ``batch`` sequences."""
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(model.device)

    def run():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
        synchronize(ids.device)

    return run
