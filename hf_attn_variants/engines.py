"""A variant's latency and memory in an inference engine, next to transformers' (``tradeoff --engine``, bench/decode.py).

Users serve a converted model with an engine, so the speedup that matters is the engine's. ``engine_timer``
saves a variant, converts it with the engine's own converter (for CTranslate2: ``convert_to_ctranslate2``, which
serves the plugin families too) and returns an :class:`EngineTimer` whose callables the trade-off times in the
same interleaved rounds as its own columns:

- ``prefill(batch, tokens)``: a call that reads a prompt of ``tokens`` random tokens and writes one token;
- ``decode(batch, context)``: a call that generates :data:`DECODE_STEPS` tokens after a cached prompt of
  ``context`` tokens (the engine's own prompt cache, ``static_prompt``, so the prompt is read once, not each
  round) and returns its seconds per decode step (time stamps of the engine's per-token callback: the first
  step, which reads the per-call prompt token, is not counted);

and the K/V heads the engine was given (read off the spec its converter built, or the GGUF file's header) with
the KV-cache bytes they hold per token. Engines: CTranslate2 (``pip install ctranslate2``) and llama.cpp
(``pip install "hf_attn_variants[llama-cpp]"``: the GGUF file is written by ``llama_cpp_support.convert_to_gguf``
and timed through llama-cpp-python's bindings of llama.cpp's own batch API, one sequence per prompt of the batch,
its cache in llama.cpp's default f16). An engine that is not installed is refused by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .choices import ENGINES
from .heads import kv_cache_bytes_per_token

DECODE_STEPS = 8  # generated per timed decode call; the per-step time is over the last DECODE_STEPS - 1
COMPUTE_TYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class EngineTimer:
    """One variant served by an engine: its callables to time and what the engine holds per cached token."""

    engine: str
    version: str
    kv_heads: int
    kv_bytes_per_token: int  # K and V of every layer, in the engine's compute type
    prefill: Callable[[int, int], Callable[[], object]]
    decode: Callable[[int, int], Callable[[], float]]

    def record(self) -> dict:
        return {"engine": self.engine, "version": self.version, "kv_heads": self.kv_heads,
                "kv_bytes_per_token": self.kv_bytes_per_token}  # fmt: skip


MODULES = {"ctranslate2": ("ctranslate2", "pip install ctranslate2"),
           "llama.cpp": ("llama_cpp", 'pip install "hf_attn_variants[llama-cpp]"')}  # fmt: skip


def check_engine(name: str) -> None:
    """Refuse an unknown engine, or one that is not installed, with the valid choices or the install line."""
    if name not in ENGINES:
        raise ValueError(f"engine {name!r} is not one of {list(ENGINES)}")
    module, install = MODULES[name]
    try:
        __import__(module)
    except ImportError:
        raise ValueError(f"engine {name!r} is not installed: {install}") from None


def check_served(name: str, config, dtype: torch.dtype = torch.float32, device: str = "cpu", tokenizer=None) -> None:
    """Refuse, before anything is measured, a source whose variants engine ``name`` has no loader for, or weights
    of a ``dtype`` it cannot compute in on ``device``. For llama.cpp, with ``tokenizer``: a one-layer random model
    of ``config`` is converted with it, so that a vocabulary its converter refuses is found now, not at the end."""
    from .families import family_for

    check_engine(name)
    if name == "llama.cpp":
        _check_llama_cpp_served(config, device)
        if tokenizer is not None:
            _convert_one_layer(config, tokenizer)
        return
    import ctranslate2

    compute_type, supported = COMPUTE_TYPES.get(dtype, "float32"), ctranslate2.get_supported_compute_types(device)
    if compute_type not in supported:
        raise ValueError(
            f"engine {name!r} cannot compute in {compute_type} on this {device} (it supports: "
            f"{', '.join(sorted(supported))}); choose another --dtype"
        )
    missing = sorted(_configs_written(family_for(config), type(config).__name__) - _ctranslate2_configs())
    if missing:
        raise ValueError(
            f"engine {name!r} has no loader for {', '.join(missing)} (the variants of {config.model_type!r}); "
            f"it serves the variants of: {', '.join(served_families(name))}"
        )


def _check_llama_cpp_served(config, device: str) -> None:
    from .families import family_for
    from .llama_cpp_support import DIFFERS, SERVED, known_architectures

    if device != "cpu":
        raise ValueError(f"engine 'llama.cpp' is timed on the CPU here (llama-cpp-python's CPU build), not on {device}")
    family = family_for(config)
    architecture = (
        getattr(config, "architectures", None) or [type(config).__name__.removesuffix("Config") + "ForCausalLM"]
    )[0]
    served = ", ".join(served_families("llama.cpp"))
    if len(_configs_written(family, type(config).__name__)) > 1 or architecture not in known_architectures():
        raise ValueError(
            f"engine 'llama.cpp' has no converter for the variants of {config.model_type!r} ({architecture}); "
            f"it serves the variants of: {served}"
        )
    if family.name not in SERVED:  # some abort the process, or load no variant: refused before measuring
        how = DIFFERS.get(family.name, "not measured here")
        raise ValueError(f"engine 'llama.cpp' does not serve {family.name} as transformers runs it ({how}); "
                         f"it serves the variants of: {served}")  # fmt: skip


def _convert_one_layer(config, tokenizer) -> None:
    import tempfile

    import transformers

    from .llama_cpp_support import convert_to_gguf

    layers, values = config.num_hidden_layers, config.to_dict()
    per_layer = {k: v[:1] for k, v in values.items() if isinstance(v, list | tuple) and len(v) == layers > 1}
    with tempfile.TemporaryDirectory() as scratch:
        try:  # every per-layer list cut to the one layer (layer_types, mlp_layer_types, heads per layer ...)
            small = type(config).from_dict({**values, **per_layer, "num_hidden_layers": 1})
            transformers.AutoModelForCausalLM.from_config(small).save_pretrained(f"{scratch}/model")
        except Exception as err:  # noqa: BLE001 - any family's own validation
            raise ValueError(
                f"engine 'llama.cpp': a one-layer model of this {config.model_type} (to check its converter before "
                f"measuring) cannot be built: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from None
        tokenizer.save_pretrained(f"{scratch}/model")
        try:
            convert_to_gguf(f"{scratch}/model", f"{scratch}/gguf")
        except ValueError as err:  # named by what the user gave, not the scratch folder
            raise ValueError(str(err).replace(f"{scratch}/model", "this source (its config and tokenizer)")) from None


def served_families(name: str) -> list[str]:
    """The families of this package whose variants engine ``name`` serves as transformers runs them (tested in
    tests/test_serving.py); a family it loads but runs otherwise is not among them
    (``ctranslate2_native.DIFFERS``)."""
    import transformers

    from .families import families

    check_engine(name)
    if name == "llama.cpp":
        from .llama_cpp_support import SERVED

        return sorted(SERVED)
    from . import ctranslate2_native, ctranslate2_support

    served = ctranslate2_native.SERVED_CONFIGS | ctranslate2_support.SERVED
    return sorted(
        family.name
        for family in families()
        if any(
            _grouped_config(family, transformers.CONFIG_MAPPING[t].__name__) in served
            for t in family.model_types
            if t in transformers.CONFIG_MAPPING
        )  # fmt: skip
    )


def _grouped_config(family, config_name: str) -> str:
    """The config class of a ``config_name`` source's GQA and MQA variants: its own, or the plugin's variant config."""
    from .families.registry import variant_config_class

    return config_name if family.native else variant_config_class(family).__name__


def _configs_written(family, config_name: str) -> set[str]:
    """The config classes the variants of a ``config_name`` source have: its own (MHA), and the GQA/MQA one."""
    return {config_name, _grouped_config(family, config_name)}


def _ctranslate2_configs() -> set[str]:
    from ctranslate2.converters.transformers import _MODEL_LOADERS  # CTranslate2's registry of loaders

    from . import ctranslate2_support  # noqa: F401 - registers the plugin families' loaders

    return set(_MODEL_LOADERS)


def engine_timer(name: str, model, tokenizer, folder: Path) -> EngineTimer:
    """``model`` (any supported family, any variant) served by engine ``name``, converted inside ``folder``.

    ``tokenizer``: the model's; ``None`` for a model without one (a benchmark's random model): a word-level
    tokenizer naming each embedding row is saved with it, since timing needs no text.
    """
    check_engine(name)
    if name == "llama.cpp":
        if tokenizer is None:
            raise ValueError("engine 'llama.cpp' needs the model's tokenizer (its converter writes the vocabulary)")
        return llama_cpp_timer(model, tokenizer, Path(folder))
    if tokenizer is None:
        tokenizer = numbered_tokenizer(model.get_input_embeddings().num_embeddings)
    return ctranslate2_timer(model, tokenizer, Path(folder))


def numbered_tokenizer(vocab_size: int):
    """A word-level tokenizer of ``vocab_size`` tokens ``t0``, ``t1``, ... (unknown ``t0``, BOS ``t1``, EOS ``t2``)."""
    import transformers
    from tokenizers import Tokenizer, models

    backend = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", bos_token="t1",
                                                eos_token="t2")  # fmt: skip


def ctranslate2_timer(model, tokenizer, folder: Path) -> EngineTimer:
    import ctranslate2

    from .ctranslate2_support import converted_spec

    saved, served = folder / "transformers", folder / "ctranslate2"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    spec = converted_spec(saved, served)
    attention = spec.decoder.layer[0].self_attention
    heads = _integer(spec.decoder.num_heads)
    kv_heads = heads if getattr(attention, "num_heads_kv", None) is None else _integer(attention.num_heads_kv)
    head_dim = attention.linear[-1].weight.shape[-1] // heads  # the output projection reads every query head
    compute_type = COMPUTE_TYPES.get(next(model.parameters()).dtype, "float32")
    device = "cuda" if model.device.type == "cuda" else "cpu"
    generator = ctranslate2.Generator(str(served), device=device, compute_type=compute_type,
                                      intra_threads=torch.get_num_threads())  # fmt: skip
    element = torch.empty(0, dtype=getattr(torch, compute_type)).element_size()
    tokens = _plain_tokens(tokenizer, model.get_input_embeddings().num_embeddings)

    def prompt(n: int, seed: int) -> list[str]:
        picks = torch.randint(0, len(tokens), (n,), generator=torch.Generator().manual_seed(seed))
        return [tokens[i] for i in picks.tolist()]

    def prefill(batch: int, n: int) -> Callable[[], object]:
        prompts = [prompt(n, seed) for seed in range(batch)]
        return lambda: generator.generate_batch(prompts, max_length=1, include_prompt_in_result=False, end_token=[])

    def decode(batch: int, context: int) -> Callable[[], float]:
        cached, starts = prompt(context, batch), [prompt(1, seed) for seed in range(batch)]

        def step() -> float:
            stamps: dict[int, float] = {}

            def stamp(result) -> bool:
                stamps.setdefault(result.step, time.perf_counter())  # the first sequence to reach each step
                return False

            generator.generate_batch(
                starts, static_prompt=cached, max_length=DECODE_STEPS, min_length=DECODE_STEPS, end_token=[],
                include_prompt_in_result=False, callback=stamp,
            )  # fmt: skip
            steps = sorted(stamps)
            return (stamps[steps[-1]] - stamps[steps[0]]) / (len(steps) - 1)

        return step

    layers = len(spec.decoder.layer)
    return EngineTimer("ctranslate2", ctranslate2.__version__, kv_heads, kv_cache_bytes_per_token(layers, kv_heads, head_dim, element),
                       prefill, decode)  # fmt: skip


def _integer(value) -> int:
    """A spec's integer, before (a numpy scalar) or after the converter wrapped it (``NumpyVariable``)."""
    return int(value.numpy() if hasattr(value, "numpy") else value)


