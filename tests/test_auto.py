"""The drop-in Auto classes and AttnVariantConfig, through hav and through plain transformers."""

from __future__ import annotations

import re

import pytest
import torch
import transformers

import hf_attn_variants as hav

from .conftest import FAMILIES, HEADS, NO_SDPA, PLUGIN, tiny_config, tiny_model


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture(params=FAMILIES)
def saved(request, tmp_path):
    """A tiny source checkpoint of each family on disk, with the model it was saved from."""
    model = tiny_model(request.param)
    model.save_pretrained(tmp_path / "src")
    return request.param, tmp_path / "src", model


def test_without_attn_variant_the_auto_classes_are_transformers_own(saved, input_ids):
    _, src, model = saved
    loaded = hav.AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager").eval()
    assert type(loaded) is type(model)
    assert torch.equal(logits(loaded, input_ids), logits(model, input_ids))
    assert type(hav.AutoModel.from_pretrained(src)) is type(transformers.AutoModel.from_pretrained(src))
    assert issubclass(hav.AutoModelForCausalLM, transformers.AutoModelForCausalLM)


@pytest.mark.parametrize("variant, count", [("gqa", 2), ("mqa", None), ("mha", None)])
def test_from_pretrained_converts_like_convert(saved, variant, count, input_ids, tmp_path):
    family, src, model = saved
    loaded = hav.AutoModelForCausalLM.from_pretrained(
        src, attn_variant=variant, num_key_value_heads=count, attn_implementation="eager"
    ).eval()
    expected = hav.convert(model, variant, count)
    assert type(loaded) is type(expected)
    assert hav.family_for(loaded.config).num_kv_heads(loaded.config) == hav.resolve_num_kv_heads(variant, count, HEADS)
    assert torch.equal(logits(loaded, input_ids), logits(expected, input_ids))
    loaded.save_pretrained(tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert torch.equal(logits(reloaded, input_ids), logits(loaded, input_ids))


def test_from_pretrained_passes_transformers_kwargs(saved):
    family, src, _ = saved
    attn = "eager" if family in NO_SDPA else "sdpa"
    model = hav.AutoModelForCausalLM.from_pretrained(
        src, attn_variant="mqa", dtype=torch.bfloat16, attn_implementation=attn
    )
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == attn


def test_base_model_from_pretrained(saved):
    family, src, _ = saved
    model = hav.AutoModel.from_pretrained(src, attn_variant="mqa")
    assert not hasattr(model, "lm_head")
    assert hav.family_for(model.config).num_kv_heads(model.config) == 1


def test_attn_variant_config_with_plain_transformers(saved, input_ids, tmp_path):
    family, src, model = saved
    cfg = hav.AttnVariantConfig.from_pretrained(src, attn_variant="gqa", num_key_value_heads=2)
    assert cfg.model_type == "attn_variant" and cfg.num_key_value_heads == 2 and cfg.attn_variant == "gqa"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(src, config=cfg, attn_implementation="eager").eval()
    assert torch.equal(logits(loaded, input_ids), logits(hav.convert(model, "gqa", 2), input_ids))

    random = transformers.AutoModelForCausalLM.from_config(cfg)
    assert type(random) is type(loaded)
    assert hav.family_for(random.config).num_kv_heads(random.config) == 2
    assert not torch.equal(logits(random.eval(), input_ids), logits(loaded, input_ids))

    cfg.save_pretrained(tmp_path / "request")  # a request saved to disk loads back through AutoConfig
    again = transformers.AutoConfig.from_pretrained(tmp_path / "request")
    assert isinstance(again, hav.AttnVariantConfig) and again.base().to_dict() == cfg.base().to_dict()


def test_from_base_and_from_config_kwargs(saved):
    family, src, model = saved
    cfg = hav.AttnVariantConfig.from_base(model.config, "mqa")
    assert cfg.num_key_value_heads == 1 and cfg.attn_variant == "mqa"
    random = hav.AutoModelForCausalLM.from_config(model.config, attn_variant="gqa", num_key_value_heads=4)
    assert hav.family_for(random.config).num_kv_heads(random.config) == 4


def test_num_key_value_heads_alone_names_the_variant():
    cfg = hav.AttnVariantConfig.from_base(tiny_model("llama").config, num_key_value_heads=1)
    assert cfg.attn_variant == "mqa"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attn_variant="mla"), "attn_variant='mla' is not one of ['mha', 'gqa', 'mqa']"),
        (
            dict(attn_variant="gqa"),
            "attn_variant='gqa' needs num_key_value_heads; valid choices for 8 query heads: [2, 4]",
        ),
        (
            dict(attn_variant="gqa", num_key_value_heads=3),
            "num_key_value_heads=3 does not divide num_attention_heads=8; valid choices for attn_variant='gqa': [2, 4]",
        ),
        (
            dict(attn_variant="gqa", num_key_value_heads=16),
            "num_key_value_heads=16 is not between 1 and num_attention_heads=8; valid choices for attn_variant='gqa': "
            "[2, 4]",
        ),
        (
            dict(attn_variant="gqa", num_key_value_heads=8),
            "num_key_value_heads=8 makes MHA, not GQA, with num_attention_heads=8; valid choices for "
            "attn_variant='gqa': [2, 4]",
        ),
        (
            dict(attn_variant="mqa", num_key_value_heads=2),
            "attn_variant='mqa' means num_key_value_heads=1 for 8 query heads, got num_key_value_heads=2; use "
            "attn_variant='gqa' for other counts",
        ),
        (
            dict(attn_variant="mqa", kv_init="median"),
            "kv_init='median' is not one of ['auto', 'fast', 'best', 'mean', 'first', 'random', 'aligned', 'svd']",
        ),
        (dict(kv_init="first"), "['kv_init'] given without attn_variant or num_key_value_heads"),
    ],
)
def test_bad_variant_requests_raise_before_loading_weights(saved, kwargs, message, monkeypatch):
    _, src, _ = saved

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(no_weights))
    with pytest.raises(ValueError) as err:
        hav.AutoModelForCausalLM.from_pretrained(src, **kwargs)
    assert str(err.value) == message


