"""Serving variants with CTranslate2, the plugin families included, through CTranslate2's ``register_loader``.

A native variant (Llama, Qwen2, Mistral ... with fewer K/V heads) is the family's own model, which CTranslate2's
own loaders convert unchanged. A plugin-family variant has a config of this package (``GPT2AttnVariantConfig``,
...), which CTranslate2 does not know; importing this module registers a loader for each such config that
CTranslate2 can serve with G K/V heads: the family's own CTranslate2 loader, with ``num_heads_kv`` set to the
variant's K/V heads and the fused q/k/v rows in the ``[q | k | v]`` blocks CTranslate2 reads. Families without
a loader here are refused by name (``SERVED``).

    from hf_attn_variants.ctranslate2_support import convert_to_ctranslate2
    convert_to_ctranslate2("out/gpt2-gqa2", "out/gpt2-gqa2-ct2")   # then ctranslate2.Generator(...)

Needs ``pip install ctranslate2`` (the ``ctranslate2`` extra).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from ctranslate2.converters import TransformersConverter
from ctranslate2.converters import transformers as ct2
from ctranslate2.converters import utils as ct2_utils
from ctranslate2.specs import model_spec, transformer_spec

from . import ctranslate2_native  # noqa: F401 - registers the loaders of native families CTranslate2 lacks
from .families import family_for
from .io import (
    CTRANSLATE2_VOCABULARIES,
    atomic_output_dir,
    check_checkpoint_folder,
    check_output_dir,
    files_folder_problem,
)

ACTIVATIONS = ct2._SUPPORTED_ACTIVATIONS  # CTranslate2's names for transformers' activation functions


class _VariantLoader:
    """What the plugin-family loaders share: the variant model class, and its K/V heads in the spec."""

    def get_model_class(self, config, model_class):
        return transformers.AutoModelForCausalLM  # the variant classes are registered with the Auto classes

    @staticmethod
    def num_heads_kv(model) -> int:
        return family_for(model.config).num_kv_heads(model.config)


@ct2.register_loader("GPT2AttnVariantConfig")
class GPT2VariantLoader(_VariantLoader, ct2.GPT2Loader):
    """GPT-2 with G K/V heads: its ``c_attn`` rows are already ``[q | k | v]`` blocks."""

    def get_model_spec(self, model):
        spec = gpt2_style_spec(model, self.num_heads_kv(model))
        self.set_decoder(spec.decoder, model.transformer)
        self.set_linear(spec.decoder.projection, model.lm_head)
        return spec


def gpt2_style_spec(model, kv_heads: int):
    """The decoder spec of GPT-2 and GPTBigCode (pre-norm, learned positions), with ``kv_heads`` K/V heads."""
    config = model.config
    return transformer_spec.TransformerDecoderModelSpec.from_config(
        config.n_layer,
        config.n_head,
        pre_norm=True,
        activation=ACTIVATIONS[config.activation_function],
        num_heads_kv=kv_heads,
    )


@ct2.register_loader("OPTAttnVariantConfig")
class OPTVariantLoader(_VariantLoader, ct2.OPTLoader):
    """OPT with G K/V heads: separate q/k/v projections, which CTranslate2's loader concatenates."""

    def get_model_spec(self, model):
        config = model.config
        spec = transformer_spec.TransformerDecoderModelSpec.from_config(
            config.num_hidden_layers,
            config.num_attention_heads,
            pre_norm=config.do_layer_norm_before,
            activation=ACTIVATIONS[config.activation_function],
            project_in_out=config.word_embed_proj_dim != config.hidden_size,
            num_heads_kv=self.num_heads_kv(model),
        )
        self.set_decoder(spec.decoder, model.model.decoder)
        self.set_linear(spec.decoder.projection, model.lm_head)
        return spec


