"""The model layer's half of registering a family: the variant classes of plugin families.

``families`` holds declarations only. Importing this module (the package's import does) installs a hook in the
family registry that, for every plugin family registered (the built-in ones at once, and any one registered later
with ``register_family``), builds its variant config class (``configuration.make_variant_config_class``) and
variant model classes (``modeling.make_variant_model_class``), registers them with transformers' Auto classes and
records them in the registry, where ``variant_config_class`` and ``variant_model_classes`` look them up.
"""

from __future__ import annotations

import transformers
from transformers.models.auto import modeling_auto

from . import configuration, modeling
from .families import registry
from .families.base import FamilyAdapter, PluginFamily

# Auto classes that get the variant of a family's class, and the transformers mapping that names it
AUTO_CLASSES = (
    (transformers.AutoModel, modeling_auto.MODEL_MAPPING_NAMES),
    (transformers.AutoModelForCausalLM, modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
    (transformers.AutoModelForSequenceClassification, modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
    (transformers.AutoModelForTokenClassification, modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES),
)


def register_variant_classes(family: FamilyAdapter) -> None:
    """Build a plugin family's variant config and model classes, register them with Auto and record them in the
    registry (nothing for a native family, whose variants are its own classes)."""
    if not isinstance(family, PluginFamily):
        return
    config_class = configuration.make_variant_config_class(family)
    _expose(config_class, configuration)
    transformers.AutoConfig.register(family.variant_model_type, config_class)

    models = {}
    for base in family.model_classes:
        variant = modeling.make_variant_model_class(family, base, config_class)
        _expose(variant, modeling)
        models[base] = variant
        for auto_class, names in AUTO_CLASSES:
            if names.get(family.model_types[0]) == base.__name__:
                auto_class.register(config_class, variant)
    registry.record_variant_classes(family, config_class, models)


def _expose(cls: type, module) -> None:
    """Make a generated class importable (and picklable) from ``module``."""
    cls.__module__ = module.__name__
    cls.__qualname__ = cls.__name__
    setattr(module, cls.__name__, cls)


registry.on_register(register_variant_classes)
