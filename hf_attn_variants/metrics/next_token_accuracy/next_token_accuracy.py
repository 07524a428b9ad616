"""Next-token accuracy of an in-memory causal LM over texts, read in sliding windows (an offline `evaluate` metric)."""

import evaluate

from hf_attn_variants.metrics.scoring import ARGS_DESCRIPTION, metric_info, windowed_token_scores

_DESCRIPTION = """
Next-token accuracy is the share of a text's tokens that a causal language model's most likely next token
(the argmax of its logits, ties going to the lowest token id) gets exactly right. The texts are joined by
blank lines into one token stream, read in windows of `max_length` tokens moved by `stride`, and each token
is scored once, with the context its window holds, as in transformers' guide "Perplexity of fixed-length
models". It takes a model and tokenizer already in memory and needs no network.
"""

_KWARGS_DESCRIPTION = f"""
Args:{ARGS_DESCRIPTION}
Returns:
    next_token_accuracy (`float`): correct predictions / num_tokens, from 0 to 1.
    num_tokens (`int`): the scored tokens: the stream's tokens minus one (the first has no context).
Examples:
    >>> from hf_attn_variants.metrics import load_metric
    >>> accuracy = load_metric("next_token_accuracy")
    >>> results = accuracy.compute(predictions=texts, model=model, tokenizer=tokenizer)  # doctest: +SKIP
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NextTokenAccuracy(evaluate.Metric):
    """Next-token accuracy of a causal LM over texts; `compute(predictions=texts, model=..., tokenizer=...)`."""

    def _info(self):
        """The metric's card: description, citation, inputs and the single `predictions` feature."""
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, model, tokenizer, **options):
        """Score the texts with `windowed_token_scores` (`options` are its keyword arguments)."""
        scores = windowed_token_scores(model, tokenizer, predictions, **options)
        return {"next_token_accuracy": scores["correct"] / scores["count"], "num_tokens": scores["count"]}
