"""Serving variants with llama.cpp: a GGUF file written by llama.cpp's own converter, served by llama-cpp-python.

The converter is llama.cpp's ``convert_hf_to_gguf.py`` (with its ``conversion`` and ``gguf-py`` packages) as
shipped in the llama-cpp-python source package, the release whose runtime serves the file, so that the two
agree. It is fetched once from the package registry (``pip download --no-binary``; only the converter's files
are kept, in ``cache_dir()/llama.cpp-VERSION``) and runs in its own process, which brings its own ``gguf``.
A native variant (any family whose architecture llama.cpp knows, with fewer K/V heads) is converted unchanged:
the converter reads the K/V heads from the config.

    from hf_attn_variants.llama_cpp_support import convert_to_gguf
    gguf_file = convert_to_gguf("out/smollm2-mqa", "out/smollm2-mqa-gguf")   # then llama_cpp.Llama(gguf_file)

Needs ``pip install llama-cpp-python sentencepiece`` (the ``llama-cpp`` extra); converting alone needs only
``sentencepiece`` (the converter imports it) and the registry.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path

from .io import atomic_output_dir, check_checkpoint_folder, check_output_dir, files_folder_problem

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"  # the release whose converter is fetched when llama-cpp-python is not installed
GGUF_NAME = "model.gguf"  # the file inside OUT
# the converter's --outtype for a checkpoint's dtype: the weights keep it, as `convert --dtype auto` does
OUTTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
QUANTIZATIONS = ("f32", "f16", "bf16", "q8_0")  # what --quantization may name for llama.cpp (the converter's own)
SCRIPT = "convert_hf_to_gguf.py"
# native families whose variants llama.cpp serves as transformers runs them: G K/V heads, the same log-probs
# (within 5e-3 over the vocabulary) and greedy tokens, measured on tiny random MQA variants (tests/test_llama_cpp.py)
SERVED = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "granite", "stablelm", "olmo2", "apertus", "arcee",
    "cohere", "cohere2_moe", "ernie4_5", "exaone", "gpt_oss", "granite_swa", "granitemoe", "granitemoe_swa",
    "granitemoeshared", "hunyuan_v1_dense", "hy_v3", "internlm3", "iquestcoder", "jais2", "nemotron", "olmo", "olmo3",
    "qwen2_moe", "qwen3_moe", "seed_oss", "smollm3", "mixtral", "ministral3",
    "glm4", "glm4_moe", "solar_open", "gemma3_text", "exaone4", "laguna", "cohere2",
)  # fmt: skip
_NO_WINDOW = "llama.cpp applies no sliding window to it: the same log-probs within the window, others past it"
# native families llama.cpp's converter converts with G K/V heads, but whose GGUF llama.cpp runs otherwise, and how
DIFFERS = {
    "starcoder2": _NO_WINDOW,
    "afmoe": "llama.cpp's log-probs are off by 0.1 or more from the first token on, where attention reads one position "
    "(so outside attention; not traced further), whatever the layer layout",
    "dots1": "llama.cpp loads its K projection only with as many K/V heads as query heads (attn_k has the wrong shape)",
    "olmoe": "llama.cpp wants a K norm as wide as the hidden size: it loads no variant with fewer K/V heads",
    "exaone_moe": "llama.cpp asks for exaone-moe.expert_gating_func, which its converter does not write",
    "ernie4_5_moe": "llama.cpp wants another shared-expert width than the tiny variant's (not traced further)",
    "llama4_text": "llama.cpp aborts building its graph (GGML_ASSERT: tensor buffer not set)",
    "mellum": "llama.cpp's Mellum rotates its sliding-window layers with the full layers' RoPE base (500,000 where "
    "transformers uses 10,000; the same log-probs when the two are equal)",
    "glm": "llama.cpp's log-probs are off by 3e-3 to 6e-3 from the first token on, where attention reads one position "
    "(so outside attention; not traced further)",
    "sarvam_moe": "llama.cpp wants the router's bias per expert (exp_probs_b), which the converter does not find under "
    "transformers' name for it (gate.expert_bias)",
    "phi3": "not measured: llama.cpp does not load the test's sentencepiece vocabulary for Phi-3 (K/V heads written right)",
}


def llama_cpp_layer_types(count: int, period: int, dense_first: bool = False) -> list[str]:
    """The layers llama.cpp makes sliding-window layers when a GGUF file gives a window but no per-layer pattern:
    ``period - 1`` of every ``period``, the full one last (or first, ``dense_first``), as its
    ``llama_hparams::set_swa_pattern`` does with the pattern it assumes for the family's released models."""
    sliding = [(i % period != 0) if dense_first else (i % period < period - 1) for i in range(count)]
    return ["sliding_attention" if s else "full_attention" for s in sliding]


