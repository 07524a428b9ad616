"""CTranslate2 loaders for native families its own converter does not know, or reads wrongly under transformers 5.

A native variant is the family's own model with fewer K/V heads, so serving it needs only a loader that maps the
family's decoder onto CTranslate2's decoder spec. CTranslate2 picks a loader by the config's class name
(``register_loader``); importing this module registers one for each family in :data:`LAYOUTS`, one declaration
per family (how its layers are named and arranged), built by one function (:func:`decoder_spec`) that reads
everything else off the config as transformers does: K/V heads, head size, activation, RoPE (its ``rope_parameters``:
base, partial rotary, llama3 or linear scaling), per-layer sliding windows (``layer_types``), norms' epsilon.
What a spec cannot express (other RoPE types, Phi's q/k norms) is refused by name. Scales that transformers applies
around a layer (HyperCLOVAX's MuP multipliers) are folded into the weights.

Every family here is checked against transformers in tests/test_serving.py (log-probs within 1e-4, greedy tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ctranslate2.converters import transformers as ct2
from ctranslate2.specs import attention_spec, transformer_spec

ACTIVATIONS = ct2._SUPPORTED_ACTIVATIONS
ROPE_SCALING = {"linear": attention_spec.RotaryScalingType.Linear, "llama3": attention_spec.RotaryScalingType.Llama3}


@dataclass(frozen=True)
class Layout:
    """How one native family's decoder is laid out, in transformers' module names."""

    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")  # 4: before/after attention, MLP
    layer_norm: bool = False  # LayerNorm with a bias, not RMSNorm
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")  # one name: fused [q | k | v] rows
    out: str = "o_proj"
    mlp: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")  # 2 names: fused [gate | up] (gate_up, down) ...
    gated: bool = True  # ... or, with gated=False, a plain MLP (in, out)
    parallel: bool = False  # attention and MLP both read the layer's one norm and add to the same residual
    interleaved_rotary: bool = False  # rotates pairs (2i, 2i+1), as GPT-J, not the two halves
    final_norm: str = "norm"
    multipliers: bool = False  # MuP scales (embedding, residual, attention, logits), folded into the weights
    gemma: bool = False  # RMSNorm scales by 1 + weight; embeddings times sqrt(hidden size)


LAYOUTS = {  # config class -> its layout
    "GemmaConfig": Layout(gemma=True),  # CTranslate2's own loader reads no rope_theta from transformers 5 configs
    "HeliumConfig": Layout(interleaved_rotary=True),
    "GlmConfig": Layout(mlp=("gate_up_proj", "down_proj"), interleaved_rotary=True),
    "Glm4Config": Layout(
        norms=("input_layernorm", "post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm"),
        mlp=("gate_up_proj", "down_proj"),
        interleaved_rotary=True,
    ),
    "MinistralConfig": Layout(),
    "CwmConfig": Layout(),
    "Starcoder2Config": Layout(layer_norm=True, mlp=("c_fc", "c_proj"), gated=False),
    "Phi3Config": Layout(qkv=("qkv_proj",), mlp=("gate_up_proj", "down_proj")),
    "PhiConfig": Layout(
        norms=("input_layernorm",),
        layer_norm=True,
        out="dense",
        mlp=("fc1", "fc2"),
        gated=False,
        parallel=True,
        final_norm="final_layernorm",
    ),
    "HyperCLOVAXConfig": Layout(
        norms=("input_layernorm", "post_norm1", "post_attention_layernorm", "post_norm2"), multipliers=True
    ),
}


def check_supported(config) -> None:
    """Refuse, by name, what CTranslate2's decoder spec cannot express for this config."""
    activation = activation_name(config)
    if activation not in ACTIVATIONS:
        raise ValueError(f"CTranslate2 loader: activation {activation!r} is not supported (supported: "
                         f"{', '.join(sorted(ACTIVATIONS))})")  # fmt: skip
    kind = rope(config)[0]
    if kind not in ("default", *ROPE_SCALING):
        raise ValueError(f"CTranslate2 loader: RoPE type {kind!r} is not supported (supported: default, "
                         f"{', '.join(ROPE_SCALING)})")  # fmt: skip
    if getattr(config, "qk_layernorm", False):
        raise ValueError(f"CTranslate2 loader: {config.model_type} with qk_layernorm=True is not supported")
    if getattr(config, "use_post_norm", True) is False:
        raise ValueError(f"CTranslate2 loader: {config.model_type} with use_post_norm=False is not supported")


def activation_name(config) -> str:
    return getattr(config, "hidden_act", None) or config.hidden_activation


