"""Offline ``evaluate`` metrics of a causal LM: perplexity and next-token accuracy over sliding windows.

Each metric is a folder holding an ``evaluate`` script; ``evaluate.load(metric_path(name))`` loads it from
this installed package, so the Hugging Face Hub is never asked. ``evaluate`` is imported only when a
metric is loaded.
"""

from __future__ import annotations

import os

METRICS = ("perplexity", "next_token_accuracy")


def metric_path(name: str) -> str:
    """The folder of the metric ``name``: the path ``evaluate.load`` takes to load it offline."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {list(METRICS)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of the metric ``name``; ``kwargs`` (``cache_dir``, ``keep_in_memory``...) go to it."""
    import evaluate  # lazy: evaluate and datasets take seconds to import

    return evaluate.load(metric_path(name), **kwargs)