def _layout_problem(config, period: int, dense_first: bool = False, window: int | None = None) -> str | None:
    """Whether ``config``'s layer types are those llama.cpp assumes (:func:`llama_cpp_layer_types` with a window,
    every layer full without one), and its sliding-window layers' RoPE unscaled, as llama.cpp rotates them."""
    count = config.num_hidden_layers
    window = (getattr(config, "sliding_window", None) or 0) if window is None else window
    expected = llama_cpp_layer_types(count, period, dense_first) if window else ["full_attention"] * count
    if list(getattr(config, "layer_types", None) or expected) != expected:
        where = "first" if dense_first else "last"
        return (f"llama.cpp makes {period - 1} of every {period} layers sliding-window layers, the full one {where} "
                "(the released models' layout; every layer full without a window); this checkpoint's layer_types "
                "differ")  # fmt: skip
    kind = _rope_type(config, "sliding_attention")
    if window and kind != "default":
        return f"llama.cpp rotates sliding-window layers without RoPE scaling; this checkpoint scales them ({kind})"
    return None


def _rope_type(config, layer_type: str | None = None) -> str:
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    if layer_type is not None and layer_type in parameters:
        parameters = parameters[layer_type]
    return parameters.get("rope_type", "default")


def _windowless(config) -> str | None:
    return _NO_WINDOW if getattr(config, "sliding_window", None) else None


def _gemma3(config) -> str | None:
    size = config.head_dim if config.num_hidden_layers != 62 else config.hidden_size // config.num_attention_heads
    if config.query_pre_attn_scalar != size:  # llama.cpp scales queries by this size (the hidden size per head at 27B)
        return (f"llama.cpp scales its queries by 1/sqrt({size}), this checkpoint by 1/sqrt(query_pre_attn_scalar="
                f"{config.query_pre_attn_scalar})")  # fmt: skip
    if getattr(config, "use_bidirectional_attention", False):
        return "llama.cpp's Gemma-3 attends causally; this checkpoint attends both ways (use_bidirectional_attention)"
    # the converter writes no window when sliding_window_pattern is 1 (every layer full)
    window = 0 if getattr(config, "sliding_window_pattern", None) == 1 else None
    return _layout_problem(config, 6, window=window)


def _exaone4(config) -> str | None:
    window = getattr(config, "sliding_window", None)
    if (config.num_hidden_layers == 64) != bool(window):  # EXAONE-4.0-32B: windows and global NoPE layers
        return (
            "llama.cpp gives EXAONE-4 sliding-window layers (and global layers without RoPE) exactly when it has "
            "64 layers, as the released 32B; this checkpoint " + ("has a window" if window else "has none")
        )
    return None


def _cohere2(config) -> str | None:
    if not getattr(config, "sliding_window", None):  # transformers then rotates no layer, llama.cpp needs a window
        return "llama.cpp's Cohere2 always has sliding-window layers (RoPE only there); this checkpoint has no window"
    kind = _rope_type(config)
    if kind != "default":  # its converter writes no RoPE scaling for Cohere2
        return f"llama.cpp rotates Cohere2 without RoPE scaling; this checkpoint scales it ({kind})"
    return _layout_problem(config, 4)


RELEASED_LAYOUTS = {
    "mixtral": _windowless,
    "ministral3": _windowless,
    "gemma3_text": _gemma3,
    "exaone4": _exaone4,
    "laguna": lambda config: _layout_problem(config, 4, dense_first=True),
    "cohere2": _cohere2,
}
"""Families of :data:`SERVED` whose layout llama.cpp derives from the released models rather than reading it from
the file (a fixed sliding-window pattern, no window, the query scale, layers keyed on the layer count): each rule
says how a checkpoint departs from it, or ``None``. Kept true by tests/test_llama_cpp.py."""

GGUF_OUTPUT = files_folder_problem(frozenset({GGUF_NAME}), "export --engine llama.cpp")  # what --overwrite replaces
_CONVERTER_FILES = ("conversion/", "gguf-py/", SCRIPT)  # the script last: its presence says the rest is there


