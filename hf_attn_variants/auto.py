"""Drop-in Auto classes, and the classes that build a model from an ``AttnVariantConfig``.

``hav.AutoModelForCausalLM`` / ``hav.AutoModel`` are transformers' own classes plus the keyword arguments
``attn_variant``, ``num_key_value_heads``, ``kv_init`` and ``kv_init_seed``. With none of them they are
transformers' classes, unchanged. With them, the source's pretrained weights are loaded by transformers
(so ``dtype``, ``device_map``, ``attn_implementation`` and GGUF files work as usual) and converted.
``fast_decode=True`` (with or without a variant) ends with ``hav.enable_fast_decode`` on the loaded model.
"""

from __future__ import annotations

import transformers

from .configuration import HUB_KWARGS, AttnVariantConfig
from .convert import convert, merges_heads
from .decoding import FAST_DECODE_ATTENTION, enable_fast_decode, use_fast_kernel
from .families import family_for

_VARIANT_KWARGS = ("attn_variant", "num_key_value_heads", "kv_init", "kv_init_seed")
_MERGE_KWARGS = (
    "calibration",
    "grouping",
    "fit",
    "sequential",
    "refine_steps",
    "refine_lr",
)  # options of hav.convert, not of the config
_AUTO_ONLY_KWARGS = ("_from_auto", "adapter_kwargs", "trust_remote_code")


class _AttnVariantBuilder:
    """Registered for ``AttnVariantConfig`` with an Auto class; builds the variant the config asks for."""

    config_class = AttnVariantConfig
    source_auto_class: type = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config: AttnVariantConfig, **kwargs):
        """Load the source model with transformers, then convert it to ``config``'s variant.

        Merge options of :func:`hf_attn_variants.convert` (``calibration``, ``grouping``, ``fit``,
        ``sequential``) pass through; a method that needs calibration and gets none (or a dict of
        :func:`hf_attn_variants.calibrate` options) is calibrated with the source's own tokenizer, by default
        on 128 blocks of 256 tokens of the default text.
        """
        for key in _AUTO_ONLY_KWARGS:
            kwargs.pop(key, None)
        options = {k: kwargs.pop(k) for k in _MERGE_KWARGS if k in kwargs}
        source = cls.source_auto_class.from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config.base(), **kwargs
        )
        given = options.get("calibration")
        if (given is None or isinstance(given, dict)) and needs_calibration(source, config, options):
            from .calibration import calibrate

            tokenizer_kwargs = {k: kwargs[k] for k in (*HUB_KWARGS, "gguf_file") if k in kwargs}
            tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **tokenizer_kwargs)
            options["calibration"] = calibrate(source, tokenizer, **(given or {}))
        return convert(
            source, config.attn_variant, config.num_key_value_heads, config.kv_init, config.kv_init_seed, **options
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


def needs_calibration(source, config: AttnVariantConfig, options: dict) -> bool:
    """Whether converting ``source`` to ``config``'s variant with ``options`` merges heads from calibration."""
    family = family_for(source.config)
    merging = merges_heads(
        config.kv_init,
        options.get("grouping", "contiguous"),
        options.get("fit", False),
        options.get("sequential", False),
    )
    return merging and config.num_key_value_heads % family.num_kv_heads(source.config) != 0


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


def _make_auto_class(base: type, builder: type) -> type:
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, fast_decode: bool = False, **kwargs):
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
        f"transformers.{base.__name__}, plus ``attn_variant`` (mha | gqa | mqa), ``num_key_value_heads``, "
        "``kv_init`` (mean | first | random | aligned | svd) and ``kv_init_seed`` in ``from_pretrained`` and "
        "``from_config``; ``from_pretrained`` also takes hf_attn_variants.convert's ``calibration``, ``grouping``, "
        "``fit`` and ``sequential``; ``fast_decode=True`` switches the loaded model to the plugin's decode path "
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
