"""Uptraining and fine-tuning: what is trained changes and nothing else does, distillation, LoRA, resume, DDP."""

import copy
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import hf_attn_variants as hav
from hf_attn_variants import cli
from hf_attn_variants.training import (
    RESULTS_FILE,
    budget_steps,
    check_arguments,
    freeze_for_uptraining,
    main,
    parse_arguments,
)

from .conftest import check_hub_ready, save_tiny_checkpoint, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny Llama (GQA-4 of 8 heads) and a GPT-2, with a character tokenizer, and a text file."""
    import pydoc_data.topics

    root = tmp_path_factory.mktemp("training")
    save_tiny_checkpoint(root / "llama", "llama", max_position_embeddings=128)
    save_tiny_checkpoint(root / "gpt2", "gpt2", n_positions=128)
    topics = pydoc_data.topics.topics
    (root / "corpus.txt").write_text("\n\n".join(topics[k] for k in sorted(topics))[:40_000])
    return root


def train_args(ws, out, *extra, model="llama"):
    """The arguments of a small run; K/V heads mean-pooled unless ``extra`` names a recipe (the default is tested apart)."""
    recipe = [] if {"--kv_init", "--kv-init"} & set(extra) else ["--kv-init", "mean"]
    return [
        *recipe,
        "--model_name_or_path", str(ws / model),
        "--data_files", str(ws / "corpus.txt"),
        "--block_size", "32",
        "--max_eval_blocks", "16",
        "--output_dir", str(out),
        "--per_device_train_batch_size", "4",
        "--learning_rate", "3e-3",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--use_cpu",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


def test_freeze_kv_leaves_only_the_kv_projections_trainable():
    model = tiny_model("llama")
    trainable = freeze_for_uptraining(model, "kv")
    assert sorted(trainable) == [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "kv"]
    qkvo = freeze_for_uptraining(model, "qkvo")
    assert {n.split(".")[-2] for n in qkvo} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(freeze_for_uptraining(model, "all")) == len(list(model.parameters()))


def test_freeze_refuses_what_cannot_be_trained_alone():
    gpt2 = hav.convert(tiny_model("gpt2"), "gqa", 2)
    with pytest.raises(ValueError, match=r"gpt2 fuses q, k and v .*attn.c_attn.*'qkvo' or 'all'"):
        freeze_for_uptraining(gpt2, "kv")
    assert {n.rsplit(".", 2)[-2] for n in freeze_for_uptraining(gpt2, "qkvo")} == {"c_attn", "c_proj"}
    with pytest.raises(ValueError, match=r"train_modules 'mlp' is not one of \['all', 'kv', 'qkvo'\]"):
        freeze_for_uptraining(gpt2, "mlp")


def test_token_budget_in_steps():
    assert budget_steps(0.05, 2_000_000, tokens_per_step=1000) == 100
    assert budget_steps(0.05, 2_000_001, tokens_per_step=1000) == 101  # rounds up: at least the budget
    with pytest.raises(
        ValueError, match=r"^uptrain_fraction 0 must lie in \(0, 1\] and pretrain_tokens 1000000000.0 be > 0$"
    ):
        budget_steps(0, 1e9, 1000)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attn_variant", "xqa"], "attn_variant 'xqa' is not one of ['mha', 'gqa', 'mqa']"),
        (["--dtype", "int8"], "dtype 'int8' is not one of ['auto', 'float32', 'bfloat16', 'float16']"),
        (["--train_modules", "mlp"], "train_modules 'mlp' is not one of ['all', 'kv', 'qkvo']"),
        (
            ["--use_peft", "--train_modules", "kv"],
            "with --use_peft the LoRA targets say what is trained; leave --train_modules at 'all'",
        ),
        (
            ["--uptrain_fraction", "0.05"],
            "give --uptrain_fraction and --pretrain_tokens together (the budget is their product)",
        ),
        (
            ["--uptrain_fraction", "0.05", "--pretrain_tokens", "1e9", "--max_steps", "3"],
            "give either --max_steps or --uptrain_fraction/--pretrain_tokens, not both",
        ),
        (["--teacher", "x"], "--teacher is only used with --distill"),
    ],
)
def test_bad_arguments_are_refused_before_loading(tmp_path, argv, message):
    model_args, _, uptrain_args, training_args = parse_arguments(argv + ["--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_arguments(model_args, uptrain_args, training_args)


@pytest.mark.parametrize("flag", ["--kv_init", "--kv-init"])
def test_an_unknown_recipe_is_refused_with_the_choices(tmp_path, capsys, flag):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", flag, "median", "--output_dir", str(out)])
    assert stop.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    choices = "'auto', 'fast', 'best', 'mean', 'first', 'random', 'aligned', 'svd'"

    assert err.splitlines()[-1] == (
        f"hf-attn-variants train: error: argument --kv_init/--kv-init: invalid choice: 'median' (choose from {choices})"
    )
    assert len(err.splitlines()) == 2  # a short usage line, then the error


def test_cli_train_bad_input_exits_2_and_writes_nothing(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["train", *train_args(workspace, out, "--attn_variant", "gqa", "--num_key_value_heads", "3")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "hf-attn-variants train: error: num_key_value_heads=3 does not divide num_attention_heads=8; valid choices "
        "for attn_variant='gqa': [2, 4]"
    )
    assert not out.exists()


def test_kv_uptraining_changes_exactly_the_trainable_weights(workspace, tmp_path):
    out = tmp_path / "mqa-kv"
    results = main(train_args(workspace, out, "--attn_variant", "mqa", "--train_modules", "kv", "--max_steps", "4"))
    start = hav.convert(transformers.AutoModelForCausalLM.from_pretrained(workspace / "llama"), "mqa").state_dict()
    trained = weights(out)
    assert transformers.AutoConfig.from_pretrained(out).num_key_value_heads == 1
    for name, tensor in start.items():
        if name not in trained:  # tied or non-persistent
            continue
        changed = not torch.equal(trained[name], tensor)
        assert changed == (".k_proj." in name or ".v_proj." in name), name
    assert results["steps"] == 4 and results["tokens"] == 4 * 4 * 32
    assert results["trainable_parameters"] == sum(
        t.numel() for n, t in start.items() if ".k_proj." in n or ".v_proj." in n
    )
    saved = json.loads((out / RESULTS_FILE).read_text())
    assert saved["eval_end_perplexity"] == pytest.approx(results["eval_end_perplexity"])
    card = (out / "README.md").read_text()
    assert "MQA" in card and "4 steps" in card and "K/V projections" in card and "perplexity" in card


def test_full_uptraining_lowers_held_out_perplexity(workspace, tmp_path):
    results = main(train_args(workspace, tmp_path / "out", "--attn_variant", "gqa", "--num_key_value_heads", "2",
                              "--max_steps", "30"))  # fmt: skip
    assert results["eval_end_perplexity"] < 0.8 * results["eval_start_perplexity"]


def test_distillation_loss_falls_and_teacher_is_not_saved(workspace, tmp_path):
    out = tmp_path / "distil"
    results = main(train_args(workspace, out, "--attn_variant", "mqa", "--distill", "--distill_alpha", "1.0",
                              "--max_steps", "25", "--kv_init", "first"))  # fmt: skip
    kl = [e["kl_loss"] for e in _history(out) if "kl_loss" in e]
    assert len(kl) == 25 and all(torch.isfinite(torch.tensor(kl)))
    assert sum(kl[-5:]) / 5 < 0.7 * sum(kl[:5]) / 5, kl
    assert re.fullmatch(
        r"25 steps, 3,200 tokens, all weights, distillation from the source \(alpha 1\.0, T 2\.0\), \d+ s",
        results["uptraining"],
    )  # 25 steps x batch 4 x block 32 tokens; T: the default temperature
    assert not any("teacher" in k for k in weights(out))


def _history(out):
    return json.loads((out / RESULTS_FILE).read_text())["log_history"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_adapter_saves_reloads_and_merges(workspace, tmp_path, family):
    from peft import PeftModel

    out = tmp_path / f"lora-{family}"
    main(train_args(workspace, out, "--attn_variant", "gqa", "--num_key_value_heads", "2", "--use_peft",
                    "--lora_r", "4", "--max_steps", "3", model=family))  # fmt: skip
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    base = hav.AutoModelForCausalLM.from_pretrained(workspace / family, attn_variant="gqa", num_key_value_heads=2)
    lora = PeftModel.from_pretrained(base, out).eval()
    adapted = [n for n, _ in lora.named_modules() if n.endswith("lora_A")]
    assert len(adapted) == 2 * (4 if family == "llama" else 2)  # 2 layers x q, k, v, o (GPT-2: c_attn, c_proj)
    ids = torch.randint(4, 90, (2, 12))
    with torch.no_grad():
        unmerged = lora(ids).logits
        lora_b = [p for n, p in lora.named_parameters() if "lora_B" in n]
        assert len(lora_b) == len(adapted) and all(p.abs().max() > 0 for p in lora_b), "the adapter did not train"
        merged = lora.merge_and_unload()(ids).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_default_lora_targets_for_plugin_model_types():
    from peft import get_peft_model

    from hf_attn_variants.lora import lora_config, register_peft_defaults

    gpt2 = hav.convert(tiny_model("gpt2"), "mqa")
    config = lora_config(gpt2, r=2)
    assert set(config.target_modules) == {"attn.c_attn", "attn.c_proj"} and config.fan_in_fan_out
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="fan_in_fan_out")  # "... is set to False but the target ... Conv1D"
        get_peft_model(copy.deepcopy(gpt2), config)
    register_peft_defaults()
    from peft import LoraConfig

    # PEFT's own defaults by model_type; with Conv1D layers PEFT wants fan_in_fan_out=True, as for its own gpt2
    peft_model = get_peft_model(gpt2, LoraConfig(r=2, task_type="CAUSAL_LM", fan_in_fan_out=True))
    adapted = sorted(n.removeprefix("base_model.model.") for n, _ in peft_model.named_modules() if n.endswith("lora_A"))
    assert adapted == [f"transformer.h.{i}.attn.{m}.lora_A" for i in range(2) for m in ("c_attn", "c_proj")]


class _Interrupt(transformers.TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_result(workspace, tmp_path, monkeypatch):
    common = ["--attn_variant", "mqa", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2",
              "--seed", "7"]  # fmt: skip
    straight = main(train_args(workspace, tmp_path / "a", *common))

    out = tmp_path / "b"
    real_init = transformers.Trainer.__init__

    def interrupting_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.add_callback(_Interrupt(at_step=4))

    monkeypatch.setattr(transformers.Trainer, "__init__", interrupting_init)
    with pytest.raises(KeyboardInterrupt):
        main(train_args(workspace, out, *common))
    monkeypatch.undo()
    assert (out / "checkpoint-4").is_dir() and not (out / "model.safetensors").exists()
    with pytest.raises(FileExistsError, match="--resume_from_checkpoint last"):
        main(train_args(workspace, out, *common))  # holding checkpoints, a run must be asked to resume
    resumed = main(train_args(workspace, out, *common, "--resume_from_checkpoint", "last"))
    assert resumed["steps"] == 6 and "eval_start_loss" not in resumed  # it did resume, not restart

    def curve(results):
        return [(e["step"], e["loss"]) for e in results["log_history"] if "loss" in e]

    assert [s for s, _ in curve(resumed)] == list(range(1, 7))
    torch.testing.assert_close(torch.tensor(curve(resumed)), torch.tensor(curve(straight)), atol=1e-4, rtol=1e-4)
    assert resumed["eval_end_loss"] == pytest.approx(straight["eval_end_loss"], rel=1e-4)
    a, b = weights(tmp_path / "a"), weights(out)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)


def test_two_processes_under_accelerate_launch(workspace, tmp_path):
    """`accelerate launch` with the shipped CPU config runs two ranks (not one, as --cpu would: accelerate#2741)."""
    out = tmp_path / "ddp"
    config = ROOT / "hf_attn_variants" / "accelerate_configs" / "cpu_2proc.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", "29517", str(ROOT / "scripts" / "finetune.py"),
               *train_args(workspace, out, "--attn_variant", "gqa", "--num_key_value_heads", "2", "--max_steps", "3",
                           "--save_strategy", "steps", "--save_steps", "3")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["world_size"] == 2 and results["ranks"] == [0, 1]
    assert results["distributed"] == {
        "type": "MULTI_CPU"
    }  # DDP over gloo (accelerate enables FSDP on accelerators only)
    assert results["tokens"] == 3 * 4 * 32 * 2
    assert torch.isfinite(torch.tensor(results["train_loss"]))
    assert (out / "checkpoint-3").is_dir()
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_key_value_heads == 2


def test_eval_source_reports_the_unconverted_models_perplexity(workspace, tmp_path):
    """GQA-4 -> GQA-4 is the identity, so the source's and the starting perplexity agree; MQA's does not."""
    same = main(train_args(workspace, tmp_path / "same", "--attn_variant", "gqa", "--num_key_value_heads", "4",
                           "--eval_source", "--max_steps", "1"))  # fmt: skip
    assert same["eval_source_perplexity"] == pytest.approx(same["eval_start_perplexity"], rel=1e-6)
    pooled = main(train_args(workspace, tmp_path / "mqa", "--attn_variant", "mqa", "--eval_source", "--max_steps", "1"))
    assert pooled["eval_source_perplexity"] == pytest.approx(same["eval_source_perplexity"], rel=1e-6)
    assert pooled["eval_start_perplexity"] != pytest.approx(pooled["eval_source_perplexity"], rel=1e-3)
    card = check_hub_ready(tmp_path / "mqa" / "README.md")
    names = [r.metric_name for r in card.eval_results]
    assert names == ["perplexity of the source", "perplexity before uptraining", "perplexity after uptraining"]
    assert [r.metric_value for r in card.eval_results][:2] == [
        round(pooled["eval_source_perplexity"], 4),
        round(pooled["eval_start_perplexity"], 4),
    ]
    assert {r.dataset_type for r in card.eval_results} == {"text"} and card.datasets is None  # local files: no id


def test_training_converts_with_the_default_recipe(workspace, tmp_path):
    """No ``--kv-init``: ``auto``, which with the source's tokenizer and the training text is ``best``."""
    args = [a for a in train_args(workspace, tmp_path / "auto", "--attn_variant", "mqa", "--max_steps", "1")]
    args = args[2:]  # train_args pins mean: drop it, as a user who names no recipe
    results = main(args)
    recipe = results["arguments"]["recipe"]
    assert (recipe["kv_init"], recipe["preset"]) == ("auto", None)  # what was asked
    saved = transformers.AutoConfig.from_pretrained(tmp_path / "auto").attn_variant_recipe
    assert (saved["kv_init"], saved["refine_steps"], saved["preset"]) == ("svd", 40, "auto -> best")
    assert saved["calibration_text"] == "given blocks" and saved["calibration_tokens"] == 16 * 32
    assert "preset auto -> best" in (tmp_path / "auto" / "README.md").read_text()


def test_training_converts_with_calibrated_merging_on_the_training_blocks(workspace, tmp_path):
    """``--kv_init svd`` calibrates on the training blocks and starts from a better model than mean pooling."""
    common = ["--attn_variant", "mqa", "--max_steps", "1", "--calibration_samples", "8", "--learning_rate", "1e-9"]
    svd = main(train_args(workspace, tmp_path / "svd", *common, "--kv_init", "svd", "--sequential"))
    mean = main(train_args(workspace, tmp_path / "mean", *common, "--kv-init", "mean"))
    assert svd["arguments"]["recipe"]["kv_init"] == "svd" and svd["arguments"]["recipe"]["calibration_samples"] == 8
    assert mean["arguments"]["recipe"]["kv_init"] == "mean"
    assert svd["eval_start_perplexity"] != mean["eval_start_perplexity"]
    assert "low-rank merge" in (tmp_path / "svd" / "README.md").read_text()
