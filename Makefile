# make main   - set up, then on the default model (SmolLM2-135M-Instruct): KV-cache plan, MQA conversion, real-model check
# make test   - set up, then run the whole test suite (unit + real-model tests)
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup main test lint format

$(BIN)/hf-attn-variants: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/hf-attn-variants

main: setup
	$(BIN)/hf-attn-variants kv-cache smollm2 --variants mha,gqa:3,mqa --seq-len 8192 --batch 8 --dtype bfloat16
	$(BIN)/hf-attn-variants convert smollm2 out/smollm2-mqa --variant mqa --overwrite
	$(BIN)/python scripts/real_model_check.py --json_out out/real_model_check.json

test: setup
	$(BIN)/python -m pytest -ra

lint: setup
	$(BIN)/ruff check hf_attn_variants tests scripts
	$(BIN)/ruff format --check hf_attn_variants tests scripts

format: setup
	$(BIN)/ruff format hf_attn_variants tests scripts
	$(BIN)/ruff check --fix hf_attn_variants tests scripts
