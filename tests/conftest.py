"""Tiny random configs of every supported family, and helpers shared by the tests."""

from __future__ import annotations

import pytest
import torch
import transformers

import hf_attn_variants as hav
from hf_attn_variants.families import generic
from hf_attn_variants.kv_cache import cache_nbytes

VOCAB = 96
HEADS = 8


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``), the cores are shared out among the workers: each
    worker's torch, and every process a test starts (through ``OMP_NUM_THREADS``), gets its share, so that N
    workers on N cores do not each start N threads."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# The longest test files, longest first (seconds of one worker, summed per file from `pytest -n auto --dist loadfile
# --durations=0` on a 2-core CPU: 632, 349, 275, 206, 138, 130 without llama.cpp's runtime). `make test` gives each
# worker a file at a time in collection order (`--no-loadscope-reorder`: xdist would order files by their number of
# tests), so a long file started last would keep one worker busy after the other has finished.
LONGEST_FIRST = (
    "test_docs.py", "test_families.py", "test_real_model.py", "test_output_safety.py", "test_bench.py",
    "test_llama_cpp.py",
)  # fmt: skip


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order


# family name -> (config class, kwargs) of a tiny model with HEADS query heads and its native K/V heads
TINY = {
    "llama": (transformers.LlamaConfig, dict(num_key_value_heads=4)),
    "mistral": (transformers.MistralConfig, dict(num_key_value_heads=4, sliding_window=None)),
    "qwen2": (transformers.Qwen2Config, dict(num_key_value_heads=4)),
    "qwen3": (transformers.Qwen3Config, dict(num_key_value_heads=4, head_dim=16)),
    "gemma": (transformers.GemmaConfig, dict(num_key_value_heads=4, head_dim=16)),
    "gemma2": (
        transformers.Gemma2Config,
        dict(num_key_value_heads=4, head_dim=16, sliding_window=6, query_pre_attn_scalar=12),
    ),
    "granite": (
        transformers.GraniteConfig,
        dict(num_key_value_heads=4, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0),
    ),
    "stablelm": (transformers.StableLmConfig, dict(num_key_value_heads=4, use_qkv_bias=True)),
    "phi": (transformers.PhiConfig, dict(num_key_value_heads=4, qk_layernorm=True, partial_rotary_factor=0.5)),
    "olmo2": (transformers.Olmo2Config, dict(num_key_value_heads=4)),
    "phi3": (transformers.Phi3Config, dict(num_key_value_heads=4)),
    "gpt2": (transformers.GPT2Config, dict()),
    "opt": (transformers.OPTConfig, dict(ffn_dim=128)),
    "gpt_neox": (transformers.GPTNeoXConfig, dict(rotary_pct=0.5, use_parallel_residual=True)),
    "gptj": (transformers.GPTJConfig, dict(rotary_dim=4, n_inner=128)),
    "bloom": (transformers.BloomConfig, dict()),
    "gpt_bigcode": (
        transformers.GPTBigCodeConfig,
        dict(multi_query=True, n_inner=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    ),
    "falcon": (transformers.FalconConfig, dict(new_decoder_architecture=True, num_kv_heads=4, ffn_hidden_size=128)),
}
FAMILIES = list(TINY)
ATTN_IMPLEMENTATIONS = ["eager", "sdpa"]
NORM_OVER_KV = {"olmo2"}  # a norm over the whole K projection: expansion is exact math, not bit for bit


def family_attn(families=None) -> list:
    """``(family, attn)`` pairs of every attention implementation each family supports in transformers."""
    return [
        pytest.param(f, a, id=f"{f}-{a}")
        for f in (families or FAMILIES)
        for a in ATTN_IMPLEMENTATIONS
        if not (a == "sdpa" and f in NO_SDPA)
    ]


def tiny_config(family: str, num_key_value_heads: int | None = None, **overrides):
    """A tiny config of a family in ``TINY``, or of any other model_type (4 query heads, 2 K/V heads: see
    ``hf_attn_variants.families.generic.tiny_config``)."""
    if family not in TINY:
        kv = {} if num_key_value_heads is None else {"num_key_value_heads": num_key_value_heads}
        return generic.tiny_config(family, **kv, **overrides)
    config_class, extra = TINY[family]
    if config_class is transformers.GPT2Config:
        values = dict(
            n_embd=64,
            n_layer=2,
            n_head=HEADS,
            n_positions=64,
            vocab_size=VOCAB,
            bos_token_id=1,
            eos_token_id=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    else:
        values = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=HEADS,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
    values.update(extra)
    if num_key_value_heads is not None:
        values["num_key_value_heads"] = num_key_value_heads
    values.update(overrides)
    return config_class(**values)


def family_of(family: str):
    """The adapter of a family named in ``TINY``."""
    return hav.family_for(tiny_config(family))


def own_config_kwargs(family: str, num_kv_heads: int) -> dict | None:
    """Config fields that give ``family``'s own tiny model ``num_kv_heads`` K/V heads (``None``: only the plugin can)."""
    adapter, config = family_of(family), tiny_config(family)
    return adapter.own_config_values(config, num_kv_heads) if adapter.saves_natively(config, num_kv_heads) else None


def variant_class(family: str) -> type:
    """The causal-LM class of ``family``'s GQA-2 variants: its own (native) or the plugin's subclass of it."""
    config = tiny_config(family)
    own = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    return hav.family_for(config).target_class(own, 2, config)


NATIVE = [f for f in FAMILIES if family_of(f).native]  # tiny models are GQA-4
# tiny models are MHA (the family cannot hold fewer), or one of the K/V head counts a mixed family holds natively
PLUGIN = [f for f in FAMILIES if not family_of(f).native]
# families whose variants transformers gives no sdpa or no flex path (Gemma 2: soft-capping; BLOOM: ALiBi, eager
# only; StableLM: no flex); and torch 2.13's CPU inductor fails to compile Gemma 2's soft-capping score_mod
NO_SDPA = {f for f in FAMILIES if not variant_class(f)._supports_sdpa}
NO_CPU_FLEX = {f for f in FAMILIES if not variant_class(f)._supports_flex_attn} | {"gemma2"}


def tiny_model(family: str, attn_implementation: str = "eager", seed: int = 0, **config_kwargs):
    """A randomly initialised tiny causal LM, in eval mode; biases made non-zero so they are tested too."""
    torch.manual_seed(seed)
    with generic.quiet():  # derived families' tiny configs have sizes transformers warns about
        model = transformers.AutoModelForCausalLM.from_config(
            tiny_config(family, **config_kwargs), attn_implementation=attn_implementation
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.05)
    return model.eval()


def native_kv_heads(model) -> int:
    return hav.family_for(model.config).num_kv_heads(model.config)


def kv_heads_in_cache(cache) -> set[int]:
    return {layer.keys.shape[1] for layer in cache.layers} | {layer.values.shape[1] for layer in cache.layers}


def cache_bytes(cache) -> int:
    return cache_nbytes(cache)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """``(query shape, key shape)`` of every call of torch's scaled_dot_product_attention from now on."""
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, *args, **kwargs):
        calls.append((tuple(query.shape), tuple(key.shape)))
        return sdpa(query, key, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.fixture
def input_ids():
    return torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def char_tokenizer():
    """An offline character-level tokenizer (printable ASCII plus pad/bos/eos/unk), built in memory."""
    import string

    from tokenizers import Tokenizer, decoders, models

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_checkpoint(folder, family: str, seed: int = 0, **config_kwargs):
    """A tiny random model of ``family`` with the character tokenizer, saved (safetensors) to ``folder``."""
    tokenizer = char_tokenizer()
    model = tiny_model(family, seed=seed, vocab_size=len(tokenizer), **config_kwargs)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_text(tmp_path):
    """A small English text file (Python's own help topics), enough for a few dozen training blocks."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics))[:60_000])
    return path


def card_metadata(card_path) -> dict:
    """The YAML block of a card, parsed by a plain YAML reader (what the Hub reads)."""
    import yaml

    text = card_path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def check_hub_ready(card_path):
    """The card's metadata rebuilt by huggingface_hub's ``ModelCardData`` without errors, its eval results parsed."""
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results

    metadata = card_metadata(card_path)
    data = ModelCardData(**metadata)  # ignore_metadata_errors=False: a malformed model-index raises
    assert data.to_dict() == metadata
    if "model-index" in metadata:
        name, results = model_index_to_eval_results(metadata["model-index"])
        metric_names = [r.metric_name for r in results]
        assert len(set(metric_names)) == len(metric_names), metric_names  # distinct names, no two "perplexity"
        assert all(" " not in r.dataset_type for r in results), [r.dataset_type for r in results]  # an id, no sentence
    return data


def run_script_on_cases(script: str, cases: list[dict], root) -> dict:
    """Run ``script`` in ONE fresh Python process on ``cases`` (written to ``root/cases.json``); its results.

    The script gets the cases file and a results file as ``sys.argv[1:]`` and writes its results there as JSON.
    """
    import json
    import subprocess
    import sys

    (root / "cases.json").write_text(json.dumps(cases))
    run = subprocess.run(
        [sys.executable, "-c", script, str(root / "cases.json"), str(root / "results.json")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((root / "results.json").read_text())
