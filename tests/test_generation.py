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


def test_the_model_writes_full_blocks_from_the_start_of_a_user_turn_seeded():
    tokenizer = chat_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    blocks = generated_blocks(model, tokenizer, 5, 48, seed=3, batch_size=2)
    assert blocks.shape == (5, 48)
    start = tokenizer("<s>user: ", add_special_tokens=False)["input_ids"]
    assert (blocks[:, : len(start)] == torch.tensor(start)).all()
    assert len({tuple(row.tolist()) for row in blocks}) == 5  # sampled, not five times the same
    assert torch.equal(blocks, generated_blocks(model, tokenizer, 5, 48, seed=3, batch_size=2))  # seeded
    assert not torch.equal(blocks, generated_blocks(model, tokenizer, 5, 48, seed=4, batch_size=2))
    state = torch.random.get_rng_state()
    generated_blocks(model, tokenizer, 1, 16, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is left alone
    with pytest.raises(ValueError, match="^seq_len=7 leaves no room after the 7 tokens the model starts from$"):
        generated_blocks(model, tokenizer, 1, 7)


def test_an_end_of_turn_does_not_stop_a_block():
    tokenizer = chat_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    with torch.no_grad():  # a model that always ends its turn
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.eos_token_id] = 1.0
        model.model.norm.weight.fill_(1.0)
    blocks = generated_blocks(model, tokenizer, 2, 24, seed=0)
    assert blocks.shape == (2, 24)


def test_without_a_chat_template_the_model_writes_from_its_bos_token():
    tokenizer = char_tokenizer()
    model = tiny_model("gpt2", vocab_size=len(tokenizer)).eval()
    blocks = generated_blocks(model, tokenizer, 3, 20, seed=0)
    assert blocks.shape == (3, 20) and (blocks[:, 0] == tokenizer.bos_token_id).all()


def test_calibration_keeps_what_the_model_wrote_through_save_and_load(tmp_path):
    tokenizer = chat_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    calibration = calibrate(model, tokenizer, num_samples=4, seq_len=32, generated=3)
    assert calibration.generated_ids.shape == (3, 32) and calibration.info["generated"] == 3
    blocks = calibration.distillation_blocks()
    assert torch.equal(blocks, torch.cat([calibration.input_ids, calibration.generated_ids]))
    calibration.save(tmp_path / "c.safetensors")
    assert torch.equal(Calibration.load(tmp_path / "c.safetensors").generated_ids, calibration.generated_ids)
    plain = calibrate(model, tokenizer, num_samples=4, seq_len=32)
    assert plain.generated_ids is None and torch.equal(plain.distillation_blocks(), plain.input_ids)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_distilling_on_what_the_model_wrote_changes_only_attention_and_is_recorded(family):
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


def test_a_tokenizer_with_nowhere_to_start_writing_leaves_distillation_on_the_calibration_blocks(caplog):
    tokenizer = char_tokenizer()
    tokenizer.bos_token = tokenizer.eos_token = None
    model = tiny_model("llama", vocab_size=len(tokenizer))
    with caplog.at_level("WARNING"):
        calibration = calibrate(model, tokenizer, num_samples=2, seq_len=16, generated=2)
    assert calibration.generated_ids is None and "distillation reads the 2 calibration blocks only" in caplog.text
    with pytest.raises(ValueError, match="starts from its chat template, BOS or EOS token; the tokenizer has none"):
        generated_blocks(model, tokenizer, 1, 16)


@pytest.mark.parametrize("template", ["{{ messages[0]['content'] }}", "no messages here"])
def test_a_chat_template_with_no_text_before_the_message_starts_from_the_bos_token(template):
    tokenizer = char_tokenizer()
    tokenizer.chat_template = template
    blocks = generated_blocks(tiny_model("llama", vocab_size=len(tokenizer)).eval(), tokenizer, 2, 12, seed=0)
    assert blocks.shape == (2, 12) and (blocks[:, 0] == tokenizer.bos_token_id).all()
