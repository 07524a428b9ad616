"""The offline perplexity and next-token accuracy metrics, on models whose scores can be worked out by hand.

Convention under test: the texts are joined by blank lines into one token stream (with the tokenizer's BOS
token first when ``add_start_token`` asks for it) and every token but the first is scored exactly once, so
``num_tokens`` is the stream's length minus one, whatever ``max_length`` and ``stride`` are.
"""

from __future__ import annotations

import importlib
import math
import re
import socket
import sys

import pytest
import tokenizers
import torch
import transformers
from transformers.modeling_outputs import CausalLMOutput

import hf_attn_variants
from hf_attn_variants.metrics import METRICS, load_metric, metric_path
from hf_attn_variants.metrics.scoring import windowed_token_scores, windows

CHARS = "abcdefghijklmnopqrstuvwxyz \n.,"  # ids 0..29 in this order
VOCAB = len(CHARS) + 2  # then <unk> (30) and <s> (31), the last id, so that its successor (mod VOCAB) is "a"
TEXT = "the quick brown fox jumps over the lazy dog, and then the lazy dog sleeps."


def char_tokenizer(bos: bool = True):
    """A character-level tokenizer built in memory: a BPE model with no merges splits text into characters."""
    vocab = {**{c: i for i, c in enumerate(CHARS)}, "<unk>": len(CHARS), "<s>": len(CHARS) + 1}
    model = tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>")
    special = {"bos_token": "<s>"} if bos else {}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model), unk_token="<unk>", **special
    )


class ContextFreeLM(torch.nn.Module):
    """A causal LM whose logits at a position depend on that position's token alone (a bigram table)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, **kwargs):
        return CausalLMOutput(logits=self.table[input_ids])


def uniform_lm() -> ContextFreeLM:
    """Equal logits over the vocabulary: every token has probability 1/VOCAB and the argmax tie goes to id 0."""
    return ContextFreeLM(torch.zeros(VOCAB, VOCAB))


def successor_lm(margin: float = 100.0) -> ContextFreeLM:
    """Predicts id + 1 (mod VOCAB) with a logit ``margin`` above every other token."""
    return ContextFreeLM(margin * torch.roll(torch.eye(VOCAB), shifts=1, dims=1))


def random_bigram_lm(seed: int = 0) -> ContextFreeLM:
    """Random logits per current token: scores that differ per token yet ignore the context."""
    return ContextFreeLM(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def llama():
    """A tiny random Llama: its scores depend on the context it is given."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def offline(monkeypatch):
    """No network: Hub offline mode on, and any socket connection fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def refuse(self, address):
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def stream(tokenizer, texts, add_start_token) -> list[int]:
    """The token stream the metrics score, built here independently of the scoring module."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if add_start_token else ids


# (a) uniform logits


def test_uniform_model_has_perplexity_vocab_and_accuracy_of_token_zero():
    # "abracadabra": the 10 scored tokens "bracadabra" hold 4 "a" (id 0), the argmax of equal logits
    scores = windowed_token_scores(uniform_lm(), char_tokenizer(), ["abracadabra"], add_start_token=False)
    assert scores["count"] == 10
    assert scores["correct"] == 4
    assert math.exp(scores["nll_sum"] / scores["count"]) == pytest.approx(VOCAB, rel=1e-6)


def test_texts_are_joined_by_a_blank_line_and_bos_leads_by_default():
    tokenizer = char_tokenizer()
    # <s> a b \n \n c d: 7 tokens, 6 scored; the successor model gets <s>->a, a->b, c->d right
    scores = windowed_token_scores(successor_lm(), tokenizer, ["ab", "cd"])
    assert (scores["count"], scores["correct"]) == (6, 3)
    assert windowed_token_scores(successor_lm(), tokenizer, ["ab", "cd"], add_start_token=False)["count"] == 5


# (b) a model that is always right


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_successor_model_is_always_right(stride):
    scores = windowed_token_scores(successor_lm(), char_tokenizer(), "abcdefghijklmnopqrstuvwxyz", 8, stride)
    assert scores["count"] == 26  # <s> then 26 letters, the letters all scored
    assert scores["correct"] == 26
    assert math.exp(scores["nll_sum"] / scores["count"]) == pytest.approx(1.0, abs=1e-6)


# (c) sliding windows


def test_windows_cover_every_prediction_once():
    for num_inputs, max_length, stride in [(10, 4, 4), (10, 4, 1), (10, 4, 3), (3, 8, 8), (9, 3, 2)]:
        spans = windows(num_inputs, max_length, stride)
        scored = [p for begin, end, scored_from in spans for p in range(max(begin, scored_from), end)]
        assert scored == list(range(num_inputs))
        assert all(end - begin <= max_length for begin, end, _ in spans)


@pytest.mark.parametrize("max_length, stride, batch_size", [(64, 64, 1), (16, 16, 1), (16, 5, 1), (7, 1, 4), (2, 2, 3)])
def test_context_free_model_scores_alike_for_any_window(max_length, stride, batch_size):
    model, tokenizer = random_bigram_lm(), char_tokenizer()
    reference = windowed_token_scores(model, tokenizer, [TEXT, TEXT], max_length=128, stride=128)
    scores = windowed_token_scores(model, tokenizer, [TEXT, TEXT], max_length, stride, batch_size)
    assert scores["count"] == reference["count"] == 2 * len(TEXT) + 2  # <s>, TEXT, "\n\n", TEXT, less one
    assert scores["correct"] == reference["correct"]
    assert scores["nll_sum"] == pytest.approx(reference["nll_sum"], rel=1e-6)


def context_start(token: int, max_length: int, stride: int) -> int:
    """Where the window that scores stream token ``token`` starts: the first window holding position token - 1."""
    return max(0, math.ceil((token - max_length) / stride)) * stride


def reference_scores(model, ids: list[int], max_length: int, stride: int) -> dict:
    """Each token scored on its own, from the context its window gives it."""
    nll_sum, correct = 0.0, 0
    with torch.no_grad():
        for token in range(1, len(ids)):
            context = torch.tensor([ids[context_start(token, max_length, stride) : token]])
            log_probs = model(input_ids=context).logits[0, -1].float().log_softmax(-1)
            nll_sum -= log_probs[ids[token]].item()
            correct += int(log_probs.argmax().item() == ids[token])
    return {"nll_sum": nll_sum, "correct": correct, "count": len(ids) - 1}


@pytest.mark.parametrize("stride", [16, 5])
def test_llama_scores_each_token_once_from_its_window_context(llama, stride):
    tokenizer = char_tokenizer()
    scores = windowed_token_scores(llama, tokenizer, [TEXT], max_length=16, stride=stride, add_start_token=False)
    expected = reference_scores(llama, stream(tokenizer, [TEXT], False), 16, stride)
    assert scores["count"] == expected["count"] == len(TEXT) - 1
    assert scores["correct"] == expected["correct"]
    assert scores["nll_sum"] == pytest.approx(expected["nll_sum"], rel=1e-5)


def test_llama_small_stride_differs_only_through_context(llama):
    tokenizer = char_tokenizer()
    disjoint = windowed_token_scores(llama, tokenizer, [TEXT], max_length=16, stride=16)
    overlapping = windowed_token_scores(llama, tokenizer, [TEXT], max_length=16, stride=4, batch_size=3)
    assert disjoint["count"] == overlapping["count"] == len(TEXT)
    for scores, stride in ((disjoint, 16), (overlapping, 4)):  # each token scored once, from its window's context
        expected = reference_scores(llama, stream(tokenizer, [TEXT], True), 16, stride)
        assert scores["correct"] == expected["correct"]
        assert scores["nll_sum"] == pytest.approx(expected["nll_sum"], rel=1e-5)
    assert disjoint["nll_sum"] != pytest.approx(overlapping["nll_sum"], rel=1e-4)  # more context, other scores
    # a stream no longer than one window leaves the stride nothing to change
    short = [TEXT[:15]]
    one_window = windowed_token_scores(llama, tokenizer, short, max_length=16, stride=16)
    assert windowed_token_scores(llama, tokenizer, short, max_length=16, stride=2) == pytest.approx(one_window)