def _plain_tokens(tokenizer, vocab_size: int) -> list[str]:
    """The ordinary tokens (no special ones) that the model has embeddings for, as the engine's token strings."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(min(len(tokenizer), vocab_size)) if i not in special]
    return tokenizer.convert_ids_to_tokens(ids)


def llama_cpp_timer(model, tokenizer, folder: Path) -> EngineTimer:
    """``model`` written to GGUF by llama.cpp's converter and timed in llama.cpp, as :func:`ctranslate2_timer`."""
    import llama_cpp
    from llama_cpp import _internals

    from .llama_cpp_support import convert_to_gguf, gguf_attention

    saved = folder / "transformers"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    path = convert_to_gguf(saved, folder / "gguf")
    attention = gguf_attention(path)
    (kv_heads,) = set(attention["kv_heads"])
    _silence_llama_cpp()
    weights = _internals.LlamaModel(path_model=path, params=llama_cpp.llama_model_default_params(), verbose=False)
    ids = [i for i in range(model.get_input_embeddings().num_embeddings) if i not in set(tokenizer.all_special_ids)]

    def prompts(batch: int, n: int) -> list[list[int]]:
        picks = torch.randint(0, len(ids), (batch, n), generator=torch.Generator().manual_seed(n))
        return [[ids[i] for i in row] for row in picks.tolist()]

    def prefill(batch: int, n: int) -> Callable[[], object]:
        context, tokens = LlamaCppBatches(weights, batch, n + 1), prompts(batch, n)

        def run() -> None:
            context.clear()
            context.read(tokens, start=0, outputs="last")

        return run

    def decode(batch: int, context_length: int) -> Callable[[], float]:
        context = LlamaCppBatches(weights, batch, context_length + DECODE_STEPS)
        context.read(prompts(batch, context_length), start=0, outputs="last")  # the cached prompt, read once
        nexts = prompts(batch, DECODE_STEPS)

        def step() -> float:
            context.forget_from(context_length)
            stamps = [time.perf_counter()]
            for s in range(DECODE_STEPS):  # one token per sequence per step, each with its logits
                context.read([[row[s]] for row in nexts], start=context_length + s, outputs="all")
                stamps.append(time.perf_counter())
            return (stamps[-1] - stamps[1]) / (DECODE_STEPS - 1)  # as CTranslate2's: the first step not counted

        return step

    element = 2  # llama.cpp's default cache type, f16 for K and V
    cache = kv_cache_bytes_per_token(attention["layers"], kv_heads, attention["head_dim"], element)
    return EngineTimer("llama.cpp", llama_cpp.__version__, kv_heads, cache, prefill, decode)


