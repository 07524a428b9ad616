"""The shipped factual prompts, and greedy answers compared with the source's."""

from __future__ import annotations

from hf_attn_variants.answers import Prompt, compare_answers, factual_prompts, first_sentence, greedy_answers

from .conftest import char_tokenizer, tiny_model


def test_the_shipped_prompt_set_has_at_least_twenty_distinct_questions_each_with_right_words():
    prompts = factual_prompts()
    assert len(prompts) >= 20
    assert len({p.prompt for p in prompts}) == len(prompts)
    assert all(p.prompt.strip() and p.answers and all(w.strip() for w in p.answers) for p in prompts)


def test_batched_left_padded_answers_equal_one_prompt_at_a_time():
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    prompts = ["Name a colour.", "What is two and two, written as a word?", "Hi"]  # three lengths: padding
    batched = greedy_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    alone = [greedy_answers(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone and all(batched)
    assert tokenizer.padding_side == "right"  # given back


def test_answers_are_compared_by_right_words_first_sentence_and_text():
    prompts = [Prompt("Capital of France?", ("Paris",)), Prompt("Legs of a spider?", ("eight", "8")),
               Prompt("2 + 2?", ("4", "four"))]  # fmt: skip
    source = ["The capital of France is Paris. It is large.", "A spider has 8 legs.", "Five."]
    variant = ["The capital of France is Paris. It is old.", "Spiders have six legs.", "Four."]
    assert compare_answers(variant, source, prompts) == {
        "prompts": 3, "right": 2, "source_right": 2, "right_as_source": 1, "same_first_sentence": 1, "identical": 0,
    }  # fmt: skip
    assert not prompts[2].is_right("Fourteen, or 40.") and prompts[2].is_right("(4)")
    assert first_sentence("Paris.\nIt is") == "Paris." and first_sentence("  a  b ") == "a b"
