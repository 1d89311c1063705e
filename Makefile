# hnsel: `make demo` runs the main job on the embedded Milvus Lite; `make test` runs the tests.
# Both create .venv and install everything they need on first use (`make setup`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HNSEL := $(VENV)/bin/hnsel
DEMO ?= demo
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m hnsel.synthetic $(DEMO)/vectors 500 10000
	rm -rf $(DEMO)/hnsel.db
	$(HNSEL) ingest --milvus-uri $(DEMO)/hnsel.db --images $(DEMO)/vectors/images.parquet --texts $(DEMO)/vectors/texts.parquet
	$(HNSEL) status --milvus-uri $(DEMO)/hnsel.db
	$(HNSEL) select --milvus-uri $(DEMO)/hnsel.db --budget 1000 --out $(DEMO)/selection.csv

clean:
	rm -rf $(DEMO) .pytest_cache
