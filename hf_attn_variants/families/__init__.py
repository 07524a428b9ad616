"""Family adapters and their registry. Importing this package registers the built-in families."""

from .base import FamilyAdapter, MixedFamily, NativeFamily, NativeFusedFamily, PluginFamily
from .bloom import BLOOM
from .falcon import FALCON
from .gpt2 import GPT2
from .gpt_bigcode import GPT_BIGCODE
from .gpt_neox import GPT_NEOX
from .gptj import GPTJ
from .native import NATIVE_FAMILIES
from .opt import OPT
from .registry import families, families_table, family_for, register_family, supported_model_types

for _family in (*NATIVE_FAMILIES, GPT2, OPT, GPT_NEOX, GPTJ, BLOOM, GPT_BIGCODE, FALCON):
    register_family(_family)

__all__ = [
    "FamilyAdapter",
    "MixedFamily",
    "NativeFamily",
    "NativeFusedFamily",
    "PluginFamily",
    "families",
    "families_table",
    "family_for",
    "register_family",
    "supported_model_types",
]
