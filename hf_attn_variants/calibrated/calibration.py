"""Calibration: what the attention layers of a model see on some text, for merging K/V heads well.

For each attention module, the second moment ``E[x x^T]`` of its input ``x = [hidden_states; 1]`` over the
calibration tokens: from it the head math of ``hf_attn_variants.merging`` computes every expectation of keys,
queries and values it needs. The token blocks are kept too, so a conversion can recompute the moments layer by layer
on the partly converted model (``sequential=True``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import DEFAULT_DATASET, load_texts, pack
from .generation import can_write, generated_blocks

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    """Second moments of every attention module's input, and the token blocks they came from.

    Attributes:
        moments: attention module name -> ``(hidden + 1, hidden + 1)`` float64 ``E[x x^T]``, ``x = [h; 1]``.
        input_ids: ``(samples, seq_len)`` the calibration blocks.
        source: where the text came from (for model cards and results).
        generated_ids: ``(samples, seq_len)`` blocks the model wrote itself (``generated_blocks``), for
            distillation only (the moments and refinement read ``input_ids``); ``None`` if none.
    """

    moments: dict[str, torch.Tensor]
    input_ids: torch.Tensor
    source: str = ""
    info: dict = field(default_factory=dict)
    generated_ids: torch.Tensor | None = None

    def distillation_blocks(self) -> torch.Tensor:
        """The blocks distillation reads: the calibration blocks, then those the model wrote itself."""
        if self.generated_ids is None:
            return self.input_ids
        return torch.cat([self.input_ids, self.generated_ids])

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (moments, blocks, and the source in its metadata)."""
        tensors = {f"moments.{name}": m.contiguous() for name, m in self.moments.items()}
        tensors["input_ids"] = self.input_ids.contiguous()
        if self.generated_ids is not None:
            tensors["generated_ids"] = self.generated_ids.contiguous()
        save_file(tensors, str(path), metadata={"source": self.source, "info": json.dumps(self.info)})

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`save` (safetensors: no pickle)."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
        if "input_ids" not in tensors:
            raise ValueError(f"{path} is not a calibration file: it has no input_ids tensor")
        moments = {k.removeprefix("moments."): v for k, v in tensors.items() if k.startswith("moments.")}
        info = json.loads(metadata.get("info", "{}"))
        return cls(moments, tensors["input_ids"], metadata.get("source", ""), info, tensors.get("generated_ids"))


def calibration_blocks(
    tokenizer=None,
    num_samples: int = 128,
    seq_len: int = 256,
    seed: int = 0,
    dataset: str | None = None,
    dataset_config: str | None = None,
    data_files=None,
    exclude_last: float = 0.1,
    blocks=None,
) -> torch.Tensor:
    """``(num_samples, seq_len)`` token blocks drawn by ``seed`` from the text of the project's dataset API.

    ``blocks`` (rows of ``input_ids``, such as training's blocks) are drawn from directly; otherwise the text
    of ``dataset``/``data_files`` is packed into ``seq_len`` blocks and the last ``exclude_last`` of them
    (where training and the trade-off table hold out their evaluation text) are left out.

    Raises:
        ValueError: ``num_samples`` or ``seq_len`` below 1, or fewer blocks than asked for.
    """
    if num_samples < 1 or seq_len < 2:
        raise ValueError(f"num_samples={num_samples} must be at least 1 and seq_len={seq_len} at least 2")
    if blocks is None:
        if tokenizer is None:
            raise ValueError("give a tokenizer (to pack the calibration text) or token blocks")
        texts = load_texts(dataset, dataset_config, data_files=data_files)
        blocks = pack(texts, tokenizer, seq_len, option="--calibration-seq-len")
        blocks = blocks.select(range(len(blocks) - round(len(blocks) * exclude_last)))
    if len(blocks) < num_samples:
        raise ValueError(
            f"the calibration text makes {len(blocks)} blocks, fewer than num_samples={num_samples}; "
            "ask for fewer or shorter samples, or give more text"
        )
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:num_samples].sort().values
    rows = blocks.select(order.tolist())["input_ids"] if hasattr(blocks, "select") else [blocks[i] for i in order]
    return torch.as_tensor(rows, dtype=torch.long)


@contextlib.contextmanager
def eval_mode(*models):
    """``models`` in eval mode (no dropout) inside the block; each gets its own training flag back after."""
    flags = [m.training for m in models]
    try:
        yield tuple(m.eval() for m in models)
    finally:
        for model, flag in zip(models, flags, strict=True):
            model.train(flag)


class _Stop(Exception):
    """Raised by a hook once the last module of interest has been seen (no need to run the rest)."""