@ct2.register_loader("GPTNeoXAttnVariantConfig")
class GPTNeoXVariantLoader(_VariantLoader, ct2.GPTNeoXLoader):
    """GPT-NeoX (Pythia) with G K/V heads: its fused rows, ``[q .. q k v]`` per K/V group, regrouped into blocks."""

    def get_model_spec(self, model):
        config = model.config
        head_dim = config.hidden_size // config.num_attention_heads
        spec = transformer_spec.TransformerDecoderModelSpec.from_config(
            config.num_hidden_layers,
            config.num_attention_heads,
            pre_norm=True,
            activation=ACTIVATIONS[config.hidden_act],
            rotary_dim=2 * model.gpt_neox.rotary_emb.inv_freq.numel(),  # the dims the model rotates
            rotary_interleave=False,
            rotary_base=(getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0),
            parallel_residual=config.use_parallel_residual,
            shared_layer_norm=False,
            num_heads_kv=self.num_heads_kv(model),
        )
        self.set_variant_decoder(spec.decoder, model.gpt_neox, self.num_heads_kv(model), head_dim)
        self.set_linear(spec.decoder.projection, model.get_output_embeddings())
        return spec

    def set_variant_decoder(self, spec, module, kv_heads: int, head_dim: int):
        spec.scale_embeddings = False
        self.set_embeddings(spec.embeddings, module.embed_in)
        self.set_layer_norm(spec.layer_norm, module.final_layer_norm)
        for layer_spec, layer in zip(spec.layer, module.layers, strict=True):
            if hasattr(layer_spec, "input_layer_norm"):  # parallel residual
                self.set_layer_norm(layer_spec.input_layer_norm, layer.input_layernorm)
                self.set_layer_norm(layer_spec.post_attention_layer_norm, layer.post_attention_layernorm)
            else:
                self.set_layer_norm(layer_spec.self_attention.layer_norm, layer.input_layernorm)
                self.set_layer_norm(layer_spec.ffn.layer_norm, layer.post_attention_layernorm)
            set_grouped_qkv(layer_spec.self_attention.linear[0], layer.attention.query_key_value, kv_heads, head_dim)
            self.set_linear(layer_spec.self_attention.linear[1], layer.attention.dense)
            self.set_linear(layer_spec.ffn.linear_0, layer.mlp.dense_h_to_4h)
            self.set_linear(layer_spec.ffn.linear_1, layer.mlp.dense_4h_to_h)


@ct2.register_loader("GPTBigCodeAttnVariantConfig")
class GPTBigCodeVariantLoader(_VariantLoader, ct2.GPTBigCodeMHALoader):
    """GPTBigCode with 1 < G < H K/V heads: its ``c_attn`` rows per K/V group, regrouped into blocks."""

    def get_model_spec(self, model):
        config = model.config
        spec = gpt2_style_spec(model, self.num_heads_kv(model))
        self.set_decoder(spec.decoder, model.transformer)
        head_dim = config.n_embd // config.n_head
        for layer_spec, layer in zip(spec.decoder.layer, model.transformer.h, strict=True):
            set_grouped_qkv(layer_spec.self_attention.linear[0], layer.attn.c_attn, self.num_heads_kv(model), head_dim)
        self.set_linear(spec.decoder.projection, model.lm_head)
        return spec


@ct2.register_loader("GPTJAttnVariantConfig")
class GPTJVariantLoader(_VariantLoader, ct2.GPTJLoader):
    """GPT-J with G K/V heads: queries and keys permuted for CTranslate2's sliced rotary, each by its own heads."""

    def get_model_spec(self, model):
        config = model.config
        spec = transformer_spec.TransformerDecoderModelSpec.from_config(
            config.n_layer,
            config.n_head,
            pre_norm=True,
            activation=ACTIVATIONS[config.activation_function],
            rotary_dim=config.rotary_dim,
            rotary_interleave=False,
            parallel_residual=True,
            shared_layer_norm=True,
            num_heads_kv=self.num_heads_kv(model),
        )
        decoder, module, kv = spec.decoder, model.transformer, self.num_heads_kv(model)
        decoder.scale_embeddings = False
        self.set_embeddings(decoder.embeddings, module.wte)
        self.set_layer_norm(decoder.layer_norm, module.ln_f)
        for layer_spec, layer in zip(decoder.layer, module.h, strict=True):
            self.set_layer_norm(layer_spec.shared_layer_norm, layer.ln_1)
            q = ct2_utils.permute_for_sliced_rotary(layer.attn.q_proj.weight, config.n_head, config.rotary_dim)
            k = ct2_utils.permute_for_sliced_rotary(layer.attn.k_proj.weight, kv, config.rotary_dim)
            layer_spec.self_attention.linear[0].weight = torch.cat((q, k, layer.attn.v_proj.weight))
            self.set_linear(layer_spec.self_attention.linear[1], layer.attn.out_proj)
            self.set_linear(layer_spec.ffn.linear_0, layer.mlp.fc_in)
            self.set_linear(layer_spec.ffn.linear_1, layer.mlp.fc_out)
        self.set_linear(decoder.projection, model.lm_head)
        return spec


