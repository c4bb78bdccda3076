# Everything a fresh machine needs, from the README: `make test` and `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build lies on local disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# The test lock: exact versions of everything the test extra installs. Tests run against it, never the day's
# releases; `make lock` rewrites it on purpose, `make test-latest` shows what the newest releases would change.
LOCK   := requirements/test.txt
# The suites that compare qkv with a peer library (transformers, tokenizers, sentencepiece, rwkv, num2words)
PARITY_TESTS = $(shell grep -rlE 'importorskip.{2}(transformers|tokenizers|sentencepiece|rwkv|num2words)' tests | sort)
# e.g. make demo DEMO_ARGS="--src my.en --tgt my.es"
DEMO_ARGS ?=
# e.g. make explore EXPLORE_ARGS="--port 8001"
EXPLORE_ARGS ?=

.PHONY: test test-latest lock demo explore install clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip
	$(PY) -m pip install -q -c $(LOCK) "$(TORCH)"
	$(PY) -m pip install -q -c $(LOCK) -e ".[test]" "$(TORCH)"
	$(PY) requirements/lock.py check $(LOCK)
	@$(PY) -c "import torch; print('torch', torch.__version__)"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 tests

# Not in CI: the newest releases of the test extra's peers (torch stays pinned) in a venv of their own, then the
# parity suites, so a peer's change shows here before users see it. What differs from the lock is printed first.
test-latest:
	$(PYTHON) -m venv $(VENV)-latest
	$(VENV)-latest/bin/python -m pip install -q --upgrade pip
	$(VENV)-latest/bin/python -m pip install -q "$(TORCH)"
	$(VENV)-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]" "$(TORCH)"
	$(VENV)-latest/bin/python requirements/lock.py diff $(LOCK)
	$(VENV)-latest/bin/python -m pytest -q -n 2 $(PARITY_TESTS)

# Rewrite the lock from a clean venv with the newest releases (torch pinned); review the diff, run make test, commit.
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install -q --upgrade pip
	$(VENV)-lock/bin/python -m pip install -q "$(TORCH)"
	$(VENV)-lock/bin/python -m pip install -q -e ".[test,docs]" "$(TORCH)"
	$(VENV)-lock/bin/python requirements/lock.py write $(LOCK)
	rm -rf $(VENV)-lock

demo: $(VENV)/.installed
	$(VENV)/bin/qkv demo --out runs/demo $(DEMO_ARGS)

# after make demo: a page on 127.0.0.1 to translate any sentence and watch attention and beam search
explore: $(VENV)/.installed
	$(VENV)/bin/qkv explore --checkpoint runs/demo $(EXPLORE_ARGS)

# the documentation site into build/site, strict: a broken link, a public name missing from the API reference or a
# course snippet that stops running fails it (docs/hooks/)
.PHONY: docs
docs: $(VENV)/.installed
	$(PY) -m pip install -q -c $(LOCK) -e ".[docs]" "$(TORCH)"
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(VENV)-latest $(VENV)-lock runs .pytest_cache