def test_llama_default_window_is_its_max_positions_and_training_mode_is_restored(llama):
    tokenizer = char_tokenizer()
    llama.train()
    try:
        default = windowed_token_scores(llama, tokenizer, [TEXT, TEXT])
        assert llama.training
    finally:
        llama.eval()
    explicit = windowed_token_scores(llama, tokenizer, [TEXT, TEXT], max_length=64, stride=32)
    assert default == pytest.approx(explicit)


# (d) bad names and arguments


def test_metric_path_rejects_unknown_names():
    with pytest.raises(
        ValueError, match=r"^unknown metric 'bleu'; choose one of \['perplexity', 'next_token_accuracy'\]$"
    ):
        metric_path("bleu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_length=1), "max_length=1 must be at least 2"),
        (dict(max_length=8, stride=0), "stride=0 must be between 1 and max_length=8"),
        (dict(max_length=8, stride=9), "stride=9 must be between 1 and max_length=8"),
        (dict(batch_size=0), "batch_size=0 must be at least 1"),
    ],
)
def test_bad_window_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        windowed_token_scores(uniform_lm(), char_tokenizer(), [TEXT], **kwargs)


def test_bad_streams_raise():
    with pytest.raises(ValueError, match="^add_start_token=True but the tokenizer has no bos_token$"):
        windowed_token_scores(uniform_lm(), char_tokenizer(bos=False), [TEXT], add_start_token=True)
    with pytest.raises(ValueError, match=r"^the texts make 1 token\(s\); scoring needs at least 2$"):
        windowed_token_scores(uniform_lm(), char_tokenizer(bos=False), ["a"])
    # without a BOS token by default, the first text token is not scored
    assert windowed_token_scores(uniform_lm(), char_tokenizer(bos=False), ["ab"])["count"] == 1


# (e) evaluate, offline


def test_importing_the_metrics_package_does_not_import_evaluate(monkeypatch):
    monkeypatch.setitem(sys.modules, "evaluate", None)  # any import of evaluate now fails
    monkeypatch.delitem(sys.modules, "hf_attn_variants.metrics")  # restored after, as is the attribute below
    monkeypatch.setattr(hf_attn_variants, "metrics", hf_attn_variants.metrics)
    assert importlib.import_module("hf_attn_variants.metrics").METRICS == METRICS


def test_metrics_load_offline_and_compute_hand_computed_scores(offline, tmp_path):
    perplexity = load_metric("perplexity", cache_dir=str(tmp_path))
    accuracy = load_metric("next_token_accuracy", keep_in_memory=True)
    options = dict(model=uniform_lm(), tokenizer=char_tokenizer(), add_start_token=False)
    assert perplexity.compute(predictions=["abracadabra"], **options) == {
        "perplexity": pytest.approx(VOCAB, rel=1e-6),
        "mean_nll": pytest.approx(math.log(VOCAB), rel=1e-6),
        "num_tokens": 10,
    }
    assert accuracy.compute(predictions=["abracadabra"], **options) == {"next_token_accuracy": 0.4, "num_tokens": 10}


def test_metrics_match_the_scoring_function_and_accumulate_batches(offline, llama):
    tokenizer, texts = char_tokenizer(), [TEXT, "hello world."]
    scores = windowed_token_scores(llama, tokenizer, texts, max_length=16, stride=4)
    perplexity = load_metric("perplexity", keep_in_memory=True)
    perplexity.add_batch(predictions=texts[:1])
    perplexity.add_batch(predictions=texts[1:])
    result = perplexity.compute(model=llama, tokenizer=tokenizer, max_length=16, stride=4)
    assert result["num_tokens"] == scores["count"] == len("\n\n".join(texts))
    assert result["perplexity"] == pytest.approx(math.exp(scores["nll_sum"] / scores["count"]))
    accuracy = load_metric("next_token_accuracy", keep_in_memory=True)
    result = accuracy.compute(predictions=texts, model=llama, tokenizer=tokenizer, max_length=16, stride=4)
    assert result["next_token_accuracy"] == scores["correct"] / scores["count"]
    with pytest.raises(ValueError, match="^stride=0 must be between 1 and max_length=64$"):  # llama's positions
        accuracy.compute(predictions=texts, model=llama, tokenizer=tokenizer, stride=0)
