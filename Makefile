# make main   - set up, then the trade-off table (latency, memory, quality of MHA/GQA/MQA) on SmolLM2-135M-Instruct:
#               the GQA paper's mean pooling and the default recipe at zero steps, then 30 steps of distillation
# make test   - set up, then run the whole test suite (unit + real-model tests), one worker per core (pytest-xdist)
# make test-oldest - the second job: the fast tests on the oldest supported transformers (5.19), in .venv-oldest
# make test-llama-cpp - a third job: installs llama-cpp-python (compiles llama.cpp) and runs tests/test_llama_cpp.py
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# empty: the newest transformers setup.cfg allows; set (test-oldest) to install that version instead
TRANSFORMERS ?=
OLDEST_TRANSFORMERS = 5.19.0

.PHONY: setup main test test-oldest test-llama-cpp lint format bench quality

$(BIN)/hf-attn-variants: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]" $(if $(TRANSFORMERS),transformers==$(TRANSFORMERS))
	touch $@

setup: $(BIN)/hf-attn-variants

main: setup
	$(BIN)/hf-attn-variants tradeoff smollm2 --out out/tradeoff --overwrite --uptrain-steps 30 --distill

test: setup
	$(BIN)/python -m pytest -ra -n auto --dist loadfile --no-loadscope-reorder

# not in .ci/run (it would double CI's time): run it by hand or as a second CI job; see docs/serving.md
test-oldest:
	$(MAKE) setup VENV=.venv-oldest TRANSFORMERS=$(OLDEST_TRANSFORMERS)
	.venv-oldest/bin/python -c "import transformers; assert transformers.__version__ == '$(OLDEST_TRANSFORMERS)', transformers.__version__"
	.venv-oldest/bin/python -m pytest -m "not slow" -ra -n auto --dist loadfile --no-loadscope-reorder

# not in .ci/run: pip compiles llama-cpp-python's llama.cpp from source (tens of minutes on 2 cores; pip keeps the
# wheel it builds, so a second run installs in seconds); without it CI runs the converter's tests and skips the runtime's
test-llama-cpp: setup
	$(BIN)/python -m pip install -q -e ".[dev,llama-cpp]"
	$(BIN)/python -m pytest -ra tests/test_llama_cpp.py

bench: setup
	$(BIN)/python bench/decode.py --json_out out/bench/decode.json
	$(BIN)/python bench/streaming_conversion.py --json_out out/bench/streaming_conversion.json
	$(BIN)/python bench/plugin_overhead.py --json_out out/bench/plugin_overhead.json
	$(BIN)/python bench/generate.py --json_out out/bench/generate.json

quality: setup
	$(BIN)/python bench/conversion_quality.py --model smollm2 --methods mean "mean + fit" aligned "aligned + fit" svd "svd + sequential" --calibration_samples 32 --uptrain_steps 30 --json_out out/bench/quality_smollm2.json

lint: setup
	$(BIN)/ruff check hf_attn_variants hf_attn_variants_cli.py tests scripts bench
	$(BIN)/ruff format --check hf_attn_variants hf_attn_variants_cli.py tests scripts bench

format: setup
	$(BIN)/ruff format hf_attn_variants hf_attn_variants_cli.py tests scripts bench
	$(BIN)/ruff check --fix hf_attn_variants hf_attn_variants_cli.py tests scripts bench
