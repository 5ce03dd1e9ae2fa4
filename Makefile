# The one entry point: `make run` serves Lumen locally, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test unit lint bench venv redis chromium tesseract clean

run: venv redis tesseract  ## stage the model's weights once, start Redis (if needed), Ray and the Serve app; Ctrl-C stops them
	@if [ -n "$$LUMEN_MODEL__CHECKPOINT$$LUMEN_MODEL__STAGED_DIR" ]; then \
		$(BIN)/python deploy.py; \
	else \
		$(BIN)/python -m lumen.cli models pull --to "$(CURDIR)/data/models" && \
		LUMEN_MODEL__STAGED_DIR="$(CURDIR)/data/models" $(BIN)/python deploy.py; \
	fi

test: venv redis chromium tesseract  ## the whole suite: unit + integration on real Ray, Redis and HTTP
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy lumen

bench: venv redis
	$(BIN)/python bench/run_all.py

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, alone: pip takes this pinned CPU-capable build from the local wheel store
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

redis:  ## make sure redis-server exists (tests and the run command start their own)
	@bash scripts/ensure-redis.sh

tesseract:  ## Tesseract OCR + English data for PDF pages without a text layer (OS packages)
	@bash scripts/ensure-tesseract.sh

chromium:  ## headless Chromium for the browser test (Debian packages)
	@bash scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) .pytest_cache .cache
