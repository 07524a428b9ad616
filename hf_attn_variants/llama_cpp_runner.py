"""Run llama.cpp's converter on several checkpoints in one process (torch and the converter import once).

Run by path, not as a module of this package, in a process whose ``PYTHONPATH`` puts the converter's folder and
its ``gguf-py`` first (``llama_cpp_support._run_converter``): ``python llama_cpp_runner.py SCRIPT JOBS RESULTS``,
where ``JOBS`` is a JSON file of the script's argument lists. Writes ``RESULTS``, a JSON list: per job, ``null``
when it wrote its file, else the converter's last error. Standard library only; nothing of the package is imported.

The converter reads a few configs by the names transformers 4 wrote; :func:`with_older_names` adds those names,
from what transformers 5 writes, where a config lacks them (nothing it has is changed).
"""

import json
import logging
import runpy
import sys


class _LastError(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.message = None

    def emit(self, record):
        self.message = record.getMessage()


def with_older_names(config: dict) -> dict:
    """``config`` (a checkpoint's, as the converter loads it) with the transformers 4 names the converter reads."""
    older = {}
    if config.get("model_type") == "cohere2":
        older["rotary_pct"] = 1.0  # transformers' Cohere2 rotates whole heads (it reads no partial rotary)
    return {**older, **config}


def main(script: str, jobs: list[list[str]]) -> list[str | None]:
    converter = runpy.run_path(script, run_name="llama_cpp_converter")  # defines main() without running it
    model_base = converter["ModelBase"]  # the class the script converts with
    load_hparams = model_base.load_hparams
    model_base.load_hparams = staticmethod(lambda *args, **kwargs: with_older_names(load_hparams(*args, **kwargs)))
    errors = []
    for args in jobs:
        last = _LastError()
        logging.getLogger().addHandler(last)
        sys.argv = [script, *args]
        try:
            converter["main"]()
            errors.append(None)
        except SystemExit as stop:
            errors.append(last.message or f"exit {stop.code}")
        except Exception as err:  # noqa: BLE001 - the converter's own refusals (NotImplementedError, ValueError ...)
            errors.append(f"{type(err).__name__}: {err}")
        finally:
            logging.getLogger().removeHandler(last)
    return errors


if __name__ == "__main__":
    with open(sys.argv[2]) as jobs, open(sys.argv[3], "w") as results:
        json.dump(main(sys.argv[1], json.load(jobs)), results)
