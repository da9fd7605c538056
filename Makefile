# Set-up is part of every target: a fresh machine needs only Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.searchtune-installed

.PHONY: setup browser demo test compile benchmarks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, or a dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The search page's browser test drives Debian's Chromium; CJK fonts make its screenshot readable.
BROWSER_PACKAGES := chromium chromium-driver fonts-wqy-microhei
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && fc-list | grep -qi wqy || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		$(BROWSER_PACKAGES) >/dev/null; }

setup: $(STAMP) browser

demo: setup
	$(VENV)/bin/searchtune run --local

test: setup
	$(PY) -m pytest -q

compile: setup
	$(VENV)/bin/searchtune compile --output searchtune_pipeline.yaml

# Not run by CI: each prints a table and writes benchmarks/results/*.json (see README).
benchmarks: setup
	$(PY) benchmarks/mining.py --repeats 3
	$(PY) benchmarks/training_throughput.py
	$(PY) benchmarks/local_pipeline.py
	$(PY) benchmarks/serving.py

clean:
	rm -rf runs local_outputs .pytest_cache
