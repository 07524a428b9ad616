"""Drop-in Auto classes, and the classes that build a model from an ``AttnVariantConfig``.

``hav.AutoModelForCausalLM`` / ``hav.AutoModel`` are transformers' own classes plus the keyword arguments
``attn_variant``, ``num_key_value_heads``, ``kv_init`` (a ``KVRecipe``, a method or a preset name), the fields of
``KVRecipe`` and ``calibration``. With none of them they are transformers' classes, unchanged. With them, the source's pretrained weights are loaded by transformers
(so ``dtype``, ``device_map``, ``attn_implementation`` and GGUF files work as usual) and converted.
``fast_decode=True`` (with or without a variant) ends with ``hav.enable_fast_decode`` on the loaded model.
The source ``"smollm2"`` (where no such folder exists) is the default model, ``hav.smollm2()``.
"""

from __future__ import annotations

import logging
import os

import transformers

from .configuration import HUB_KWARGS, AttnVariantConfig
from .convert import convert
from .data import check_data_files
from .decoding import FAST_DECODE_ATTENTION, enable_fast_decode, use_fast_kernel
from .default_model import ALIAS, resolve_source
from .families import family_for
from .recipe import RECIPE_OPTIONS

_VARIANT_KWARGS = ("attn_variant", "num_key_value_heads", *RECIPE_OPTIONS)  # the request and its recipe
_MERGE_KWARGS = ("calibration",)  # an option of hav.convert, not of the config
_AUTO_ONLY_KWARGS = ("_from_auto", "adapter_kwargs", "trust_remote_code")
logger = logging.getLogger(__name__)


class _AttnVariantBuilder:
    """Registered for ``AttnVariantConfig`` with an Auto class; builds the variant the config asks for."""

    config_class = AttnVariantConfig
    source_auto_class: type = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config: AttnVariantConfig, **kwargs):
        """Load the source model with transformers, then convert it to ``config``'s variant by its recipe.

        ``calibration`` (a :class:`hf_attn_variants.Calibration`) passes through to :func:`hf_attn_variants.convert`;
        without it, a recipe that needs calibration (``auto`` included) calibrates with the source's own tokenizer
        on the recipe's calibration text. A source without a tokenizer gets ``auto``'s fallback, ``mean``.
        """
        for key in _AUTO_ONLY_KWARGS:
            kwargs.pop(key, None)
        calibration = kwargs.pop("calibration", None)
        if calibration is None and config.kv_recipe.calibration_data_files:  # checked before the model loads
            check_data_files(config.kv_recipe.calibration_data_files)
        source = cls.source_auto_class.from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config.base(), **kwargs
        )
        tokenizer = None
        if calibration is None and _merges(source, config):
            tokenizer_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
            tokenizer = source_tokenizer(pretrained_model_name_or_path, tokenizer_kwargs, source.config)
        return convert(
            source,
            config.attn_variant,
            config.num_key_value_heads,
            config.kv_recipe,
            calibration=calibration,
            tokenizer=tokenizer,
        )

    @classmethod
    def _from_config(cls, config: AttnVariantConfig, **kwargs):
        """A randomly initialised model in ``config``'s variant."""
        for key in _AUTO_ONLY_KWARGS:
            kwargs.pop(key, None)
        return cls.source_auto_class.from_config(config.target_config(), **kwargs)


class AttnVariantForCausalLM(_AttnVariantBuilder):
    source_auto_class = transformers.AutoModelForCausalLM


class AttnVariantModel(_AttnVariantBuilder):
    source_auto_class = transformers.AutoModel


def _merges(source, config: AttnVariantConfig) -> bool:
    """Whether converting ``source`` to ``config``'s variant may read calibration statistics."""
    family = family_for(source.config)
    recipe = config.kv_recipe
    fewer = config.num_key_value_heads % family.num_kv_heads(source.config) != 0
    return fewer and (recipe.kv_init == "auto" or recipe.needs_calibration)


