"""Run lm-evaluation-harness tasks on in-memory models (variants included), offline with local task YAMLs."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")


def _known(manager, task: str) -> bool:
    return task in manager.task_index or (task.endswith((".yaml", ".yml")) and Path(task).is_file())


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    include_path: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    num_fewshot: int | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate ``model`` on lm-eval ``tasks`` (names or YAML paths); returns ``{task: {metric: value}}``.

    Tasks are looked up in ``include_path``, this package's ``lm_eval_tasks`` folder, then lm-eval's built-ins.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError("run_lm_eval needs lm-eval: pip install 'hf_attn_variants[lm-eval]'") from err
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    paths = [str(TASKS_DIR)] + ([os.fspath(include_path)] if include_path is not None else [])
    # indexing lm-eval's ~15k built-in task YAMLs takes ~10 s: only do it when a task is not a local one
    manager = local = TaskManager(include_path=paths, include_defaults=False)
    if not all(_known(local, task) for task in tasks):
        manager = TaskManager(include_path=paths)
    unknown = [task for task in tasks if not _known(manager, task)]
    if unknown:
        close = sorted({m for task in unknown for m in difflib.get_close_matches(task, manager.all_tasks, n=5)})
        raise ValueError(
            f"unknown lm-eval task(s) {unknown}; close matches: {close or 'none'}; local tasks: {local.all_tasks}; "
            f"{len(manager.all_tasks)} names in all (lm_eval.tasks.TaskManager().all_tasks)"
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False
    )
    results = {}
    for task, metrics in out["results"].items():
        # lm-eval keys are "metric,filter": drop the default ",none" filter, keep numbers only
        results[task] = {
            key.removesuffix(",none"): float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
    return results