@ct2.register_loader("BloomAttnVariantConfig")
class BloomVariantLoader(_VariantLoader, ct2.BloomLoader):
    """BLOOM with G K/V heads (ALiBi): its fused rows per K/V group, regrouped into blocks."""

    def get_model_spec(self, model):
        config = model.config
        self._kv_layout = (self.num_heads_kv(model), config.hidden_size // config.n_head)
        spec = transformer_spec.TransformerDecoderModelSpec.from_config(
            config.n_layer,
            config.n_head,
            pre_norm=True,
            activation=ct2.common_spec.Activation.GELUTanh,
            layernorm_embedding=True,
            alibi=True,
            alibi_use_positive_positions=True,
            num_heads_kv=self.num_heads_kv(model),
        )
        self.set_decoder(spec.decoder, model.transformer)
        self.set_linear(spec.decoder.projection, model.lm_head)
        return spec

    def set_qkv_linear(self, spec, module, num_heads):
        set_grouped_qkv(spec, module, *self._kv_layout)


@ct2.register_loader("FalconAttnVariantConfig")
class FalconVariantLoader(_VariantLoader, ct2.FalconLoader):
    """Falcon with G K/V heads (rotary; ALiBi Falcon is refused at conversion): fused rows per K/V group, regrouped."""

    def get_model_spec(self, model):
        config, kv = model.config, self.num_heads_kv(model)
        layers = model.transformer.h
        two_norms = hasattr(layers[0], "ln_attn")  # the new architecture: one norm before attention, one before MLP
        spec = transformer_spec.TransformerDecoderModelSpec.from_config(
            config.num_hidden_layers,
            config.num_attention_heads,
            pre_norm=True,
            activation=ct2.common_spec.Activation.GELU,
            rotary_dim=0,  # every dim of a head
            rotary_interleave=False,
            rotary_base=(getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0),
            parallel_residual=config.parallel_attn,
            shared_layer_norm=config.parallel_attn and not two_norms,
            num_heads_kv=kv,
        )
        decoder, head_dim = spec.decoder, config.hidden_size // config.num_attention_heads
        decoder.scale_embeddings = False
        self.set_embeddings(decoder.embeddings, model.transformer.word_embeddings)
        self.set_layer_norm(decoder.layer_norm, model.transformer.ln_f)
        for layer_spec, layer in zip(decoder.layer, layers, strict=True):
            if two_norms:
                self.set_layer_norm(layer_spec.input_layer_norm, layer.ln_attn)
                self.set_layer_norm(layer_spec.post_attention_layer_norm, layer.ln_mlp)
            elif config.parallel_attn:
                self.set_layer_norm(layer_spec.shared_layer_norm, layer.input_layernorm)
            else:
                self.set_layer_norm(layer_spec.self_attention.layer_norm, layer.input_layernorm)
                self.set_layer_norm(layer_spec.ffn.layer_norm, layer.post_attention_layernorm)
            set_grouped_qkv(layer_spec.self_attention.linear[0], layer.self_attention.query_key_value, kv, head_dim)
            self.set_linear(layer_spec.self_attention.linear[1], layer.self_attention.dense)
            self.set_linear(layer_spec.ffn.linear_0, layer.mlp.dense_h_to_4h)
            self.set_linear(layer_spec.ffn.linear_1, layer.mlp.dense_4h_to_h)
        self.set_linear(decoder.projection, model.lm_head)
        return spec


def set_grouped_qkv(spec, fused, kv_heads: int, head_dim: int) -> None:
    """CTranslate2's fused q/k/v ``spec`` from a fused projection whose rows are grouped per K/V head."""
    spec.weight = grouped_to_blocks(fused.weight, kv_heads, head_dim)
    if fused.bias is not None:
        spec.bias = grouped_to_blocks(fused.bias, kv_heads, head_dim)


def grouped_to_blocks(rows: torch.Tensor, kv_heads: int, head_dim: int) -> torch.Tensor:
    """Fused rows ``[q .. q k v] x G`` (per K/V group, GPT-NeoX's layout) as ``[q | k | v]`` blocks."""
    grouped = rows.reshape(kv_heads, -1, head_dim, *rows.shape[1:])  # (G, per_group + 2, head_dim, ...)
    q, k, v = grouped[:, :-2], grouped[:, -2], grouped[:, -1]
    return torch.cat([q.reshape(-1, *rows.shape[1:]), k.reshape(-1, *rows.shape[1:]), v.reshape(-1, *rows.shape[1:])])


SERVED = {  # the plugin configs served here
    "GPT2AttnVariantConfig", "OPTAttnVariantConfig", "GPTNeoXAttnVariantConfig", "GPTBigCodeAttnVariantConfig",
    "GPTJAttnVariantConfig", "BloomAttnVariantConfig", "FalconAttnVariantConfig",
}  # fmt: skip


CTRANSLATE2_OUTPUT = files_folder_problem(  # what its converter writes: --overwrite replaces only such a folder
    frozenset({"model.bin", "config.json", *CTRANSLATE2_VOCABULARIES}), "CTranslate2's converter"
)  # fmt: skip


class _SpecKeeper(TransformersConverter):
    """CTranslate2's own converter, keeping the spec it built: what the engine is given (K/V heads, layers)."""

    spec = None

    def _load(self):
        self.spec = super()._load()
        return self.spec


def serving_note(src: str) -> str | None:
    """How CTranslate2 runs the native checkpoint in ``src`` otherwise than transformers, if it does
    (``ctranslate2_native.serving_note``); ``None`` for a plugin family (its loaders are this module's, checked)."""
    config = transformers.AutoConfig.from_pretrained(src)
    if not family_for(config).native:
        return None
    return ctranslate2_native.serving_note(config)


def convert_to_ctranslate2(src: str, out: str, quantization: str | None = None, overwrite: bool = False) -> str:
    """Convert the saved variant (or any model CTranslate2 knows) in ``src`` to a CTranslate2 model in ``out``.

    ``out`` is written atomically (a temporary folder renamed at the end) and refused if it exists, unless
    ``overwrite``. Returns ``out``.
    """
    converted_spec(src, out, quantization, overwrite)
    return str(out)


def local_source(src: str) -> str:
    """The local folder of ``src``: a folder here, or a hub id's safetensors snapshot (no pickled weights are
    fetched); a file, a GGUF checkpoint (``smollm2``) or a source that is nowhere is refused in one line."""
    from .default_model import ALIAS, check_source_exists

    path = Path(src)
    if path.is_file():
        raise ValueError(f"SRC {str(src)!r} is a file; a source is a model folder (config.json and *.safetensors)")
    if str(src) == ALIAS and not path.exists():
        raise ValueError(f"{ALIAS!r} is a GGUF checkpoint, which CTranslate2 does not read: convert it first "
                         f"(hf-attn-variants convert {ALIAS} OUT), then export OUT")  # fmt: skip
    check_source_exists(src)
    if path.is_dir():
        return str(src)
    from huggingface_hub import snapshot_download

    return snapshot_download(str(src), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])


