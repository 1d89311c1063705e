# hnsel: `make demo` runs the main job on the embedded Milvus Lite; `make test` runs the tests.
# Both create .venv and install everything they need on first use (`make setup`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HNSEL := $(VENV)/bin/hnsel
DEMO ?= demo
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test demo demo-vectors clean chromium

setup: $(VENV)/.installed chromium

# Headless Chromium and its WebDriver for the report test (tests/test_report.py): Debian's packages, installed
# only when missing (as root, or through sudo).
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium chromium-driver; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

# The whole path on hnsel's own data: render scenes, train a retrieval model on the paired split,
# embed paired (val) and unpaired (train) images into the embedded Milvus Lite, select 1000.
# No pretrained weights can be downloaded here, so the default model is a small open_clip config with
# random backbone weights and trained heads; on a machine with weights use e.g.
#   make demo MODEL=ViT-B-32 PRETRAINED=laion2b_s34b_b79k
MODEL ?= configs/hnsel-small.json
PRETRAINED ?= none
SCENES := $(DEMO)/scenes/dataset_scenes.json
demo: setup
	rm -rf $(DEMO)/hnsel.db
	$(HNSEL) datasets scenes $(DEMO)/scenes --n 2000 --per-category 10 --seed 0 --image-size 64 --val 0.25 --test 0.1
	$(HNSEL) train $(SCENES) --split val --val-split test --model-name $(MODEL) --pretrained $(PRETRAINED) --mode head --loss vsepp --epochs 10 --out $(DEMO)/model
	$(HNSEL) embed $(SCENES) --split val --pool paired --pretrained $(DEMO)/model/checkpoint.pt --milvus-uri $(DEMO)/hnsel.db
	$(HNSEL) embed $(SCENES) --split train --pool unpaired --pretrained $(DEMO)/model/checkpoint.pt --milvus-uri $(DEMO)/hnsel.db
	$(HNSEL) status --milvus-uri $(DEMO)/hnsel.db
	$(HNSEL) select --milvus-uri $(DEMO)/hnsel.db --budget 1000 --out $(DEMO)/selection.csv
	@echo "picks written to $(DEMO)/selection.csv"

# The same selection on a synthetic embedding pool (no images, no model): seconds instead of minutes.
demo-vectors: setup
	$(PY) -m hnsel.synthetic $(DEMO)/vectors 500 10000
	rm -rf $(DEMO)/vectors.db
	$(HNSEL) ingest --milvus-uri $(DEMO)/vectors.db --images $(DEMO)/vectors/images.parquet --texts $(DEMO)/vectors/texts.parquet
	$(HNSEL) select --milvus-uri $(DEMO)/vectors.db --budget 1000 --out $(DEMO)/vectors-selection.csv

clean:
	rm -rf $(DEMO) .pytest_cache
