"""hf_attn_variants: run, convert, fine-tune and evaluate decoder LLMs in MHA, GQA or MQA attention.

Importing the package registers ``AttnVariantConfig`` and the variant models of plugin families with
transformers' Auto classes, and the fast decode kernel ``attn_implementation="hav_sdpa"``
(``hf_attn_variants.decoding``) with its ``AttentionInterface``. It downloads nothing:
``smollm2()`` gives the default model's ``(folder, gguf_file)``, fetching it on its first call.
"""

import transformers as _transformers

from .auto import AttnVariantForCausalLM, AttnVariantModel, AutoModel, AutoModelForCausalLM
from .calibrated import Calibration, calibrate, distill_attention
from .configuration import AttnVariantConfig
from .convert import convert, convert_state_dict
from .decoding import FAST_DECODE_ATTENTION, enable_fast_decode
from .default_model import smollm2
from .families import families, family_for, register_family, supported_model_types
from .heads import KV_INIT_METHODS
from .kv_cache import kv_cache_plan
from .lora import lora_config
from .recipe import KV_INIT_CHOICES, PRESETS, KVRecipe
from .registration import register_variant_classes as _register_variant_classes  # noqa: F401 - installs its hook
from .variants import ATTN_VARIANTS, resolve_num_kv_heads, variant_label, variant_name

__version__ = "0.1.0"

_transformers.AutoConfig.register(AttnVariantConfig.model_type, AttnVariantConfig)
_transformers.AutoModelForCausalLM.register(AttnVariantConfig, AttnVariantForCausalLM)
_transformers.AutoModel.register(AttnVariantConfig, AttnVariantModel)

__all__ = [
    "ATTN_VARIANTS",
    "KV_INIT_CHOICES",
    "KV_INIT_METHODS",
    "KVRecipe",
    "PRESETS",
    "FAST_DECODE_ATTENTION",
    "AttnVariantConfig",
    "AttnVariantForCausalLM",
    "AttnVariantModel",
    "AutoModel",
    "AutoModelForCausalLM",
    "Calibration",
    "calibrate",
    "distill_attention",
    "convert",
    "convert_state_dict",
    "enable_fast_decode",
    "families",
    "family_for",
    "kv_cache_plan",
    "lora_config",
    "register_family",
    "resolve_num_kv_heads",
    "smollm2",
    "supported_model_types",
    "variant_label",
    "variant_name",
]
