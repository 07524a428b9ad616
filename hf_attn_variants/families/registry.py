"""The registry of family adapters: which adapter handles a config, and the variant classes built for them.

It holds declarations only: the model layer (``hf_attn_variants.registration``) builds a plugin family's variant
config and model classes, registers them with transformers' Auto classes and records them here, through the hook
it installs with ``on_register``.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import FamilyAdapter, PluginFamily

_FAMILIES: dict[str, FamilyAdapter] = {}
_BY_MODEL_TYPE: dict[str, FamilyAdapter] = {}
_VARIANT_CONFIGS: dict[str, type] = {}
_VARIANT_MODELS: dict[str, dict[type, type]] = {}
_REFUSED: dict[str, str] = {}  # model_type -> why no family covers it
_HOOKS: list[Callable[[FamilyAdapter], None]] = []  # called with each family registered


def on_register(hook: Callable[[FamilyAdapter], None]) -> None:
    """Call ``hook(family)`` for every family registered so far, in registration order, and for each one
    registered later, when it is registered."""
    _HOOKS.append(hook)
    for family in families():
        hook(family)


def register_family(family: FamilyAdapter) -> FamilyAdapter:
    """Register ``family``; for a plugin family, the hooks of the model layer then build and register its variant
    config and model classes with Auto.

    Raises:
        ValueError: the name or a model_type is already registered, or the declaration is incomplete.
    """
    if not isinstance(family, FamilyAdapter):
        raise ValueError(f"register_family takes a FamilyAdapter, got {type(family).__name__}")
    if family.name in _FAMILIES:
        raise ValueError(f"a family named {family.name!r} is already registered")
    if not family.model_types:
        raise ValueError(f"family {family.name!r} covers no model_type")
    errors = family.declaration_errors()
    if errors:
        kind = "plugin family" if isinstance(family, PluginFamily) else "family"
        raise ValueError(f"{kind} {family.name!r} {'; '.join(errors)}")
    taken = [t for t in family.model_types if t in _BY_MODEL_TYPE]
    if taken:
        raise ValueError(
            f"family {family.name!r}: model_type {taken} already belongs to {_BY_MODEL_TYPE[taken[0]].name!r}"
        )
    _FAMILIES[family.name] = family
    for model_type in family.model_types:
        _BY_MODEL_TYPE[model_type] = family
    if isinstance(family, PluginFamily):
        _BY_MODEL_TYPE[family.variant_model_type] = family
    for hook in _HOOKS:
        hook(family)
    return family


def refuse_model_types(reasons: dict[str, str]) -> None:
    """Record why the model types in ``reasons`` are not supported, for ``family_for``'s error and the docs.

    Raises:
        ValueError: one of them is a registered family's model_type.
    """
    taken = sorted(set(reasons) & set(_BY_MODEL_TYPE))
    if taken:
        raise ValueError(f"model_type {taken} belongs to a registered family and cannot be refused")
    _REFUSED.update(reasons)


def refused_model_types() -> dict[str, str]:
    """Every model type known not to be supported, with the reason, by model_type."""
    return dict(sorted(_REFUSED.items()))


def families() -> list[FamilyAdapter]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(config) -> FamilyAdapter:
    """The adapter of the family that ``config`` belongs to.

    Raises:
        ValueError: the config's model_type is not supported; the message lists the supported ones and says why
            this one is not (the refused table's reason, or that it is unknown to the transformers the families
            were derived with).
    """
    model_type = getattr(config, "model_type", None)
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        from .derived import TRANSFORMERS_VERSION

        why = _REFUSED.get(
            model_type,
            f"not a causal-LM model type of transformers {TRANSFORMERS_VERSION}, which the families were derived "
            "from (scripts/derive_families.py derives a newer transformers' types)",
        )
        raise ValueError(
            f"model_type {model_type!r} is not supported by hf_attn_variants; supported: {supported_model_types()}; "
            f"{model_type!r}: {why}"
        )
    return family


def families_table() -> str:
    """The README's table of supported families, as Markdown, generated from the registry: a row per hand-written
    family, one row for the families derived from transformers (``derived_families_table`` has theirs)."""
    lines = ["| family | model_type | saved as | q/k/v projections | notes |", "|---|---|---|---|---|"]
    derived = [f for f in families() if _derived(f)]
    for family in families():
        if not _derived(family):
            types = ", ".join(f"`{t}`" for t in family.model_types)
            docs = family.describe()
            lines.append(f"| {family.name} | {types} | {docs.saved_as} | {docs.layout} | {docs.notes} |")
    if derived:
        types = ", ".join(f"`{t}`" for f in derived for t in f.model_types)
        lines.append(
            f"| derived ({len(derived)}) | {types} | {derived[0].describe().saved_as} | separate (read off transformers' "
            "modules) | each proven by tests/test_derived_families.py; per type: [docs/families.md](docs/families.md) |"
        )
    return "\n".join(lines)


def derived_families_table() -> str:
    """The table of the families derived from transformers, as Markdown: what each one's modules hold."""
    lines = [
        "| model_type | q/k/v projections | output | K-shaped norms | per-query-head | notes |",
        "|---|---|---|---|---|---|",
    ]
    for family in families():
        if _derived(family):
            docs = family.describe()
            qkv = docs.layout if docs.layout != "separate" else f"`{family.q_projection}`, `k_proj`, `v_proj`"
            sliced = ", ".join(f"`{n}`" for n in (*family.head_sliced, *family.fixed_heads))
            kv_shaped = ", ".join(f"`{n}`" for n in family.kv_shaped)
            lines.append(
                f"| `{family.model_types[0]}` | {qkv} | `{family.o_projection}` | {kv_shaped} | {sliced} | {docs.notes} |"
            )
    return "\n".join(lines)


def refused_table() -> str:
    """The table of the causal-LM model types of transformers that no family covers, with the reasons."""
    lines = ["| model_type | why it is refused |", "|---|---|"]
    lines += [f"| `{t}` | {reason} |" for t, reason in refused_model_types().items()]
    return "\n".join(lines)


def _derived(family) -> bool:
    from .generic import DerivedFamily, DerivedFusedFamily

    return isinstance(family, (DerivedFamily, DerivedFusedFamily))


def record_variant_classes(family: PluginFamily, config_class: type, model_classes: dict[type, type]) -> None:
    """Record the variant config class and the variant model classes (by the family's class) built for ``family``."""
    _VARIANT_CONFIGS[family.name] = config_class
    _VARIANT_MODELS[family.name] = dict(model_classes)


def variant_config_class(family: PluginFamily) -> type:
    """The config class of the family's plugin variants."""
    return _variant_classes(_VARIANT_CONFIGS, family)


def variant_model_classes(family: PluginFamily) -> dict[type, type]:
    """The family's model classes mapped to their variant subclasses."""
    return _variant_classes(_VARIANT_MODELS, family)


def _variant_classes(built: dict, family: PluginFamily):
    if family.name not in built:
        raise ValueError(
            f"no variant classes were built for the plugin family {family.name!r}: register it with "
            "hf_attn_variants.register_family (the package's import installs what builds them)"
        )
    return built[family.name]
