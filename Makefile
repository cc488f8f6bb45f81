# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reuse it afterwards (the stamp is renewed
# only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORPUS := data/so8t_safety/train.jsonl
EXTRAS ?= quant,gguf,pretrained,data,runtime,service,notebooks,dev
# the llama.cpp binding as pyproject.toml's gguf extra names it (tests/test_docs.py keeps the two equal)
LLAMA_CPP := llama-cpp-python>=0.3.16
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF)
LLAMA_OK := import sys, llama_cpp; sys.exit(b'AMX_INT8 = 1' in llama_cpp.llama_print_system_info())

.PHONY: demo test nbval venv clean-venv lint lab strip ablation card present serve

venv: $(STAMP) $(CORPUS)

# the training split (9.5 MB) is not committed: it is built from the seeds in seconds and must match the
# committed digest (val and test are committed; the rebuild writes them byte for byte as they are)
$(CORPUS): $(STAMP) $(wildcard data/seeds/*.yaml) data/phrases.yaml $(wildcard so8t_lib/data/corpus/*.py)
	$(VENV)/bin/so8t corpus build
	cd data/so8t_safety && sha256sum -c train.jsonl.sha256

$(STAMP): pyproject.toml Makefile
	# a venv cut off while it was being made (no pip in it) is made again rather than failing here
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: any other spec pulls GBs of CUDA wheels (see DESIGN.md)
	$(PY) -m pip install -q torch==2.13.0
	# on x86-64, llama.cpp built for AVX2 rather than for this exact CPU: a native build on a CPU with AMX compiles
	# ggml's AMX kernels in, and they crashed on Q8_0 files (serve/gguf_backend.py refuses such a build). Built
	# when missing or when the installed one has them; --no-cache-dir so that a native wheel in pip's cache is not reused
	if echo "$(EXTRAS)" | grep -qw gguf && ! $(PY) -c "$(LLAMA_OK)" 2>/dev/null; then \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --force-reinstall --no-deps --no-cache-dir "$(LLAMA_CPP)"; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# the notebooks' kernel "so8t", registered inside .venv: JupyterLab, papermill and sweeps from .venv find it
	if $(PY) -c "import ipykernel" 2>/dev/null; then \
	  $(PY) -m ipykernel install --sys-prefix --name so8t --display-name "Python (so8t workbench)"; fi
	# in a git clone, notebook outputs are stripped on commit (cell tags are kept)
	if [ -d .git ] && [ -x $(VENV)/bin/nbstripout ]; then $(VENV)/bin/nbstripout --install; fi
	touch $(STAMP)

demo: venv
	$(VENV)/bin/so8t demo

test: venv
	# the 30 slowest tests are listed at the end: the suite must stay well inside CI's 30-minute budget
	$(PY) -m pytest -q --durations=30
	$(MAKE) --no-print-directory nbval

# every notebook, run by nbval with the tiny parameters of tests/notebook_params.yaml
nbval: venv
	$(PY) tests/prepare_notebooks.py build/nbval
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env build/nbval

# the gate ablation end to end: 40 training runs (resumable), the statistics notebook, the model card
ablation: venv
	$(VENV)/bin/so8t sweep experiments/gate_ablation.yaml --workers 2
	$(VENV)/bin/papermill --no-progress-bar notebooks/02_gate_ablation.ipynb experiments/runs/gate_ablation/02.ipynb
	$(MAKE) --no-print-directory card

# MODEL_CARD.md and figures/ from the committed result files
card: venv
	$(VENV)/bin/so8t card

# the gate as a service on 127.0.0.1:8080; set SO8T_CLIENT_KEYS / SO8T_REVIEWER_KEYS first (docs/serving.md)
serve: venv
	$(VENV)/bin/so8t serve --config configs/basic.yaml

# the stakeholder demo as a web page: Voila serves notebook 05 on http://127.0.0.1:8866/ (so8t present --help)
present: venv
	$(VENV)/bin/so8t present

lab: venv
	# JupyterLab from .venv; the notebooks open on the "so8t" kernel, which is this environment
	$(VENV)/bin/jupyter lab notebooks/

# strip outputs from the committed notebooks (make venv installs the same as a git filter)
strip: venv
	$(VENV)/bin/nbstripout notebooks/*.ipynb

lint: venv
	$(VENV)/bin/ruff check .   # the package, tests, benchmarks and the notebooks

clean-venv:
	rm -rf $(VENV)