def source_tokenizer(src, hub_kwargs: dict, config=None):
    """The source's own tokenizer if it has a usable one (it tokenizes text within the model's vocabulary), else
    ``None``, logged: transformers builds an empty tokenizer for some folders that hold none.
    """
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(src, **hub_kwargs)
        ids = tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    except Exception as err:  # a missing, corrupt or foreign tokenizer: calibration cannot read text with it
        logger.warning("no usable tokenizer in %r (%s: %s)", str(src), type(err).__name__, err)
        return None
    vocab = getattr(config, "vocab_size", None)
    if len(ids) < 2 or (vocab and max(ids) >= vocab):
        logger.warning("no usable tokenizer in %r: it maps text to %d token ids within %s", str(src), len(ids), vocab)
        return None
    return tokenizer


def _variant_request(config, pretrained_model_name_or_path, variant_kwargs, kwargs) -> AttnVariantConfig:
    if config is not None:
        return AttnVariantConfig.from_base(config, **variant_kwargs)
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    return AttnVariantConfig.from_pretrained(pretrained_model_name_or_path, **variant_kwargs, **hub_kwargs)


def _pop_variant_kwargs(kwargs: dict) -> dict | None:
    """The variant keyword arguments taken out of ``kwargs``, or ``None`` when no variant is asked for."""
    variant_kwargs = {k: kwargs.pop(k) for k in _VARIANT_KWARGS if k in kwargs}
    if variant_kwargs.get("attn_variant") is None and variant_kwargs.get("num_key_value_heads") is None:
        given = sorted(variant_kwargs) + sorted(k for k in _MERGE_KWARGS if k in kwargs)
        if given:
            raise ValueError(f"{given} given without attn_variant or num_key_value_heads")
        return None
    return variant_kwargs


def _names_default_model(src) -> bool:
    """Whether ``src`` is the alias of the default model (and no local folder of that name shadows it)."""
    return isinstance(src, str) and src == ALIAS and not os.path.exists(src)


def _make_auto_class(base: type, builder: type) -> type:
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, fast_decode: bool = False, **kwargs):
        if _names_default_model(pretrained_model_name_or_path):  # "smollm2", as on the command line
            pretrained_model_name_or_path, kwargs["gguf_file"] = resolve_source(
                pretrained_model_name_or_path, kwargs.get("gguf_file")
            )
        variant_kwargs = _pop_variant_kwargs(kwargs)
        switch = kwargs.get("attn_implementation") == FAST_DECODE_ATTENTION and variant_kwargs is not None
        if switch:  # the source loads with sdpa (not every family's own classes know the plugin's kernel)
            kwargs["attn_implementation"] = "sdpa"
        if variant_kwargs is None:
            model = base.from_pretrained.__func__(cls, pretrained_model_name_or_path, *model_args, **kwargs)
        else:
            request = _variant_request(
                kwargs.pop("config", None), pretrained_model_name_or_path, variant_kwargs, kwargs
            )
            model = builder.from_pretrained(pretrained_model_name_or_path, *model_args, config=request, **kwargs)
        if switch:
            use_fast_kernel(model)
        return enable_fast_decode(model) if fast_decode else model

    def from_config(cls, config, **kwargs):
        variant_kwargs = _pop_variant_kwargs(kwargs)
        if variant_kwargs is not None:
            config = AttnVariantConfig.from_base(config, **variant_kwargs)
        return base.from_config.__func__(cls, config, **kwargs)

    doc = (
        f"transformers.{base.__name__}, plus ``attn_variant`` (mha | gqa | mqa), ``num_key_value_heads`` and the "
        "conversion recipe (``kv_init``: a hf_attn_variants.KVRecipe, a method or a preset name, default 'auto'; "
        "and KVRecipe's fields) in ``from_pretrained`` and ``from_config``; ``from_pretrained`` also takes "
        "``calibration``; ``fast_decode=True`` switches the loaded model to the plugin's decode path "
        "(hf_attn_variants.enable_fast_decode)."
    )
    return type(
        base.__name__,
        (base,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "from_pretrained": classmethod(from_pretrained),
            "from_config": classmethod(from_config),
        },
    )


AutoModelForCausalLM = _make_auto_class(transformers.AutoModelForCausalLM, AttnVariantForCausalLM)
AutoModel = _make_auto_class(transformers.AutoModel, AttnVariantModel)