def no_loader(config) -> str:
    """The one line for a config CTranslate2 has no loader for: the families it serves, and llama.cpp if that serves
    this one (CTranslate2's own error lists every config it loads, encoders and translation models included)."""
    from . import engines, llama_cpp_support

    try:
        family = family_for(config).name
    except ValueError:  # a model type this package does not know either
        family = config.model_type
    other = f"; llama.cpp serves {family}: --engine llama.cpp" if family in llama_cpp_support.SERVED else ""
    return (f"CTranslate2 has no loader for {type(config).__name__} ({family}); it serves the variants of: "
            f"{', '.join(engines.served_families('ctranslate2'))}{other}")  # fmt: skip


def converted_spec(src: str, out: str, quantization: str | None = None, overwrite: bool = False):
    """:func:`convert_to_ctranslate2`, returning the model spec CTranslate2 was given."""
    src = local_source(src)
    check_checkpoint_folder(src)  # safetensors only (no pickle loaded), intact, no link out of the folder
    if quantization is not None and quantization not in model_spec.ACCEPTED_MODEL_TYPES:
        raise ValueError(f"--quantization {quantization!r} is not a CTranslate2 weight type (choose from: "
                         f"{', '.join(model_spec.ACCEPTED_MODEL_TYPES)})")  # fmt: skip
    config = transformers.AutoConfig.from_pretrained(src)
    name = type(config).__name__
    if name in ctranslate2_native.LAYOUTS:
        ctranslate2_native.check_supported(config)  # by name, before the weights load
    if name.endswith("AttnVariantConfig") and name not in SERVED:
        raise ValueError(
            f"{name}: no CTranslate2 loader for this plugin family yet; served: {sorted(SERVED)} "
            "(and every native family CTranslate2 knows)"
        )
    if name not in ct2._MODEL_LOADERS:  # CTranslate2's registry of loaders, this package's included
        raise ValueError(no_loader(config))
    out = check_output_dir(src, out, overwrite, CTRANSLATE2_OUTPUT)
    converter = _SpecKeeper(str(src))
    with atomic_output_dir(out) as tmp:
        converter.convert(str(tmp), quantization=quantization, force=True)
    return converter.spec