@torch.no_grad()
def module_calls(model, module: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> list:
    """``(args, kwargs)`` of ``module``'s call for each batch of ``input_ids`` that ``model`` reads.

    Each forward pass stops at ``module``: the layers after it are not run. The calls can be replayed on
    another module of the same kind (the source's attention, for instance).
    """
    calls = []

    def hook(mod, args, kwargs):
        calls.append((args, kwargs))
        raise _Stop

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(input_ids), batch_size):
            try:
                model(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return calls


@torch.no_grad()
def replay_inputs(module: torch.nn.Module, inner: torch.nn.Module, calls: list):
    """Yield ``inner``'s first input while ``module`` replays each of ``calls`` (stopping at ``inner``)."""
    seen = []

    def hook(mod, args, kwargs):
        seen.append(kwargs.get("hidden_states", args[0] if args else kwargs.get("input")))
        raise _Stop

    handle = inner.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for args, kwargs in calls:
            try:
                module(*args, **kwargs)
            except _Stop:
                pass
            yield seen.pop()
    finally:
        handle.remove()


def call_hidden_states(call) -> torch.Tensor:
    args, kwargs = call
    return kwargs.get("hidden_states", args[0] if args else None)


def with_ones(hidden: torch.Tensor) -> torch.Tensor:
    """``(tokens, hidden + 1)`` float64 rows ``[h; 1]`` of ``hidden`` ``(..., hidden)``."""
    x = hidden.reshape(-1, hidden.shape[-1]).to(torch.float64).cpu()
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


@torch.no_grad()
def collect_moments(
    model, modules: list[tuple[str, torch.nn.Module]], input_ids: torch.Tensor, batch_size: int = 8, progress=True
) -> dict[str, torch.Tensor]:
    """``E[x x^T]`` of each of ``modules``' input ``x = [hidden_states; 1]`` while ``model`` reads ``input_ids``.

    One forward pass per batch serves every module; it stops after the last of ``modules``.
    """
    sums = {name: 0 for name, _ in modules}
    last = modules[-1][0]

    def hook_for(name):
        def hook(module, args, kwargs):
            x = with_ones(kwargs.get("hidden_states", args[0] if args else None))
            sums[name] = sums[name] + x.T @ x
            if name == last:
                raise _Stop

        return hook

    handles = [m.register_forward_pre_hook(hook_for(name), with_kwargs=True) for name, m in modules]
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, len(input_ids), batch_size), desc="calibration", disable=not progress):
            try:
                model(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / input_ids.numel() for name, total in sums.items()}


def calibrate(model, tokenizer=None, *, batch_size: int = 8, generated: int = 0, **draw) -> Calibration:
    """Calibrate ``model`` (any supported family and variant) on blocks of text, ``batch_size`` at a time.

    ``draw`` are :func:`calibration_blocks`' options: ``num_samples`` (128), ``seq_len`` (256), ``seed`` (0),
    ``dataset``/``dataset_config``/``data_files`` (by default Python's help text, less the last
    ``exclude_last`` = 10% that training holds out) or ``blocks`` (token blocks to draw from directly).
    ``generated``: that many blocks of ``seq_len`` tokens the model writes itself (from the start of a user turn
    where the tokenizer has a chat template; :func:`generated_blocks`), kept for distillation.
    """
    from ..families import family_for

    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if draw.get("blocks") is None and limit and draw.get("seq_len", 256) > limit:
        logger.warning("calibration blocks of %d tokens: the model reads at most %d positions", limit, limit)
        draw["seq_len"] = limit
    input_ids = calibration_blocks(tokenizer, **draw)
    modules = family_for(model.config).attention_modules(model)
    with eval_mode(model):  # no dropout in the statistics
        moments = collect_moments(model, modules, input_ids, batch_size)
    files = draw.get("data_files")
    if draw.get("blocks") is not None:
        source = "given blocks"
    elif files:
        source = ", ".join(map(str, [files] if isinstance(files, (str, Path)) else files))
    else:
        source = draw.get("dataset") or DEFAULT_DATASET
    info = {"num_samples": len(input_ids), "seq_len": int(input_ids.shape[1]), "seed": draw.get("seed", 0)}
    generated_ids = None
    if generated and (tokenizer is None or not can_write(tokenizer)):
        logger.warning("the model cannot write text itself here (no tokenizer, or one with no chat template, BOS or "
                       "EOS token): distillation reads the %d calibration blocks only", len(input_ids))  # fmt: skip
    elif generated:
        with eval_mode(model):
            generated_ids = generated_blocks(model, tokenizer, generated, int(input_ids.shape[1]), draw.get("seed", 0))
        info["generated"] = generated
    return Calibration(moments, input_ids, source, info, generated_ids)


def calibration_for(recipe, model, tokenizer=None, blocks=None):
    """A function that calibrates ``model`` as ``recipe`` (a ``KVRecipe``) says, for ``convert(calibration=...)``.

    The blocks are drawn from ``blocks`` (training's own blocks) unless the recipe names calibration files.
    ``convert`` calls it only if heads are merged, with the recipe it resolved (its sample count counts).
    """

    def build(resolved=None):  # convert passes the recipe it resolved (``auto`` -> ``best`` ...)
        resolved = resolved or recipe
        use_blocks = None if resolved.calibration_data_files else blocks
        return calibrate(model, tokenizer, **resolved.calibrate_kwargs(), blocks=use_blocks)

    return build