def test_unsupported_family_lists_the_supported_ones(tmp_path):
    from hf_attn_variants.families import refused_model_types

    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    supported = hav.supported_model_types()
    assert set(FAMILIES) | {f"attn_variant_{f}" for f in PLUGIN} <= set(supported)
    why = refused_model_types()["bert"]  # the refused table's reason, named after the supported types
    assert why == "its config has no num_key_value_heads: every layer has as many K/V heads as query heads"
    message = f"model_type 'bert' is not supported by hf_attn_variants; supported: {sorted(supported)}; 'bert': {why}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.AttnVariantConfig.from_base(config, "mqa")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hav.convert(transformers.BertModel(config), "mqa")


def test_gpt2_cross_attention_is_refused():
    from .conftest import tiny_config

    with pytest.raises(
        ValueError,
        match="^GPT-2 with add_cross_attention=True is not supported: only its self-attention can be converted$",
    ):
        hav.AttnVariantConfig.from_base(tiny_config("gpt2", add_cross_attention=True), "mqa")


def test_register_family_validates():
    from hf_attn_variants.families import NativeFamily, PluginFamily

    with pytest.raises(ValueError, match="^a family named 'llama' is already registered$"):
        hav.register_family(NativeFamily("llama", ("llama",)))
    with pytest.raises(ValueError, match=r"^family 'other': model_type \['mistral'\] already belongs to 'mistral'$"):
        hav.register_family(NativeFamily("other", ("mistral",)))
    missing = "['attention_module', 'qkv', 'out_module', 'attention_class', 'config_class', 'model_classes', 'attention_scaling']"
    with pytest.raises(ValueError, match=f"^plugin family 'opt-incomplete' does not declare {re.escape(missing)}$"):
        hav.register_family(PluginFamily("opt-incomplete", ("opt",)))
    with pytest.raises(ValueError, match="^family 'empty' covers no model_type$"):
        hav.register_family(NativeFamily("empty", ()))
    with pytest.raises(
        ValueError, match=r"^family 'spiral' rotary_style='spiral' is not one of \[None, 'half', 'interleaved'\]$"
    ):
        hav.register_family(NativeFamily("spiral", ("spiral",), rotary_style="spiral"))


