"""lm-evaluation-harness on a tiny MQA variant with the package's local task, offline."""

from __future__ import annotations

import functools
import json
import re
import socket
import sys

import pytest
import torch

import hf_attn_variants as hav
from hf_attn_variants.lm_eval_support import TASKS_DIR, run_lm_eval

from .conftest import char_tokenizer, tiny_model

TASK = "hav_pydoc_next_word"
LIMIT = 8


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def mqa_model(tokenizer):
    model = hav.convert(tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=512), "mqa")
    assert model.config.num_key_value_heads == 1
    return model


@pytest.fixture(autouse=True)
def offline_single_thread(monkeypatch):
    """No socket may connect; one torch thread (a tiny model on a busy 2-core box is faster so)."""
    attempts = []

    def connect(sock, address, *args):
        attempts.append(address)
        raise OSError("network access in an offline test")

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", connect)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert attempts == []


def choice_logprob(model, tokenizer, context: str, choice: str) -> float:
    ids = tokenizer(context + " " + choice, return_tensors="pt").input_ids
    n_context = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logprobs = model(ids[:, :-1]).logits.log_softmax(-1)[0]
    return logprobs[n_context - 1 :].gather(-1, ids[0, n_context:, None]).sum().item()


def predicted(model, tokenizer, doc: dict, normalised: bool = False) -> int:
    """The choice of highest log-likelihood (``normalised``: per character of the choice, lm-eval's acc_norm)."""
    scores = [choice_logprob(model, tokenizer, doc["context"], choice) for choice in doc["choices"]]
    if normalised:
        scores = [score / len(choice) for score, choice in zip(scores, doc["choices"], strict=True)]
    return scores.index(max(scores))


def assert_binomial(metrics: dict, n: int) -> None:
    """acc and acc_norm are k of ``n`` documents right; their stderr is the sample standard error of that mean."""
    for name in ("acc", "acc_norm"):
        p = metrics[name]
        assert p * n == round(p * n), (name, metrics)
        assert metrics[f"{name}_stderr"] == pytest.approx((p * (1 - p) / (n - 1)) ** 0.5), (name, metrics)


def test_local_task_on_mqa_variant(mqa_model, tokenizer):
    results = run_lm_eval(mqa_model, tokenizer, [TASK], limit=LIMIT, batch_size=4)
    metrics = results[TASK]
    assert metrics["sample_len"] == LIMIT
    assert_binomial(metrics, LIMIT)
    # the harness's accuracy is the argmax of the choices' log-likelihoods, recomputed here by hand
    docs = [json.loads(line) for line in (TASKS_DIR / "pydoc_next_word.jsonl").read_text().splitlines()]
    docs = [doc for doc in docs if doc["split"] == "test"][:LIMIT]
    hits = [predicted(mqa_model, tokenizer, doc) == doc["label"] for doc in docs]
    assert metrics["acc"] == pytest.approx(sum(hits) / LIMIT)
    hits = [predicted(mqa_model, tokenizer, doc, normalised=True) == doc["label"] for doc in docs]
    assert metrics["acc_norm"] == pytest.approx(sum(hits) / LIMIT)


def test_fewshot_runs(mqa_model, tokenizer):
    metrics = run_lm_eval(mqa_model, tokenizer, [TASK], limit=2, batch_size=8, num_fewshot=2)[TASK]
    assert metrics["sample_len"] == 2
    assert_binomial(metrics, 2)


def test_unknown_task_names_the_available_ones(mqa_model, tokenizer, monkeypatch):
    import lm_eval.tasks

    # skip indexing lm-eval's ~15k built-in YAMLs (slow); the message is built the same way
    monkeypatch.setattr(
        lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager, include_defaults=False)
    )
    message = (
        "unknown lm-eval task(s) ['hav_pydoc_next_wrd']; close matches: ['hav_pydoc_next_word']; local tasks: "
        "['hav_pydoc_next_word']; 1 names in all (lm_eval.tasks.TaskManager().all_tasks)"
    )  # 1 name: the built-in tasks are not indexed here
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        run_lm_eval(mqa_model, tokenizer, ["hav_pydoc_next_wrd"])


def test_missing_lm_eval_names_the_extra(mqa_model, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"^run_lm_eval needs lm-eval: pip install 'hf_attn_variants\[lm-eval\]'$"):
        run_lm_eval(mqa_model, tokenizer, [TASK])
