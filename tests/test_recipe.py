"""The conversion recipe: one object behind every front end, presets, ``auto`` as the default, and its record."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys

import pytest
import torch
import transformers

import hf_attn_variants as hav
from hf_attn_variants import cli
from hf_attn_variants.recipe import PRESETS, RECIPE_OPTIONS, KVRecipe

from .conftest import char_tokenizer, save_tiny_checkpoint, tiny_model


def test_presets_fill_the_options_left_at_their_defaults():
    best = KVRecipe(kv_init="best")
    assert (best.kv_init, best.refine_steps, best.refine_lr, best.calibration_samples, best.preset) == (
        "svd",
        40,
        2e-4,
        16,
        "best",
    )
    assert (best.distill_steps, best.distill_lr, best.distill_generated) == (30, 5e-4, 16)
    assert best.calibrate_kwargs()["generated"] == 16
    assert KVRecipe(kv_init="svd", distill_generated=16).calibrate_kwargs()["generated"] == 0  # nothing distils
    assert KVRecipe(kv_init="best", refine_steps=10).refine_steps == 10  # an explicit option wins
    fast = KVRecipe(kv_init="fast")
    assert (fast.kv_init, fast.refine_steps, fast.calibration_samples) == ("svd", 0, 32)
    assert set(PRESETS) == {"fast", "best"}
    assert KVRecipe().kv_init == "auto"  # the default everywhere


def test_auto_is_best_with_text_at_hand_and_mean_without(caplog):
    with caplog.at_level("WARNING"):
        calibrated = KVRecipe().resolve(can_calibrate=True)
    assert calibrated.options() == KVRecipe(kv_init="best").options() and calibrated.preset == "auto -> best"
    assert (
        "kv_init='auto': svd, refine_steps=40, refine_lr=0.0002, distill_steps=30, distill_lr=0.0005, "
        "distill_generated=16, 16 x 256 calibration tokens (preset auto -> best)" in caplog.text
    )
    with caplog.at_level("WARNING"):
        fallback = KVRecipe().resolve(can_calibrate=False)
    assert (fallback.kv_init, fallback.preset) == ("mean", "auto -> mean")
    assert "kv_init='auto': no tokenizer or calibration text at hand, so the K/V heads are mean-pooled" in caplog.text
    assert KVRecipe(kv_init="svd").resolve(False).kv_init == "svd"  # only auto depends on what is at hand


@pytest.mark.parametrize(
    "options, message",
    [
        (
            dict(kv_init="median"),
            "kv_init='median' is not one of ['auto', 'fast', 'best', 'mean', 'first', 'random', 'aligned', 'svd']",
        ),
        (dict(grouping="nearest"), "grouping='nearest' is not one of ['contiguous', 'similarity']"),
        (dict(fit="yes"), "fit='yes' must be True or False"),
        (dict(refine_steps=-5), "refine_steps=-5 must be a whole number, 0 or more"),
        (dict(refine_steps=2.5), "refine_steps=2.5 must be a whole number, 0 or more"),
        (dict(refine_lr=math.inf), "refine_lr=inf must be a finite number above 0 (such as 1e-4)"),
        (dict(refine_lr=0.0), "refine_lr=0.0 must be a finite number above 0 (such as 1e-4)"),
        (dict(calibration_samples=0), "calibration_samples=0 must be a whole number, 1 or more"),
        (dict(calibration_seq_len=1), "calibration_seq_len=1 must be a whole number, 2 or more"),
        (dict(calibration_data_files=[3]), "calibration_data_files=[3] must be a list of file paths"),
        (
            dict(kv_init="first", sequential=True),
            "kv_init='first' takes no merge options, got {'sequential': True}; use kv_init mean, aligned or svd with "
            "grouping, fit, sequential, refine_steps or distill_steps",
        ),
        (
            dict(kv_init="random", refine_steps=3),
            "kv_init='random' takes no merge options, got {'refine_steps': 3}; use kv_init mean, aligned or svd with "
            "grouping, fit, sequential, refine_steps or distill_steps",
        ),
    ],
)
def test_bad_recipes_are_refused_naming_the_value_and_the_choices(options, message):
    with pytest.raises(ValueError) as err:
        KVRecipe(**options)
    assert str(err.value) == message
    with pytest.raises(ValueError) as err:  # the keyword convenience says the same
        hav.convert(tiny_model("llama"), "mqa", **options)
    assert message in str(err.value)


def test_unknown_recipe_options_are_named():
    valid = [f.name for f in dataclasses.fields(KVRecipe) if f.name != "preset"]  # every field a user may set
    message = f"unknown recipe options ['refine_step']; valid: {valid}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        KVRecipe.build("svd", refine_step=3)


def test_convert_records_the_recipe_in_the_saved_config(tmp_path):
    model = hav.convert(tiny_model("gpt2"), "mqa", kv_init="first")
    assert model.config.attn_variant_recipe == {"kv_init": "first", "kv_init_seed": 0, "grouping": "contiguous",
                                                "fit": False, "sequential": False, "refine_steps": 0,
                                                "refine_lr": 1e-4, "distill_steps": 0, "distill_lr": 1e-4,
                                                "distill_generated": 0, "preset": None}  # fmt: skip
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attn_variant_recipe"]["kv_init"] == "first"
    assert hav.convert(tiny_model("llama"), "mha").config.attn_variant_recipe == {"kv_init": "exact duplication"}


def test_the_default_with_a_tokenizer_is_the_best_recipe_and_without_one_mean(tmp_path):
    source = tiny_model("llama", vocab_size=len(char_tokenizer()))
    calibrated = hav.convert(source, "mqa", tokenizer=char_tokenizer())
    recorded = calibrated.config.attn_variant_recipe
    assert (recorded["kv_init"], recorded["refine_steps"], recorded["preset"]) == ("svd", 40, "auto -> best")
    assert recorded["calibration_tokens"] == 16 * 64  # the model reads at most 64 positions
    pooled = hav.convert(source, "mqa")
    assert pooled.config.attn_variant_recipe["preset"] == "auto -> mean"
    key = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(pooled.state_dict()[key], hav.convert(source, "mqa", kv_init="mean").state_dict()[key])


def test_expansion_never_calibrates(monkeypatch):
    import hf_attn_variants.calibrated.calibration as calibration

    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: pytest.fail("expansion calibrated"))
    source = tiny_model("llama", vocab_size=len(char_tokenizer()))
    expanded = hav.convert(source, "mha", kv_init="best", tokenizer=char_tokenizer())
    ids = torch.randint(3, 90, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(expanded(ids).logits, source(ids).logits, rtol=0, atol=0)


def test_from_pretrained_forwards_every_recipe_option(tmp_path):
    """Issue 14.6: ``refine_steps`` (and every other field) reaches the conversion from the Auto class."""
    src = save_tiny_checkpoint(tmp_path / "src", "llama", max_position_embeddings=128)
    model = hav.AutoModelForCausalLM.from_pretrained(
        src, attn_variant="mqa", refine_steps=1, refine_lr=3e-4, calibration_samples=2, calibration_seq_len=32
    )
    recorded = model.config.attn_variant_recipe
    assert [recorded[k] for k in ("kv_init", "refine_steps", "refine_lr", "calibration_tokens", "preset")] == [
        "svd",
        1,
        3e-4,
        2 * 32,
        "auto -> best",
    ]
    config = hav.AttnVariantConfig.from_pretrained(src, attn_variant="mqa", kv_init="best", refine_steps=3)
    assert config.kv_recipe.refine_steps == 3 and config.kv_recipe.kv_init == "svd"
    config.save_pretrained(tmp_path / "request")
    again = transformers.AutoConfig.from_pretrained(tmp_path / "request")  # the registered config, read back
    assert type(again) is hav.AttnVariantConfig and again.recipe == config.recipe


@pytest.mark.parametrize("command", ["convert", "tradeoff", "train"])
def test_every_recipe_field_is_a_flag_of_every_subcommand(command, capsys):
    argv = {"convert": ["convert", "--help"], "tradeoff": ["tradeoff", "--help"], "train": ["train", "--help"]}
    with pytest.raises(SystemExit):
        cli.main(argv[command])
    text = capsys.readouterr().out
    for name in RECIPE_OPTIONS:
        assert f"--{name.replace('_', '-')}" in text, (command, name)


def test_cli_convert_default_recipe_calibrates_and_says_so(tmp_path):
    """``hf-attn-variants convert SRC OUT --variant mqa``, as a user types it: auto -> best, printed and recorded."""
    src = save_tiny_checkpoint(tmp_path / "src", "llama", max_position_embeddings=256)
    run = subprocess.run(
        [sys.executable, "-m", "hf_attn_variants.cli", "convert", str(src), str(tmp_path / "out"), "--variant", "mqa"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    label = (
        "svd, refine_steps=40, refine_lr=0.0002, distill_steps=30, distill_lr=0.0005, distill_generated=16, "
        "16 x 256 calibration tokens (preset auto -> best)"
    )
    assert label in run.stdout and "tokens the source wrote itself" in run.stdout
    recorded = json.loads((tmp_path / "out" / "config.json").read_text())["attn_variant_recipe"]
    assert (recorded["kv_init"], recorded["preset"], recorded["calibration_tokens"]) == ("svd", "auto -> best", 4096)
    assert recorded["generated_tokens"] == 4096  # 16 blocks of 256 tokens, written from its BOS token
    card = (tmp_path / "out" / "README.md").read_text()
    assert "preset auto -> best" in card and "calibrated on 4,096 tokens of" in card
    assert "distilled on them and 4,096 tokens the source wrote itself" in card


def test_cli_convert_without_a_tokenizer_streams_mean_pooling(tmp_path, capsys):
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)  # weights only: no tokenizer to read calibration text
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--variant", "mqa"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote {tmp_path / 'out'} (K/V heads: mean (preset auto -> mean); weights float32)"
    )
    recorded = json.loads((tmp_path / "out" / "config.json").read_text())["attn_variant_recipe"]
    assert (recorded["kv_init"], recorded["preset"]) == ("mean", "auto -> mean")
    assert "calibration_samples" not in recorded  # a pooling recipe reads no calibration text


def test_cli_refuses_a_calibrated_method_without_a_tokenizer(tmp_path, capsys):
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--variant", "mqa", "--kv-init", "svd"]) == 2
    err = capsys.readouterr().err
    assert "kv_init='svd'" in err and "has none; use --kv-init mean (or first, random)" in err
    assert not (tmp_path / "out").exists()