def rope(config) -> tuple[str, dict]:
    """The RoPE type and parameters transformers uses for ``config``."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    return parameters.get("rope_type", "default"), parameters


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_windows(config) -> list[int]:
    """Each layer's sliding window (0: full attention), as transformers masks it."""
    window = getattr(config, "sliding_window", None) or 0
    if getattr(config, "use_sliding_window", True) is False:
        window = 0
    types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
    return [window if kind == "sliding_attention" else 0 for kind in types]


def epsilon(config) -> float:
    for name in ("rms_norm_eps", "norm_epsilon", "layer_norm_eps", "layer_norm_epsilon"):
        if getattr(config, name, None) is not None:
            return float(getattr(config, name))
    return 1e-6


def decoder_spec(layout: Layout, config, kv_heads: int):
    """CTranslate2's decoder spec for a ``layout`` model of ``config`` with ``kv_heads`` K/V heads (no weights)."""
    check_supported(config)
    kind, parameters = rope(config)
    size = head_dim(config)
    rotary = int(size * parameters.get("partial_rotary_factor", 1.0))
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        config.num_hidden_layers,
        config.num_attention_heads,
        pre_norm=True,
        activation=ACTIVATIONS[activation_name(config)],
        ffn_glu=layout.gated,
        rms_norm=not layout.layer_norm,
        rotary_dim=0 if rotary == size else rotary,
        rotary_interleave=layout.interleaved_rotary,
        rotary_scaling_type=ROPE_SCALING.get(kind),
        rotary_scaling_factor=float(parameters.get("factor", 1)),
        rotary_base=float(parameters.get("rope_theta", 10000.0)),
        original_max_position_embeddings=int(parameters.get("original_max_position_embeddings", 0)),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 0) or 0),
        parallel_residual=layout.parallel,
        shared_layer_norm=layout.parallel,
        pre_post_layer_norm=len(layout.norms) == 4,
        num_heads_kv=kv_heads,
        head_dim=size,
        sliding_window=0,  # per layer, below
    )
    for layer, window in zip(spec.decoder.layer, sliding_windows(config), strict=True):
        layer.self_attention.sliding_window = np.dtype("int32").type(window)
        if kind == "llama3":
            layer.self_attention.rotary_low_freq_factor = float(parameters["low_freq_factor"])
            layer.self_attention.rotary_high_freq_factor = float(parameters["high_freq_factor"])
    return spec


class NativeLoader(ct2.LlamaLoader):
    """A native family's loader, from its :class:`Layout` (``layout``, set per registered class)."""

    layout: Layout

    @property
    def architecture_name(self):
        return "AutoModelForCausalLM"  # the family's own class, from the config

    def get_model_spec(self, model):
        from .families import family_for

        config = model.config
        spec = decoder_spec(self.layout, config, family_for(config).num_kv_heads(config))
        scales = multipliers(config) if self.layout.multipliers else {}
        decoder, module = spec.decoder, model.model
        decoder.scale_embeddings = False
        embedding = module.embed_tokens.weight
        if self.layout.gemma:  # as Gemma computes it: the scale rounded to the weights' dtype first
            decoder.embeddings.weight = embedding * torch.tensor(config.hidden_size**0.5, dtype=embedding.dtype)
        else:
            decoder.embeddings.weight = embedding * scales.get("embedding", 1.0)
        self.set_layer_norm(decoder.layer_norm, getattr(module, self.layout.final_norm))
        query_rows = config.num_attention_heads * head_dim(config)
        for layer_spec, layer in zip(decoder.layer, module.layers, strict=True):
            self.set_layer(layer_spec, layer, query_rows, scales)
        decoder.projection.weight = model.lm_head.weight * scales.get("logits", 1.0)
        if getattr(model.lm_head, "bias", None) is not None:
            decoder.projection.bias = model.lm_head.bias * scales.get("logits", 1.0)
        return spec

    def set_layer(self, spec, layer, query_rows: int, scales: dict) -> None:
        layout, attention = self.layout, layer.self_attn
        norms = [getattr(layer, name) for name in layout.norms]
        residual = scales.get("residual", 1.0)
        if layout.parallel:
            self.set_layer_norm(spec.shared_layer_norm, norms[0])
        elif len(norms) == 4:
            for target, norm, scale in zip(
                ("input_layer_norm", "post_attention_layer_norm", "pre_feedforward_layer_norm",
                 "post_feedforward_layer_norm"), norms, (1.0, residual, 1.0, residual), strict=True,
            ):  # fmt: skip
                getattr(spec, target).gamma = self.gamma(norm) * scale  # the residual scale after the post-norm
        else:
            self.set_layer_norm(spec.self_attention.layer_norm, norms[0])
            self.set_layer_norm(spec.ffn.layer_norm, norms[1])
        projections = [getattr(attention, name) for name in layout.qkv]
        weight = torch.cat([p.weight for p in projections])
        biases = [p.bias for p in projections if p.bias is not None]
        q_scale = scales.get("attention", 1.0)
        weight = torch.cat((weight[:query_rows] * q_scale, weight[query_rows:]))
        spec.self_attention.linear[0].weight = weight
        if biases:
            bias = torch.cat(biases)
            spec.self_attention.linear[0].bias = torch.cat((bias[:query_rows] * q_scale, bias[query_rows:]))
        self.set_linear(spec.self_attention.linear[1], getattr(attention, layout.out))
        mlp = [getattr(layer.mlp, name) for name in layout.mlp]
        if layout.gated and len(mlp) == 2:  # fused [gate | up] rows
            gate, up = mlp[0].weight.chunk(2)
            spec.ffn.linear_0.weight, spec.ffn.linear_0_noact.weight = gate, up
        elif layout.gated:
            self.set_linear(spec.ffn.linear_0, mlp[0])
            self.set_linear(spec.ffn.linear_0_noact, mlp[1])
        else:
            self.set_linear(spec.ffn.linear_0, mlp[0])
        self.set_linear(spec.ffn.linear_1, mlp[-1])

    def gamma(self, norm) -> torch.Tensor:
        return norm.weight + 1 if self.layout.gemma else norm.weight

    def set_layer_norm(self, spec, layer_norm):
        spec.gamma = self.gamma(layer_norm)
        if self.layout.layer_norm:
            spec.beta = layer_norm.bias

    def set_config(self, config, model, tokenizer):
        config.bos_token = tokenizer.bos_token
        config.eos_token = tokenizer.eos_token
        config.unk_token = tokenizer.unk_token if tokenizer.unk_token is not None else ""
        config.layer_norm_epsilon = epsilon(model.config)


