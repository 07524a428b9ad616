"""Real-model checks on SmolLM2-135M-Instruct (GQA-3: 9 query heads, 3 K/V heads), fetched once and cached."""

from __future__ import annotations

import pytest
import torch
import transformers

import hf_attn_variants as hav
from hf_attn_variants.compat import output_cache
from hf_attn_variants.default_model import default_model

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    folder, gguf_file = default_model()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file).eval()
    return folder, gguf_file, tokenizer, model


def answer(model, tokenizer) -> str:
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def prose_ids(smollm2):
    import pydoc_data.topics

    text = pydoc_data.topics.topics["for"][:2000]
    return smollm2[2](text, return_tensors="pt").input_ids[:, :256]


def test_gqa3_to_mha9_gives_the_same_logits_and_answer(smollm2, prose_ids):
    folder, gguf_file, tokenizer, model = smollm2
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    mha = hav.convert(model, "mha")
    assert mha.config.num_key_value_heads == 9
    assert mha.model.layers[0].self_attn.k_proj.weight.shape == (9 * 64, 576)
    with torch.no_grad():
        diff = (mha(prose_ids).logits - model(prose_ids).logits).abs().max().item()
    assert diff <= 1e-4, diff
    reference = answer(model, tokenizer)
    assert "Paris" in reference
    assert answer(mha, tokenizer) == reference


def test_mqa_runs_saves_and_reloads(smollm2, prose_ids, tmp_path):
    folder, gguf_file, tokenizer, _ = smollm2
    # mean pooling: this test is about the checkpoint (the default recipe on SmolLM2 runs in the README's quick start)
    mqa = hav.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, attn_variant="mqa", kv_init="mean")
    mqa.eval()
    assert mqa.config.num_key_value_heads == 1
    assert mqa.model.layers[0].self_attn.k_proj.weight.shape == (64, 576)
    with torch.no_grad():
        out = mqa(prose_ids, use_cache=True)
    assert torch.isfinite(out.logits).all()
    assert {layer.keys.shape[1] for layer in output_cache(out).layers} == {1}
    assert isinstance(answer(mqa, tokenizer), str)
    mqa.save_pretrained(tmp_path)
    assert "quantization_config" not in (tmp_path / "config.json").read_text()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(prose_ids).logits, out.logits)


def test_mqa_uptraining_on_the_gguf_model_lowers_perplexity(tmp_path):
    """The training script on the real GGUF checkpoint (Trainer accepts it: its weights load dense)."""
    from hf_attn_variants.training import main

    out = tmp_path / "mqa"
    results = main(
        ["--model_name_or_path", "smollm2", "--attn_variant", "mqa", "--kv-init", "mean", "--train_modules", "kv",
         "--block_size", "64", "--max_eval_blocks", "4", "--per_device_train_batch_size", "2",
         "--max_steps", "3", "--learning_rate", "2e-3", "--output_dir", str(out), "--save_strategy", "no",
         "--report_to", "none", "--use_cpu", "--disable_tqdm", "true"]
    )  # fmt: skip
    assert results["eval_end_perplexity"] < results["eval_start_perplexity"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_key_value_heads == 1 and "quantization_config" not in reloaded.config.to_dict()


def test_calibrated_svd_merge_beats_mean_pooling_by_far(smollm2):
    """GQA-3 -> MQA on SmolLM2: the low-rank merge, calibrated on the default text, keeps the model usable.

    The calibration blocks are drawn from the text less its last 10%; the prose scored is the last topic's."""
    import pydoc_data.topics

    _, _, tokenizer, model = smollm2
    topics = pydoc_data.topics.topics
    ids = tokenizer(topics[sorted(topics)[-1]], return_tensors="pt").input_ids[:, :256]

    def perplexity(m):
        with torch.no_grad():
            return torch.exp(m(ids, labels=ids).loss).item()

    calibration = hav.calibrate(model, tokenizer, num_samples=16, seq_len=256)
    svd = hav.convert(model, "mqa", kv_init="svd", calibration=calibration)
    mean = hav.convert(model, "mqa", kv_init="mean")
    source, merged, pooled = perplexity(model), perplexity(svd), perplexity(mean)
    assert merged < pooled / 20, (source, merged, pooled)
    assert merged < 20 * source, (source, merged, pooled)


def test_readme_convert_of_smollm2_says_what_it_writes_and_cards_it_for_the_hub(tmp_path):
    """The README's command line, as a user types it: the quantized GGUF becomes float32, and says so."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from .conftest import check_hub_ready

    exe = Path(sys.executable).parent / "hf-attn-variants"
    out = tmp_path / "out" / "smollm2-mqa-mean"
    argv = [str(exe), "convert", "smollm2", str(out), "--variant", "mqa", "--kv-init", "mean"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"wrote {out} (K/V heads: mean; weights float32)"
    assert (
        "SmolLM2-135M-Instruct.Q4_1.gguf holds quantized weights (Q4_1, Q8_0): writing them as float32, which "
        "holds their dequantized values exactly"
    ) in result.stderr
    card = check_hub_ready(out / "README.md")
    assert (card.base_model, card.base_model_relation, card.license) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "finetune",
        "apache-2.0",
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["dtype"], config["_model_name_or_path"]) == ("float32", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "- Weights saved in float32" in (out / "README.md").read_text()
