"""Perplexity of an in-memory causal LM over texts, read in sliding windows (an offline `evaluate` metric)."""

import math

import evaluate

from hf_attn_variants.metrics.scoring import ARGS_DESCRIPTION, metric_info, windowed_token_scores

_DESCRIPTION = """
Perplexity is the exponentiated mean negative log-likelihood a causal language model gives the tokens of a
text: exp(-(1/N) sum_i log p(x_i | x_<i)); lower is better, 1 is a perfect model and a uniform guess over a
vocabulary of V tokens scores V. The texts are joined by blank lines into one token stream, read in windows
of `max_length` tokens moved by `stride`, and each token is scored once, with the context its window holds,
as in transformers' guide "Perplexity of fixed-length models". Unlike the Hub's `perplexity` metric, this
one takes a model and tokenizer already in memory and needs no network.
"""

_KWARGS_DESCRIPTION = f"""
Args:{ARGS_DESCRIPTION}
Returns:
    perplexity (`float`): exp(mean_nll).
    mean_nll (`float`): the mean negative log-likelihood of the scored tokens, in nats.
    num_tokens (`int`): the scored tokens: the stream's tokens minus one (the first has no context).
Examples:
    >>> from hf_attn_variants.metrics import load_metric
    >>> perplexity = load_metric("perplexity")
    >>> results = perplexity.compute(predictions=texts, model=model, tokenizer=tokenizer)  # doctest: +SKIP
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    """Perplexity of a causal LM over texts; `compute(predictions=texts, model=..., tokenizer=...)`."""

    def _info(self):
        """The metric's card: description, citation, inputs and the single `predictions` feature."""
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, model, tokenizer, **options):
        """Score the texts with `windowed_token_scores` (`options` are its keyword arguments)."""
        scores = windowed_token_scores(model, tokenizer, predictions, **options)
        mean_nll = scores["nll_sum"] / scores["count"]
        return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "num_tokens": scores["count"]}
