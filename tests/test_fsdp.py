"""Variant models under torch's FSDP2 (``fully_shard``) on the CPU: two processes over gloo.

accelerate turns FSDP on only for accelerator devices, so the shipped ``fsdp.yaml`` cannot run through
``Trainer`` without a GPU (docs/training.md). What it does there, ``fully_shard`` on each decoder layer and then
on the root model, runs here directly: sharded training over two processes follows the loss curve of one
unsharded process on the same global batches, the full state dict gathered from the shards equals the
unsharded model's weights (K/V projections of G heads included), and training resumed from a sharded
checkpoint (torch.distributed.checkpoint) continues the same curve.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import hf_attn_variants as hav

from .conftest import tiny_model

STEPS, RESUME_AT, BATCH, LENGTH, LR = 6, 3, 4, 16, 0.5
# SGD with momentum, not Adam: a key bias has a zero gradient (softmax ignores it), and Adam would turn the float
# noise of that gradient, which differs between one process and two, into full-size steps
CASES = [("gpt2", 2), ("llama", 1)]  # a plugin family's GQA variant, a native family's MQA


def variant(family: str, kv: int) -> torch.nn.Module:
    source = tiny_model(family)
    return hav.convert(source, "mqa" if kv == 1 else "gqa", None if kv == 1 else kv, kv_init="mean").train()


def batches(vocab: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, vocab, (BATCH, LENGTH), generator=generator)
    return [text] * STEPS  # one batch learnt again and again, so the loss must fall


def sgd(model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)


def step(model, optimizer, ids) -> torch.Tensor:
    loss = model(ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def unsharded_curve(family, kv) -> tuple[list[float], dict]:
    torch.manual_seed(0)
    model = variant(family, kv)
    optimizer = sgd(model)
    curve = [float(step(model, optimizer, ids)) for ids in batches(model.config.vocab_size)]
    return curve, {k: v.detach().clone() for k, v in model.state_dict().items()}


def shard(model):
    """Each decoder layer, then the root: fsdp.yaml's TRANSFORMER_BASED_WRAP, by the model's _no_split_modules."""
    from torch.distributed.fsdp import fully_shard

    layers = [module for module in model.modules() if type(module).__name__ in model._no_split_modules]
    assert layers, model._no_split_modules
    for layer in layers:
        fully_shard(layer)
    return fully_shard(model)


def worker(rank, world, port, family, kv, out):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_state_dict,
    )

    folder = f"{out}/checkpoint"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:

        def fresh():
            torch.manual_seed(0)
            model = shard(variant(family, kv))
            return model, sgd(model)

        def run(model, optimizer, todo):
            curve = []
            for ids in todo:
                loss = step(model, optimizer, ids[rank::world])  # each process its half of the global batch
                dist.all_reduce(loss)
                curve.append(float(loss) / world)
            return curve

        model, optimizer = fresh()
        todo = batches(model.config.vocab_size)
        curve = run(model, optimizer, todo)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        sharded_kv = {
            name: type(param).__name__
            for name, param in model.named_parameters()
            if "k_proj" in name or "c_attn" in name
        }

        model, optimizer = fresh()  # again, saved mid-way as shards and resumed in new models and optimizers
        first = run(model, optimizer, todo[:RESUME_AT])
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)
        model, optimizer = fresh()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=folder)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        resumed = first + run(model, optimizer, todo[RESUME_AT:])
        if rank == 0:  # what the test reads back: JSON and safetensors, no pickle
            save_file({name: tensor.contiguous() for name, tensor in full.items()}, f"{out}/full.safetensors")
            found = dict(curve=curve, resumed=resumed, sharded_kv=sharded_kv, files=len(os.listdir(folder)))
            Path(out, "found.json").write_text(json.dumps(found))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("family, kv", CASES, ids=[f"{f}-kv{k}" for f, k in CASES])
def test_two_processes_under_fsdp2_train_save_and_resume_like_one(tmp_path, family, kv):
    mp.start_processes(worker, args=(2, free_port(), family, kv, str(tmp_path)), nprocs=2, start_method="spawn")
    found = json.loads((tmp_path / "found.json").read_text())
    curve, resumed, sharded_kv, files = found["curve"], found["resumed"], found["sharded_kv"], found["files"]
    full = load_file(tmp_path / "full.safetensors")
    expected, weights = unsharded_curve(family, kv)

    assert curve == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert curve[-1] < curve[0]  # it trained
    assert resumed == pytest.approx(curve, rel=1e-5, abs=1e-5)
    assert set(full) == set(weights)
    for name, tensor in weights.items():
        torch.testing.assert_close(full[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert set(sharded_kv.values()) == {"DTensor"}  # the K/V projections were sharded, not left whole
    assert files == 3  # .metadata and one shard file per process