@pytest.mark.parametrize(
    "flags, error",
    [
        ({"scale_query": True, "divide_scores": True}, "sets scale_query and divide_scores: the scores would be scaled twice"),
        ({"alibi": True, "upcast_flag": "reorder_and_upcast_attn"},
         "sets alibi and upcast_flag: the eager kernel adds ALiBi to scores in the model's dtype only"),
        ({"resid_dropout": "resid_dropout", "residual_dropout_config": "resid_pdrop"},
         "sets residual_dropout_config and resid_dropout: the output would be dropped out twice"),
    ],
)  # fmt: skip
def test_flags_that_would_decide_one_step_twice_are_refused(flags, error):
    """VariantAttention resolves each step from one declaration field (modeling.AttentionParts); two fields that
    would both decide it are refused at registration, not left to override each other."""
    import dataclasses

    opt = hav.family_for(tiny_config("opt"))
    clash = dataclasses.replace(opt, name="opt-clash", model_types=("opt_clash",), **flags)
    with pytest.raises(ValueError, match=f"^plugin family 'opt-clash' {re.escape(error)}$"):
        hav.register_family(clash)


@pytest.fixture
def restored_registry():
    """The family registry as it was before the test, whatever the test registers."""
    from hf_attn_variants.families import registry

    tables = (registry._FAMILIES, registry._BY_MODEL_TYPE, registry._VARIANT_CONFIGS, registry._VARIANT_MODELS)
    saved = [dict(t) for t in tables]
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)


def test_a_plugin_family_registered_after_import_gets_its_variant_classes(restored_registry, input_ids):
    import dataclasses

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from hf_attn_variants.families.registry import variant_config_class, variant_model_classes

    source = tiny_model("opt")
    opt = hav.family_for(source.config)
    family = hav.register_family(dataclasses.replace(opt, name="opt-copy", model_types=("opt_hav_copy",)))
    config_class = variant_config_class(family)
    assert CONFIG_MAPPING["attn_variant_opt_hav_copy"] is config_class
    assert config_class.__name__ == "OPTAttnVariantConfig" and issubclass(config_class, transformers.OPTConfig)
    assert config_class is not variant_config_class(opt)
    variants = variant_model_classes(family)
    assert set(variants) == set(opt.model_classes)
    assert all(issubclass(variant, base) for base, variant in variants.items())

    expected = logits(hav.convert(source, "gqa", num_key_value_heads=2), input_ids)
    source.config.model_type = "opt_hav_copy"  # the same model, now of the family registered late
    assert hav.family_for(source.config) is family
    converted = hav.convert(source, "gqa", num_key_value_heads=2)
    assert type(converted) is variants[transformers.OPTForCausalLM]
    assert type(converted.config) is config_class
    assert torch.equal(logits(converted, input_ids), expected)


def test_the_families_package_imports_no_model_layer():
    """``families/`` holds declarations: the model layer builds their classes, never the other way round."""
    import ast
    import importlib.util
    from pathlib import Path

    package = Path(hav.__file__).parent / "families"
    model_layer = {f"hf_attn_variants.{m}" for m in ("configuration", "modeling", "registration", "auto")}
    found = {}
    for path in sorted(package.glob("*.py")):
        module = f"hf_attn_variants.families.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.rpartition(".")[0])
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            bad = [n for n in names if any(n == m or n.startswith(m + ".") for m in model_layer)]
            if bad:
                found[f"{path.name}:{node.lineno}"] = bad
    assert found == {}


def package_imports() -> dict[str, set[str]]:
    """Each module of the package (relative name, ``""`` for the package): the package's modules it imports."""
    import ast
    import importlib.util
    from pathlib import Path

    root = Path(hav.__file__).parent
    paths = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix("__init__").rstrip("."): p
        for p in sorted(root.rglob("*.py"))
    }
    found = {}
    for module, path in paths.items():
        package = "hf_attn_variants" + (f".{module}" if module else "")
        package = package if path.name == "__init__.py" else package.rpartition(".")[0]
        uses, tree = set(), ast.parse(path.read_text(), str(path))
        typing_only = {  # `if TYPE_CHECKING:` imports are annotations, not dependencies
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "hf_attn_variants":  # the longest prefix that is one of the package's modules
                    inner = next(
                        ".".join(parts[1:n]) for n in range(len(parts), 0, -1) if ".".join(parts[1:n]) in paths
                    )
                    uses.add(inner)
        found[module] = uses - {module, ""}
    return found


def test_the_layers_the_readme_draws_import_only_downwards():
    """The head math imports nothing of the package but its vocabulary, families/ only the head math, the model
    layer's attention no conversion code, and nothing below the front ends imports one."""
    imports = package_imports()
    vocabulary, head_math = {"choices", "compat"}, {"heads", "merging"}  # leaves: names, transformers' minors
    front_ends = {"cli", "tradeoff", "training"}
    wrong = {}
    for module, uses in imports.items():
        allowed = None
        if module in head_math:
            allowed = vocabulary | head_math
        elif module.startswith("families"):
            allowed = vocabulary | head_math | {m for m in uses if m.startswith("families")}
        elif module in ("modeling", "decoding"):
            allowed = {"modeling", "decoding"}
        elif module and module not in front_ends:
            allowed = set(imports) - front_ends
        if allowed is not None and not uses <= allowed:
            wrong[module] = sorted(uses - allowed)
    assert wrong == {}


def test_adapter_questions_by_name():
    """``is_kv_tensor`` says which tensors a conversion changes, ``saves_natively`` which G the family's own model
    holds; ``convert_tensor`` only converts, and refuses a tensor that is no K/V tensor."""
    llama, gpt2 = hav.family_for(tiny_config("llama")), hav.family_for(tiny_config("gpt2"))
    assert llama.is_kv_tensor("model.layers.0.self_attn.k_proj.weight")
    assert not llama.is_kv_tensor("model.layers.0.self_attn.q_proj.weight")
    assert gpt2.is_kv_tensor("transformer.h.1.attn.c_attn.bias") and not gpt2.is_kv_tensor(
        "transformer.h.1.attn.c_proj.weight"
    )
    config = tiny_config("llama")
    with pytest.raises(
        ValueError, match=r"^lm_head\.weight: not a K/V tensor of the llama family; only those are converted$"
    ):
        llama.convert_tensor("lm_head.weight", torch.zeros(3, 3), config, 1, "mean")
    key = "model.layers.0.self_attn.k_proj.weight"
    rows = llama.num_kv_heads(config) * llama.head_dim(config)
    assert llama.kv_tensor_shape(key, (rows, 64), torch.bfloat16, config, 1) == (llama.head_dim(config), 64)
    with pytest.raises(ValueError, match=r"only floating-point K/V weights can be regrouped"):
        llama.check_kv_tensor(key, (rows, 64), torch.int8, config)
    heads = {name: hav.family_for(tiny_config(name)).num_heads(tiny_config(name)) for name in ("gpt2", "gpt_bigcode")}
    assert [g for g in range(1, heads["gpt2"] + 1) if gpt2.saves_natively(tiny_config("gpt2"), g)] == [heads["gpt2"]]
    bigcode = hav.family_for(tiny_config("gpt_bigcode"))
    native = [g for g in range(1, heads["gpt_bigcode"] + 1) if bigcode.saves_natively(tiny_config("gpt_bigcode"), g)]
    assert native == [1, heads["gpt_bigcode"]]
    assert llama.saves_natively(config, 1)
