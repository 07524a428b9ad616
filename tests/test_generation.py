"""Text the source writes itself (chat turns, or free text), and distillation on it with the calibration blocks."""

from __future__ import annotations

import pytest
import torch

import hf_attn_variants as hav
from hf_attn_variants.calibrated.calibration import Calibration, calibrate
from hf_attn_variants.calibrated.generation import generated_blocks

from .conftest import char_tokenizer, tiny_model

TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def chat_tokenizer():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_chat_turns_are_a_sampled_question_then_the_models_own_answer_right_padded_and_seeded():
    tokenizer = chat_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    ids, mask = generated_blocks(model, tokenizer, 5, 48, seed=3, batch_size=2)
    assert ids.shape == mask.shape == (5, 48)
    for row, keep in zip(ids, mask, strict=True):
        n = int(keep.sum())
        assert keep[:n].all() and not keep[n:].any()  # right padding only
        text = tokenizer.decode(row[:n])
        assert text.startswith("<s>user: ") and "</s><s>assistant: " in text, text
    again = generated_blocks(model, tokenizer, 5, 48, seed=3, batch_size=2)  # the same seed, the same samples
    assert torch.equal(ids, again[0]) and torch.equal(mask, again[1])
    assert not torch.equal(ids, generated_blocks(model, tokenizer, 5, 48, seed=4)[0])
    state = torch.random.get_rng_state()
    generated_blocks(model, tokenizer, 1, 16, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is left alone


def test_without_a_chat_template_the_model_writes_from_its_bos_token():
    tokenizer = char_tokenizer()
    model = tiny_model("gpt2", vocab_size=len(tokenizer)).eval()
    ids, mask = generated_blocks(model, tokenizer, 3, 20, seed=0)
    assert (ids[:, 0] == tokenizer.bos_token_id).all() and (mask.sum(-1) > 1).all()


def test_calibration_keeps_what_the_model_wrote_through_save_and_load(tmp_path):
    tokenizer = chat_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    calibration = calibrate(model, tokenizer, num_samples=4, seq_len=32, generated=3)
    assert calibration.generated_ids.shape == (3, 32) and calibration.info["generated"] == 3
    ids, mask = calibration.distillation_blocks()
    assert ids.shape == (7, 32) and mask[:4].all() and torch.equal(mask[4:], calibration.generated_mask)
    calibration.save(tmp_path / "c.safetensors")
    loaded = Calibration.load(tmp_path / "c.safetensors")
    assert torch.equal(loaded.generated_ids, calibration.generated_ids)
    assert torch.equal(loaded.generated_mask, calibration.generated_mask)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_distilling_on_generated_turns_changes_only_attention_and_is_recorded(family):
    tokenizer = chat_tokenizer()
    source = tiny_model(family, vocab_size=len(tokenizer))
    options = dict(kv_init="svd", distill_steps=4, distill_generated=4, calibration_samples=4, tokenizer=tokenizer)
    model = hav.convert(source, "mqa", **options)
    plain = hav.convert(source, "mqa", **{**options, "distill_generated": 0})
    recipe = model.config.attn_variant_recipe
    assert (recipe["distill_steps"], recipe["distill_generated"]) == (4, 4)
    assert "distill_generated=4" in hav.KVRecipe(**{k: v for k, v in options.items() if k != "tokenizer"}).label()
    attention = {f"{name}.{p}" for name, m in hav.family_for(model.config).attention_modules(model)
                 for p, _ in m.named_parameters()}  # fmt: skip
    differ = {k for k, v in model.state_dict().items() if not torch.equal(v, plain.state_dict()[k])}
    assert differ and differ <= attention  # what it distilled on changed the attention weights, nothing else