def runtime_version() -> str | None:
    """The installed llama-cpp-python's version, or ``None``."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def converter_folder(version: str | None = None) -> Path:
    """llama.cpp's converter of llama-cpp-python ``version`` (default: the installed one, else ``VERSION``),
    fetched from the registry on first use and cached."""
    from .default_model import cache_dir, fetch_from_registry

    version = version or runtime_version() or VERSION
    folder = cache_dir() / f"llama.cpp-{version}"
    if not (folder / SCRIPT).is_file():
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        fetch_from_registry(f"{PACKAGE}=={version}", folder, prefix, _CONVERTER_FILES, source=True)
    return folder


def known_architectures(version: str | None = None) -> set[str]:
    """The Hugging Face architectures (``LlamaForCausalLM``, ...) that llama.cpp's converter converts: the keys
    of its ``TEXT_MODEL_MAP``, read from its source (nothing of it is run)."""
    tree = ast.parse((converter_folder(version) / "conversion" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(getattr(t, "id", None) == "TEXT_MODEL_MAP" for t in targets):
                return set(ast.literal_eval(node.value))
    raise ValueError(f"llama.cpp's converter in {converter_folder(version)} has no TEXT_MODEL_MAP")


def convert_to_gguf(src: str, out: str, quantization: str | None = None, overwrite: bool = False) -> str:
    """Convert the saved variant (or any checkpoint llama.cpp knows) in ``src`` to ``out/model.gguf``.

    ``quantization``: the converter's ``--outtype`` (``QUANTIZATIONS``); default the checkpoint's dtype.
    ``out`` is a folder, written atomically and refused if it exists, unless ``overwrite``. Returns the
    GGUF file's path. A checkpoint the converter cannot convert raises ``ValueError`` with its reason, and
    leaves no ``out``.
    """
    return convert_all_to_gguf([(src, out)], quantization, overwrite)[0]


def convert_all_to_gguf(jobs, quantization: str | None = None, overwrite: bool = False) -> list[str]:
    """:func:`convert_to_gguf` of each ``(src, out)`` of ``jobs``, in one converter process (torch and the
    converter load once). Every input is checked before anything is written; a failure leaves no ``out``."""
    if importlib.util.find_spec("sentencepiece") is None:
        raise ValueError("llama.cpp's converter imports sentencepiece: pip install sentencepiece")
    folder = converter_folder()
    known = known_architectures()
    planned = []
    for src, out in jobs:
        config = _read_config(src)
        check_checkpoint_folder(src)  # safetensors only (the converter would unpickle .bin files), no link outside
        architecture = (config.get("architectures") or ["(none)"])[0]  # the one the converter goes by
        if architecture not in known:
            raise ValueError(
                f"{src}: llama.cpp's converter has no {architecture!r} (it converts {len(known)} architectures, "
                "e.g. LlamaForCausalLM, Qwen3ForCausalLM, GraniteForCausalLM); serve this family with CTranslate2"
            )
        planned.append((src, check_output_dir(src, out, overwrite, GGUF_OUTPUT), _outtype(config, quantization)))
    with ExitStack() as outputs, tempfile.TemporaryDirectory() as scratch:
        written = [outputs.enter_context(atomic_output_dir(out)) / GGUF_NAME for _, out, _ in planned]
        argv = [
            [str(Path(src).resolve()), "--outfile", str(gguf.resolve()), "--outtype", outtype]  # it runs elsewhere
            for (src, _, outtype), gguf in zip(planned, written, strict=True)
        ]
        jobs_file, results_file = Path(scratch) / "jobs.json", Path(scratch) / "results.json"
        jobs_file.write_text(json.dumps(argv))
        runner = Path(__file__).with_name("llama_cpp_runner.py")
        command = [sys.executable, str(runner), str(folder / SCRIPT), str(jobs_file), str(results_file)]
        done = subprocess.run(command, cwd=folder, env=_converter_env(folder), capture_output=True, text=True)
        if done.returncode != 0 or not results_file.is_file():
            raise ValueError(f"llama.cpp's converter failed: {_last_line(done.stderr) or f'exit {done.returncode}'}")
        for (src, _, _), error, gguf in zip(planned, json.loads(results_file.read_text()), written, strict=True):
            if error is not None:
                raise ValueError(f"llama.cpp's converter refused {src}: {error}")
            _check_kv_heads(src, gguf)
    return [str(out / GGUF_NAME) for _, out, _ in planned]


def _check_kv_heads(src, gguf: Path) -> None:
    """Refuse a GGUF file whose K/V heads are not the checkpoint's: llama.cpp would fail to load it, or read its
    K/V rows as other heads (its converter of some families writes ``head_count_kv`` from the query heads)."""
    import transformers

    from .families import family_for

    config = transformers.AutoConfig.from_pretrained(src)
    expected = family_for(config).num_kv_heads(config)
    written = gguf_attention(str(gguf))
    if set(written["kv_heads"]) != {expected}:
        raise ValueError(
            f"llama.cpp's converter wrote {sorted(set(written['kv_heads']))} K/V heads for {src}, which has {expected} "
            f"(its {written['architecture']!r} converter does not take the checkpoint's K/V heads); serve it with CTranslate2"
        )


def serving_note(src: str) -> str | None:
    """What a user of llama.cpp should know about the family of the checkpoint in ``src``: how llama.cpp runs it
    otherwise than transformers (``DIFFERS``), or that its serving is not measured here; ``None`` if ``SERVED``."""
    import transformers

    from .families import family_for

    config = transformers.AutoConfig.from_pretrained(src)
    family = family_for(config).name
    if family in SERVED:
        problem = RELEASED_LAYOUTS[family](config) if family in RELEASED_LAYOUTS else None
        return problem and f"llama.cpp and transformers disagree on this {family} checkpoint: {problem}"
    how = DIFFERS.get(family, "not measured here (tests/test_llama_cpp.py)")
    return f"llama.cpp and transformers disagree on {family} or it is untested: {how}"


def _read_config(src: str) -> dict:
    path = Path(src) / "config.json"
    if not path.is_file():
        raise ValueError(f"{src}: no config.json; give a saved checkpoint folder (the OUT of convert or train)")
    return json.loads(path.read_text())


def _outtype(config: dict, quantization: str | None) -> str:
    if quantization is None:
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        return OUTTYPES.get(dtype, "f32")
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"--quantization {quantization!r} is not a llama.cpp weight type; choose from {', '.join(QUANTIZATIONS)}"
        )
    return quantization


def _converter_env(folder: Path) -> dict:
    """The environment the converter runs in: its folder and its own ``gguf`` first on the path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(folder / "gguf-py")]))


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def gguf_attention(path: str) -> dict:
    """What a GGUF file tells llama.cpp about attention: ``architecture``, ``layers``, ``heads``, ``kv_heads`` (per
    layer), ``head_dim``, and the rows of each layer's K projection (``k_rows``; of a fused one, its K part)."""
    values, shapes = gguf_header(path)

    def listed(key):
        value = values.get(key)
        return value if value is None or isinstance(value, list) else [value]

    arch = values["general.architecture"]
    layers = values[f"{arch}.block_count"]
    heads = listed(f"{arch}.attention.head_count")
    kv = listed(f"{arch}.attention.head_count_kv") or heads
    kv = kv * layers if len(kv) == 1 else kv
    head_dim = values.get(f"{arch}.attention.key_length") or values[f"{arch}.embedding_length"] // heads[0]

    def k_rows(i):  # a separate K projection's rows, or what a fused [q | k | v] one leaves to K
        if f"blk.{i}.attn_k.weight" in shapes:
            return shapes[f"blk.{i}.attn_k.weight"][-1]
        fused = shapes.get(f"blk.{i}.attn_qkv.weight")
        return None if fused is None else (fused[-1] - heads[i if len(heads) > 1 else 0] * head_dim) // 2

    return {
        "architecture": arch,
        "layers": layers,
        "heads": heads[0] if len(heads) == 1 else heads,
        "kv_heads": kv,
        "head_dim": head_dim,
        "k_rows": [k_rows(i) for i in range(layers)],
    }


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # GGUF types
_STRING, _ARRAY = 8, 9