class LlamaCppBatches:
    """A llama.cpp context holding ``sequences`` sequences of up to ``positions`` tokens, fed through llama.cpp's
    batch API (llama-cpp-python's ``Llama`` decodes one sequence at a time)."""

    CHUNK = 512  # tokens per llama_decode call (llama.cpp's default physical batch)

    def __init__(self, weights, sequences: int, positions: int):
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = sequences * positions
        params.n_batch = params.n_ubatch = self.CHUNK
        params.n_seq_max = sequences
        params.n_threads = params.n_threads_batch = torch.get_num_threads()
        self.context = _internals.LlamaContext(model=weights, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.CHUNK, embd=0, n_seq_max=1, verbose=False)
        self._llama_cpp = llama_cpp

    def clear(self) -> None:
        self._llama_cpp.llama_memory_clear(self.context.memory, True)

    def forget_from(self, position: int) -> None:
        """Drop every sequence's cached positions from ``position`` on."""
        self._llama_cpp.llama_memory_seq_rm(self.context.memory, -1, position, -1)

    def read(self, rows: list[list[int]], start: int, outputs: str) -> None:
        """Decode ``rows[i]`` as sequence ``i`` from position ``start``; logits for every token or the last of each."""
        items = [
            (token, start + p, seq, outputs == "all" or p == len(row) - 1)
            for seq, row in enumerate(rows)
            for p, token in enumerate(row)
        ]
        batch = self.batch.batch
        for first in range(0, len(items), self.CHUNK):
            chunk = items[first : first + self.CHUNK]
            batch.n_tokens = len(chunk)
            for i, (token, position, seq, logits) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
                batch.seq_id[i][0] = seq
            self.context.decode(self.batch)
        self._llama_cpp.llama_synchronize(self.context.ctx)


_QUIET = []  # the log callback handed to llama.cpp, kept alive as long as the process


def _silence_llama_cpp() -> None:
    """Send llama.cpp's log (every model load and context, on stderr) nowhere."""
    import llama_cpp

    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
    llama_cpp.llama_log_set(_QUIET[0], None)
