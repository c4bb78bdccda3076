# Everything a fresh machine needs, from the README: `make test` and `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build lies on local disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# e.g. make demo DEMO_ARGS="--src my.en --tgt my.es"
DEMO_ARGS ?=
# e.g. make explore EXPLORE_ARGS="--port 8001"
EXPLORE_ARGS ?=

.PHONY: test demo explore install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]" "$(TORCH)"
	@$(PY) -c "import torch; print('torch', torch.__version__)"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 tests

demo: $(VENV)/.installed
	$(VENV)/bin/qkv demo --out runs/demo $(DEMO_ARGS)

# after make demo: a page on 127.0.0.1 to translate any sentence and watch attention and beam search
explore: $(VENV)/.installed
	$(VENV)/bin/qkv explore --checkpoint runs/demo $(EXPLORE_ARGS)

# the documentation site into build/site, strict: a broken link, a public name missing from the API reference or a
# course snippet that stops running fails it (docs/hooks/)
.PHONY: docs
docs: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]" "$(TORCH)"
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache
