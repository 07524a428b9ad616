"""Configs: the variant config of plugin families, and ``AttnVariantConfig``, a request for a variant.

``AttnVariantConfig`` (model_type ``attn_variant``) describes "this source model, in this variant". It is
registered with AutoConfig and the Auto model classes, so plain transformers can build a variant from it:
``AutoModelForCausalLM.from_pretrained(src, config=cfg)`` converts the source's pretrained weights and
``AutoModelForCausalLM.from_config(cfg)`` builds a randomly initialised variant. Either way the model you
get is an ordinary model of the target family: the family's own class and config with fewer K/V heads
(native families), or the plugin's variant subclass (plugin families).
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .recipe import RECIPE_OPTIONS, KVRecipe
from .variants import resolve_num_kv_heads, variant_name

# keyword arguments of ``from_pretrained`` that locate a checkpoint, and so also concern its config
HUB_KWARGS = (
    "gguf_file",
    "revision",
    "cache_dir",
    "token",
    "local_files_only",
    "subfolder",
    "force_download",
    "proxies",
)


def make_variant_config_class(family) -> type:
    """A subclass of the family's config with a ``num_key_value_heads`` field and its own model_type."""
    base = family.config_class

    class VariantConfig(base):
        num_key_value_heads: int | None = None

        def __post_init__(self, **kwargs):
            if self.num_key_value_heads is None:
                self.num_key_value_heads = self.num_attention_heads
            kv_heads = self.num_key_value_heads
            super().__post_init__(**kwargs)
            self.num_key_value_heads = kv_heads  # GPTBigCode's own __post_init__ derives it from multi_query

        def validate_architecture(self):
            super().validate_architecture()
            resolve_num_kv_heads(None, self.num_key_value_heads, self.num_attention_heads)

    VariantConfig.model_type = family.variant_model_type
    VariantConfig.__name__ = VariantConfig.__qualname__ = f"{base.__name__.removesuffix('Config')}AttnVariantConfig"
    VariantConfig.__doc__ = f"{base.__name__} with ``num_key_value_heads`` K/V heads (hf_attn_variants)."
    return VariantConfig


class AttnVariantConfig(PretrainedConfig):
    """A source model's config plus the attention variant to build from it, and the recipe that builds it.

    Args:
        base_config: the source model's config, as a dict (``config.to_dict()``).
        attn_variant: ``mha``, ``gqa`` or ``mqa``.
        num_key_value_heads: the K/V heads of the variant (required for ``gqa``).
        recipe: how fewer K/V heads are made from more: the fields of :class:`hf_attn_variants.KVRecipe` as a
            dict (``kv_init``, ``refine_steps`` ...; default ``kv_init="auto"``). ``from_base`` and
            ``from_pretrained`` take a ``KVRecipe`` or its fields as keyword arguments.
    """

    model_type = "attn_variant"

    base_config: dict | None = None
    attn_variant: str | None = None
    num_key_value_heads: int | None = None
    recipe: dict | None = None

    def __post_init__(self, **kwargs):
        given = {k: kwargs.pop(k) for k in RECIPE_OPTIONS if k in kwargs}  # recipe fields as keyword arguments
        super().__post_init__(**kwargs)
        self.recipe = KVRecipe(**{**(self.recipe or {}), **given}).options()
        if self.base_config is not None:
            self.validate_variant()

    @property
    def kv_recipe(self) -> KVRecipe:
        """The recipe, as a ``KVRecipe``."""
        return KVRecipe(**self.recipe)

    def validate_variant(self) -> None:
        """Resolve the K/V head count from the variant and check everything against the base config."""
        from .families import family_for

        base = self.base()
        family = family_for(base)
        family.check_config(base)
        self.num_key_value_heads = resolve_num_kv_heads(
            self.attn_variant, self.num_key_value_heads, family.num_heads(base)
        )
        self.attn_variant = variant_name(family.num_heads(base), self.num_key_value_heads)

    @classmethod
    def from_base(
        cls,
        config: PretrainedConfig,
        attn_variant: str | None = None,
        num_key_value_heads: int | None = None,
        kv_init: KVRecipe | str | None = None,
        **recipe_options,
    ) -> AttnVariantConfig:
        """The request for ``attn_variant`` of a model with config ``config``, made by the recipe given.

        ``kv_init`` is a ``KVRecipe``, a method or a preset name; ``recipe_options`` are ``KVRecipe`` fields.
        """
        if isinstance(config, AttnVariantConfig):
            config = config.base()
        recipe = KVRecipe.build(kv_init, **recipe_options)
        return cls(
            base_config=config.to_dict(),
            attn_variant=attn_variant,
            num_key_value_heads=num_key_value_heads,
            recipe=recipe.options(),
            name_or_path=config.name_or_path,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, attn_variant=None, num_key_value_heads=None, **kwargs):
        """Read the source's config (folder, hub id or GGUF file) and ask for ``attn_variant`` of it.

        ``kv_init`` (a ``KVRecipe``, a method or a preset name) and ``KVRecipe`` fields pass to the recipe. A folder
        that already holds an ``AttnVariantConfig`` loads as saved.
        """
        recipe_kwargs = {k: kwargs.pop(k) for k in (*RECIPE_OPTIONS,) if k in kwargs}
        from .sources import load_config  # one-line errors for a damaged, missing or impossible source config

        config = load_config(pretrained_model_name_or_path, **kwargs)
        if isinstance(config, cls) and attn_variant is None and num_key_value_heads is None and not recipe_kwargs:
            return config
        config.name_or_path = str(pretrained_model_name_or_path)
        return cls.from_base(config, attn_variant, num_key_value_heads, **recipe_kwargs)

    def base(self) -> PretrainedConfig:
        """The source model's config."""
        if self.base_config is None:
            raise ValueError("this AttnVariantConfig has no base_config; build it with AttnVariantConfig.from_base")
        values = dict(self.base_config)
        return CONFIG_MAPPING[values.pop("model_type")].from_dict(values)

    def target_config(self) -> PretrainedConfig:
        """The config of the model this request builds: the family's own, or its variant config."""
        from .families import family_for

        base = self.base()
        target = family_for(base).target_config(base, self.num_key_value_heads)
        target._attn_implementation_internal = self._attn_implementation_internal
        return target
