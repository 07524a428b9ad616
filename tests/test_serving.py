"""Serving converted checkpoints with CTranslate2: plugin families through the loaders this package registers,
native ones through CTranslate2's own. Each must reach the engine with G K/V heads and give transformers' log-probs
and greedy tokens."""

from __future__ import annotations

import pytest
import torch
import transformers

import hf_attn_variants as hav

from .conftest import char_tokenizer, tiny_model

ctranslate2 = pytest.importorskip("ctranslate2", reason="CTranslate2 is not installed (pip install ctranslate2)")
from ctranslate2.converters import TransformersConverter  # noqa: E402

from hf_attn_variants.ctranslate2_support import SERVED, convert_to_ctranslate2, grouped_to_blocks  # noqa: E402

CASES = [
    ("gpt2", 2),
    ("gpt2", 1),
    ("opt", 2),
    ("opt", 1),
    ("gpt_neox", 2),
    ("gpt_neox", 1),
    ("gpt_bigcode", 2),
    ("gptj", 2),
    ("gptj", 1),
    ("bloom", 2),
    ("bloom", 1),
    ("falcon", 2),
    ("falcon", 1),
    ("falcon-7b", 2),
    ("llama", 1),
    ("qwen2", 1),
    ("mistral", 2),
    ("llama-llama3", 1),
    ("qwen3-theta", 2),
    ("gemma-theta", 1),
    ("helium-llama3", 2),
    ("glm", 1),
    ("glm4-linear", 2),
    ("phi3", 1),
    ("phi-2", 2),
    ("hyperclovax-mup", 1),
]  # fmt: skip (the native ones with a RoPE base, scaling or multipliers of their own)
PADDED_VOCAB = {"opt": 8}  # CTranslate2's OPT loader pads the vocabulary to a multiple of 8


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}  # Llama 3.1
CONFIGS = {  # more configurations of a family, by name
    "falcon-7b": ("falcon", {"new_decoder_architecture": False, "multi_query": True, "parallel_attn": True,
                             "bias": True, "num_kv_heads": None}),  # one K/V head, one shared norm
    "gemma-theta": ("gemma", {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    "qwen3-theta": ("qwen3", {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    "llama-llama3": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "helium-llama3": ("helium", {"rope_parameters": LLAMA3_ROPE}),
    "glm4-linear": ("glm4", {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0,
                                                 "partial_rotary_factor": 0.5}}),
    "phi-2": ("phi", {"qk_layernorm": False}),  # as Phi-2 is released
    "hyperclovax-mup": ("hyperclovax", {"embedding_multiplier": 3.0, "residual_multiplier": 0.5,
                                        "attention_multiplier": 0.1, "logits_scaling": 0.7}),
}  # fmt: skip


def saved_variant(tmp_path, name: str, kv: int):
    tokenizer = char_tokenizer()
    family, config = CONFIGS.get(name, (name, {}))
    multiple = PADDED_VOCAB.get(family, 1)
    vocab = -(-len(tokenizer) // multiple) * multiple
    source = tiny_model(family, vocab_size=vocab, **config)
    variant = hav.convert(source, "gqa" if kv > 1 else "mqa", kv, "mean")
    src = tmp_path / f"{family}-{kv}"
    variant.save_pretrained(src)
    tokenizer.save_pretrained(src)
    return src, tokenizer


@pytest.mark.parametrize("family, kv", CASES, ids=[f"{f}-kv{k}" for f, k in CASES])
def test_ctranslate2_serves_the_variant_with_g_kv_heads_and_transformers_log_probs(tmp_path, family, kv):
    src, tokenizer = saved_variant(tmp_path, family, kv)
    spec = TransformersConverter(str(src))._load()  # what the engine is given
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    heads = model.config.num_attention_heads
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // heads
    attention = spec.decoder.layer[0].self_attention
    assert int(attention.num_heads_kv) == kv
    assert tuple(attention.linear[0].weight.shape) == ((heads + 2 * kv) * head_dim, model.config.hidden_size)

    out = convert_to_ctranslate2(src, tmp_path / "ct2")
    generator = ctranslate2.Generator(out, device="cpu")
    ids = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    scored = generator.score_batch([tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids])
    found = torch.tensor([s.log_probs for s in scored])
    torch.testing.assert_close(found, expected, atol=1e-4, rtol=0)

    prompt = ids[:1, :6]
    greedy = generator.generate_batch(
        [tokenizer.convert_ids_to_tokens(prompt[0].tolist())], max_length=8, sampling_topk=1,
        include_prompt_in_result=False, end_token=[],
    )[0].sequences_ids[0]  # fmt: skip
    reference = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert greedy == reference[0, 6:].tolist()


def test_every_family_counted_as_served_is_checked_here():
    """What ``served_families`` claims (and the serving page counts) is what the test above checks."""
    from hf_attn_variants.engines import served_families

    checked = {CONFIGS.get(name, (name,))[0] for name, _ in CASES}
    assert set(served_families("ctranslate2")) <= checked, sorted(set(served_families("ctranslate2")) - checked)


@pytest.mark.parametrize("family", ["ministral", "cwm", "starcoder2"])
def test_a_sliding_window_family_is_served_within_its_window_as_declared(tmp_path, family):
    """``ctranslate2_native.DIFFERS``: the same log-probs for a prompt within the window (4 tokens in the tiny
    configs), others for a longer one; a CTranslate2 that starts to mask the prompt fails here."""
    from hf_attn_variants.ctranslate2_native import DIFFERS

    src, tokenizer = saved_variant(tmp_path, family, 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    assert type(model.config).__name__ in DIFFERS and model.config.sliding_window == 4
    generator = ctranslate2.Generator(convert_to_ctranslate2(src, tmp_path / "ct2"), device="cpu")
    ids = torch.randint(3, 60, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    found = torch.tensor(generator.score_batch([tokenizer.convert_ids_to_tokens(ids[0].tolist())])[0].log_probs)
    torch.testing.assert_close(found[:3], expected[:3], atol=1e-4, rtol=0)  # tokens 2-4 read at most 4 tokens
    assert (found[4:] - expected[4:]).abs().max() > 1e-3


def test_pickled_weights_are_refused_before_anything_loads_them(tmp_path):
    from safetensors.torch import load_file

    src, _ = saved_variant(tmp_path, "llama", 1)
    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="holds only pickled weights"):
        convert_to_ctranslate2(src, tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_what_ctranslate2_cannot_express_is_refused_by_name(tmp_path):
    src, _ = saved_variant(tmp_path, "phi", 2)  # the tiny Phi normalises queries and keys (qk_layernorm)
    with pytest.raises(ValueError, match="^CTranslate2 loader: phi with qk_layernorm=True is not supported$"):
        convert_to_ctranslate2(src, tmp_path / "ct2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phi-2"]


def test_the_grouped_layout_becomes_blocks():
    """GPT-NeoX's fused rows per K/V group ``[q q k v] x 2`` (labelled here by their own row index) as blocks."""
    rows = torch.arange(8).unsqueeze(-1).float()  # 2 groups x (2 queries + k + v), head_dim 1
    assert grouped_to_blocks(rows, kv_heads=2, head_dim=1).squeeze(-1).tolist() == [0, 1, 4, 5, 2, 6, 3, 7]


def test_every_plugin_family_has_a_loader():
    """Every plugin family's variant config has a CTranslate2 loader registered by this package."""
    from ctranslate2.converters.transformers import _MODEL_LOADERS  # CTranslate2's registry of loaders

    configs = {registration_config_name(f) for f in hav.families() if not f.native}
    assert configs == SERVED and configs <= set(_MODEL_LOADERS)


def registration_config_name(family) -> str:
    from hf_attn_variants.families.registry import variant_config_class

    return variant_config_class(family).__name__


def test_a_model_ctranslate2_cannot_convert_leaves_nothing(tmp_path, monkeypatch):
    """No loader: refused by name before anything loads, with the families CTranslate2 serves and llama.cpp where
    that serves the family. A loader failing half-way (made to here) leaves no output either."""
    from hf_attn_variants import ctranslate2_native

    src, _ = saved_variant(tmp_path, "olmo2", 1)
    with pytest.raises(ValueError) as refused:
        convert_to_ctranslate2(src, tmp_path / "ct2")
    assert str(refused.value).startswith("CTranslate2 has no loader for Olmo2Config (olmo2); it serves the variants "
                                         "of: bloom, falcon, gemma, glm, glm4, gpt2, ")  # fmt: skip
    assert str(refused.value).endswith("; llama.cpp serves olmo2: --engine llama.cpp")
    src, _ = saved_variant(tmp_path, "glm", 1)

    def fail(*args):
        raise RuntimeError("a loader failing half-way")

    monkeypatch.setattr(ctranslate2_native.NativeLoader, "set_layer", fail)
    with pytest.raises(RuntimeError, match="half-way"):
        convert_to_ctranslate2(src, tmp_path / "ct2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glm-1", "olmo2-1"]


def test_the_output_folder_is_refused_if_it_exists(tmp_path):
    src, _ = saved_variant(tmp_path, "gpt2", 2)
    (tmp_path / "ct2").mkdir()
    (tmp_path / "ct2" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert_to_ctranslate2(src, tmp_path / "ct2")
    assert (tmp_path / "ct2" / "keep.txt").read_text() == "mine"


def test_the_export_command_writes_a_model_ctranslate2_serves(tmp_path):
    """``hf-attn-variants export SRC OUT`` as typed: the console script, default engine and weight type."""
    import subprocess
    import sys
    from pathlib import Path

    src, tokenizer = saved_variant(tmp_path, "gpt_neox", 2)
    exe = Path(sys.executable).parent / "hf-attn-variants"
    done = subprocess.run([str(exe), "export", str(src), str(tmp_path / "ct2")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "ct2"
    assert done.stdout.strip().splitlines()[-1] == (
        f"wrote {out} (CTranslate2; serve it with ctranslate2.Generator({str(out)!r}))"
    )
    scored = ctranslate2.Generator(str(out)).score_batch([tokenizer.convert_ids_to_tokens([5, 6, 7, 8])])
    assert len(scored[0].log_probs) == 3
    work = tmp_path / "work"  # --overwrite of a folder of someone's work: refused, kept
    work.mkdir()
    (work / "thesis.tex").write_text("mine")
    again = subprocess.run([str(exe), "export", str(src), str(work), "--overwrite"], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().startswith("hf-attn-variants export: error: ")
    assert "does not look like the output of CTranslate2's converter (it holds 'thesis.tex'" in again.stderr
    assert [p.name for p in work.iterdir()] == ["thesis.tex"]
    bad = subprocess.run([str(exe), "export", str(src), str(tmp_path / "x"), "--engine", "vllm"], capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "hf-attn-variants export: error: argument --engine: invalid choice: 'vllm' (choose from 'ctranslate2', 'llama.cpp')"
    )
    assert not (tmp_path / "x").exists()
    twice = subprocess.run([str(exe), "export", str(out), str(tmp_path / "x")], capture_output=True, text=True)
    assert twice.returncode == 2 and twice.stderr.strip().splitlines() == [
        f"hf-attn-variants export: error: {str(out)!r} is a CTranslate2 model (model.bin and its vocabulary, as "
        "`export` writes it), not a checkpoint: give the checkpoint it was made from"
    ]
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_an_export(tmp_path):
    """``--overwrite`` replaces CTranslate2's own output (a folder of someone's work: the export command's test)."""
    src, _ = saved_variant(tmp_path, "llama", 1)
    convert_to_ctranslate2(src, tmp_path / "ct2")
    convert_to_ctranslate2(src, tmp_path / "ct2", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ct2").iterdir()) == ["config.json", "model.bin", "vocabulary.json"]


def test_export_says_how_ctranslate2_runs_a_family_otherwise(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hf_attn_variants.ctranslate2_support import serving_note

    src, _ = saved_variant(tmp_path, "ministral", 1)
    exe = Path(sys.executable).parent / "hf-attn-variants"
    done = subprocess.run([str(exe), "export", str(src), str(tmp_path / "ct2")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "hf-attn-variants export: note: CTranslate2 and transformers disagree on ministral: CTranslate2 applies a "
        "sliding window while it decodes, not over a prompt longer than the window"
    ) in done.stderr
    gemma2, _ = saved_variant(tmp_path, "gemma2", 1)  # CTranslate2's own loader, not checked here
    assert "is not checked against transformers here" in serving_note(gemma2)
    phi3, _ = saved_variant(tmp_path, "phi3", 1)
    assert serving_note(phi3) is None
    windowed = transformers.AutoConfig.from_pretrained(phi3)
    windowed.sliding_window = 2047  # as Phi-3-mini-4k is released
    windowed.save_pretrained(phi3)
    assert "has a sliding window" in serving_note(phi3)
    assert serving_note(saved_variant(tmp_path, "gpt2", 2)[0]) is None  # a plugin family: this package's loader


def test_what_can_be_refused_before_the_weights_load_is(tmp_path, monkeypatch):
    from hf_attn_variants.ctranslate2_support import local_source

    src, _ = saved_variant(tmp_path, "llama", 1)
    loads = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match=r"^--quantization 'int3' is not a CTranslate2 weight type \(choose from: "):
        convert_to_ctranslate2(src, tmp_path / "ct2", quantization="int3")
    phi, _ = saved_variant(tmp_path, "phi", 2)
    with pytest.raises(ValueError, match="qk_layernorm=True is not supported"):
        convert_to_ctranslate2(phi, tmp_path / "ct2")
    assert not loads and not (tmp_path / "ct2").exists()
    with pytest.raises(ValueError, match=r"^SRC '.*config.json' is a file; a source is a model folder"):
        local_source(str(src / "config.json"))
    with pytest.raises(ValueError, match=r"^'smollm2' is a GGUF checkpoint, which CTranslate2 does not read"):
        local_source("smollm2")
    with pytest.raises(FileNotFoundError, match=r"^'\./nope' does not exist: no such folder"):
        local_source("./nope")
