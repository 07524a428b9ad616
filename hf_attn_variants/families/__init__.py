"""Family adapters and their registry. Importing this package registers the built-in families: the hand-written
ones, then those derived from transformers (``derived.py``), and records the refused model types' reasons."""

from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .base import FamilyAdapter, FamilyDocs, MixedFamily, NativeFamily, NativeFusedFamily, PluginFamily
from .bloom import BLOOM
from .falcon import FALCON
from .gpt2 import GPT2
from .gpt_bigcode import GPT_BIGCODE
from .gpt_neox import GPT_NEOX
from .gptj import GPTJ
from .native import NATIVE_FAMILIES
from .opt import OPT
from .registry import (
    derived_families_table,
    families,
    families_table,
    family_for,
    refuse_model_types,
    refused_model_types,
    refused_table,
    register_family,
    supported_model_types,
)

HAND_WRITTEN = (*NATIVE_FAMILIES, GPT2, OPT, GPT_NEOX, GPTJ, BLOOM, GPT_BIGCODE, FALCON)


def hand_written_model_types() -> set[str]:
    """The model types of the hand-written families (the derived ones cover the rest)."""
    return {t for family in HAND_WRITTEN for t in family.model_types}


for _family in HAND_WRITTEN:
    register_family(_family)

from .derived import DERIVED_FAMILIES, REFUSED  # noqa: E402 - generated; it imports .generic, which needs .base

for _family in DERIVED_FAMILIES:  # an older transformers lacks some of the types derived from the newest supported
    if all(t in CONFIG_MAPPING for t in _family.model_types):
        register_family(_family)
refuse_model_types({t: why for t, why in REFUSED.items() if t in CONFIG_MAPPING})

__all__ = [
    "FamilyAdapter",
    "FamilyDocs",
    "MixedFamily",
    "NativeFamily",
    "NativeFusedFamily",
    "PluginFamily",
    "families",
    "families_table",
    "derived_families_table",
    "family_for",
    "hand_written_model_types",
    "refuse_model_types",
    "refused_model_types",
    "refused_table",
    "register_family",
    "supported_model_types",
]
