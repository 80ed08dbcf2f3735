# Two commands: `make test` and `make demo`. Both build .venv from nothing with only Python.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo bench clean soak fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

soak: $(STAMP)
	$(BIN)/pytest -q -m slow

demo: $(STAMP)
	$(BIN)/python -m clients.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/crypto.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/log.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/purge.py
	$(BIN)/python bench/gil.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/store.py --quick

fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --seconds 180

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
