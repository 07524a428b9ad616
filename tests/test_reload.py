"""Saved variants reload, the way the README says, in a fresh process: same logits, still causal, LoRA too.

For every family x {GQA-2, MQA, MHA}: the variant is saved with ``save_pretrained`` (and a LoRA adapter of it with
PEFT), then ONE fresh Python process loads every checkpoint with no extra argument, as a user would:
``import hf_attn_variants; transformers.AutoModelForCausalLM.from_pretrained(path)``, and
``hav.AutoModelForCausalLM.from_pretrained(path)``, and the base plus ``peft.PeftModel.from_pretrained``. Each load
must give the saved model's logits and be causal: changing the last token changes no earlier position's logits.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from safetensors.torch import save_file

import hf_attn_variants as hav

from .conftest import FAMILIES, run_script_on_cases, tiny_model

VARIANTS = {"gqa-2": ("gqa", 2), "mqa": ("mqa", None), "mha": ("mha", None)}
LOADERS = ("transformers", "hav", "peft")

# The fresh process: loads every case listed in argv[1] and writes what it found to argv[2].
RELOAD = r"""
import json, sys
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file

import hf_attn_variants as hav

cases, results = json.loads(open(sys.argv[1]).read()), {}
for case in cases:
    data = load_file(case["expected"])
    ids = data["input_ids"]
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 90 + 3
    for loader in ("transformers", "hav", "peft"):
        if loader == "transformers":
            model = transformers.AutoModelForCausalLM.from_pretrained(case["path"])
            expected = data["logits"]
        elif loader == "hav":
            model = hav.AutoModelForCausalLM.from_pretrained(case["path"])
            expected = data["logits"]
        else:
            base = transformers.AutoModelForCausalLM.from_pretrained(case["path"])
            model = PeftModel.from_pretrained(base, case["adapter"])
            expected = data["lora_logits"]
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids).logits
            out_changed = model(input_ids=changed).logits
        results[f"{case['name']}/{loader}"] = {
            "attn_implementation": model.config._attn_implementation,
            "model_type": model.config.model_type,
            "max_diff": (out - expected).abs().max().item(),
            "causal_leak": (out[:, :-1] - out_changed[:, :-1]).abs().max().item(),
        }
open(sys.argv[2], "w").write(json.dumps(results))
"""


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@functools.cache
def own_kernel_gap(family: str, with_lora: bool) -> float:
    """How far plain transformers' sdpa logits are from its eager ones on the family's tiny model (LoRA as above)."""
    from peft import get_peft_model

    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    model = tiny_model(family)
    if with_lora:
        torch.manual_seed(0)
        model = get_peft_model(model, hav.lora_config(model, init_lora_weights=False))
    eager = _logits(model.eval(), ids)
    model.set_attn_implementation("sdpa")
    return (_logits(model, ids) - eager).abs().max().item()


@pytest.fixture(scope="module")
def reloads(tmp_path_factory):
    """What the fresh process found for every family x variant x loader."""
    from peft import get_peft_model

    root = tmp_path_factory.mktemp("reload")
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    cases = []
    for family in FAMILIES:
        for name, (variant, count) in VARIANTS.items():
            folder = root / f"{family}-{name}"
            model = hav.convert(tiny_model(family), variant, count)  # eager, as from_config built it
            model.save_pretrained(folder)
            torch.manual_seed(0)
            lora = get_peft_model(copy.deepcopy(model), hav.lora_config(model, init_lora_weights=False)).eval()
            lora.save_pretrained(folder / "adapter")
            expected = {"input_ids": ids, "logits": _logits(model, ids), "lora_logits": _logits(lora, ids)}
            save_file(expected, str(folder / "expected.safetensors"))
            cases.append(
                {
                    "name": f"{family}/{name}",
                    "path": str(folder),
                    "adapter": str(folder / "adapter"),
                    "expected": str(folder / "expected.safetensors"),
                }
            )
    return run_script_on_cases(RELOAD, cases, root)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_saved_variant_reloads_with_default_arguments(reloads, family, variant, loader):
    found = reloads[f"{family}/{variant}/{loader}"]
    # transformers resolves the unset kernel of a config read from disk (sdpa where the family has it)
    assert found["attn_implementation"] in ("sdpa", "eager"), found
    # the saved model ran eager attention; sdpa agrees within float rounding: transformers' own, where its sdpa
    # kernel rounds further from its eager one than that (Gemma-2's soft-capped scores in transformers 5.19)
    bound = 1e-5 if found["attn_implementation"] == "eager" else max(1e-5, 2 * own_kernel_gap(family, loader == "peft"))
    assert found["max_diff"] < bound, found
    assert found["causal_leak"] < 1e-6, found


def test_a_variant_config_read_from_disk_gets_a_kernel(tmp_path):
    """The unset kernel of a saved plugin config is resolved by transformers, not put back to ``None``."""
    import transformers

    hav.convert(tiny_model("gpt2"), "mqa").save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert config._attn_implementation is None
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert model.config._attn_implementation == "sdpa"
