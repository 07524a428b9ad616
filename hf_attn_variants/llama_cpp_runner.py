"""Run llama.cpp's converter on several checkpoints in one process (torch and the converter import once).

Run by path, not as a module of this package, in a process whose ``PYTHONPATH`` puts the converter's folder and
its ``gguf-py`` first (``llama_cpp_support._run_converter``): ``python llama_cpp_runner.py SCRIPT JOBS RESULTS``,
where ``JOBS`` is a JSON file of the script's argument lists. Writes ``RESULTS``, a JSON list: per job, ``null``
when it wrote its file, else the converter's last error. Standard library only; nothing of the package is imported.
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


def main(script: str, jobs: list[list[str]]) -> list[str | None]:
    converter = runpy.run_path(script, run_name="llama_cpp_converter")  # defines main() without running it
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