def gguf_header(path: str) -> tuple[dict, dict]:
    """A GGUF file's metadata (arrays of numbers as lists; arrays of strings, the vocabulary, skipped as ``None``)
    and its tensors' shapes (in GGUF's order: the input dimension first), read from the header alone.

    ``gguf.GGUFReader`` maps every element of every array, seconds for a vocabulary of 50k tokens; this reads
    the header in milliseconds. Little-endian files only (what the converter writes by default)."""
    with open(path, "rb") as file:
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    pos = 8  # the magic and the format version
    (tensors, entries), pos = struct.unpack_from("<QQ", data, pos), pos + 16

    def string(pos):
        (size,) = struct.unpack_from("<Q", data, pos)
        return data[pos + 8 : pos + 8 + size].decode("utf-8", "replace"), pos + 8 + size

    def value(kind, pos):
        if kind == _STRING:
            return string(pos)
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if item in _SCALARS:
                size = struct.calcsize(_SCALARS[item])
                return list(struct.unpack_from(f"<{count}{_SCALARS[item]}", data, pos)), pos + count * size
            for _ in range(count):
                _, pos = value(item, pos)
            return None, pos
        return struct.unpack_from(f"<{_SCALARS[kind]}", data, pos)[0], pos + struct.calcsize(_SCALARS[kind])

    values = {}
    for _ in range(entries):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        values[key], pos = value(kind, pos + 4)
    shapes = {}
    for _ in range(tensors):
        name, pos = string(pos)
        (dims,) = struct.unpack_from("<I", data, pos)
        shapes[name] = list(struct.unpack_from(f"<{dims}Q", data, pos + 4))
        pos += 4 + 8 * dims + 4 + 8  # the dimensions, the tensor type, the data offset
    return values, shapes
