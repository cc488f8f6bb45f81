# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reuse it afterwards (the stamp is renewed
# only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= quant,gguf,runtime,notebooks,dev

.PHONY: demo test venv clean-venv lint lab

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: any other spec pulls GBs of CUDA wheels (see DESIGN.md)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: venv
	$(PY) -m so8t_lib.demo

test: venv
	$(PY) -m pytest -q

lab: venv
	# JupyterLab from .venv: its "python3" kernel is the project's environment
	$(VENV)/bin/jupyter lab notebooks/

lint: venv
	$(VENV)/bin/ruff check so8t_lib tests

clean-venv:
	rm -rf $(VENV)