def multipliers(config) -> dict[str, float]:
    """HyperCLOVAX's MuP scales as factors on the weights they follow: the embedding's output, each sub-layer's
    output before the residual (after its post-norm), the queries (its attention scale over the usual
    1/sqrt(head_dim)) and the logits (a multiplier there, unlike Granite's divisor)."""
    return {
        "embedding": float(config.embedding_multiplier),
        "residual": float(config.residual_multiplier),
        "attention": float(config.attention_multiplier) * head_dim(config) ** 0.5,
        "logits": float(config.logits_scaling),
    }


for _name, _layout in LAYOUTS.items():
    ct2.register_loader(_name)(type(_name.removesuffix("Config") + "Loader", (NativeLoader,), {"layout": _layout}))

DIFFERS = dict.fromkeys(
    ("MinistralConfig", "CwmConfig", "Starcoder2Config"),
    "CTranslate2 applies a sliding window while it decodes, not over a prompt longer than the window: the same "
    "log-probs as transformers for prompts within the window",
)
"""Native configs registered here that CTranslate2 runs otherwise than transformers, and how."""

SERVED_CONFIGS = (set(LAYOUTS) - set(DIFFERS)) | {"LlamaConfig", "MistralConfig", "Qwen2Config", "Qwen3Config"}
"""Native configs CTranslate2 serves as transformers runs them: those of :data:`LAYOUTS` but :data:`DIFFERS`, and
those its own loaders read right (Mistral without a sliding window). Each is checked in tests/test_serving.py; its own
Gemma-2, Gemma-3 and Phi loaders are not among them (no attention soft-capping; transformers 4's config names)."""


def serving_note(config) -> str | None:
    """What a user of CTranslate2 should know about a native ``config``: how CTranslate2 runs it otherwise than
    transformers (:data:`DIFFERS`, a sliding window), or that its loader is not checked here; ``None`` if served."""
    name = type(config).__name__
    if name in DIFFERS:
        return f"CTranslate2 and transformers disagree on {config.model_type}: {DIFFERS[name]}"
    if name not in SERVED_CONFIGS:
        return (f"CTranslate2's own loader for {name} is not checked against transformers here (those checked: "
                f"{', '.join(sorted(SERVED_CONFIGS))}); its log-probs may differ")  # fmt: skip
    if any(sliding_windows(config)):
        return f"this {config.model_type} checkpoint has a sliding window: {DIFFERS['MinistralConfig']}"
    return None
