# Set-up is part of every target: a fresh machine needs only Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.searchtune-installed

# Tools with pins that clash with the project's live in venvs of their own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.searchtune-installed
SGLANG_VENV := .venv-sglang
SGLANG_STAMP := $(SGLANG_VENV)/.searchtune-installed

# make images: where images go (the cluster profile's defaults name these).
REGISTRY ?= ghcr.io/searchtune
IMAGE_VERSION ?= 0.1.0
# In build order: the training image builds on the steps image (searchtune).
IMAGES := searchtune:searchtune searchtune-launcher:launcher searchtune-train:train searchtune-serving:serving

.PHONY: setup browser demo test compile benchmarks clean images image-requirements

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, or a dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# checkov (chart, manifests and Dockerfile scans): its boto3 pin clashes with ours.
$(CHECKOV_STAMP): tests/requirements/checkov.txt
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r tests/requirements/checkov.txt
	touch $@

# SGLang's own argument parser checks the chart's command line. SGLang needs a GPU to run
# and pins transformers 5, so: the CPU torch it pins, then sglang and the few light packages
# its server_args import needs, all without their dependencies.
# Beside it, in a folder of its own, what the serving image adds to SGLang's Python for
# `searchtune pull-model` (images/serving/Dockerfile does the same).
$(SGLANG_STAMP): tests/requirements/sglang-args.txt images/requirements/serving.txt
	rm -rf $(SGLANG_VENV)
	$(PYTHON) -m venv $(SGLANG_VENV)
	$(SGLANG_VENV)/bin/pip install --quiet torch==2.13.0
	$(SGLANG_VENV)/bin/pip install --quiet --no-deps -r tests/requirements/sglang-args.txt
	$(SGLANG_VENV)/bin/pip install --quiet --no-deps --target $(SGLANG_VENV)/searchtune-site \
		-r images/requirements/serving.txt
	touch $@

# The search page's browser test drives Debian's Chromium; CJK fonts make its screenshot readable.
BROWSER_PACKAGES := chromium chromium-driver fonts-wqy-microhei
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && fc-list | grep -qi wqy || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		$(BROWSER_PACKAGES) >/dev/null; }

setup: $(STAMP) $(CHECKOV_STAMP) $(SGLANG_STAMP) browser

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
	$(PY) benchmarks/s3_io.py
	$(PY) benchmarks/serving.py

# Re-pins images/requirements/*.txt to what the test venv has (after a dependency change).
image-requirements: setup
	$(PY) images/requirements/pin.py

# Builds and pushes every image in images/ (needs a Docker engine: this machine has none).
images:
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine answers here (docker info failed)"; exit 2; }
	@set -e; for pair in $(IMAGES); do \
		name=$${pair%%:*}; folder=$${pair##*:}; \
		docker build -f images/$$folder/Dockerfile --build-arg VERSION=$(IMAGE_VERSION) \
			--build-arg STEPS_IMAGE=$(REGISTRY)/searchtune:$(IMAGE_VERSION) -t $(REGISTRY)/$$name:$(IMAGE_VERSION) . ; \
		docker push $(REGISTRY)/$$name:$(IMAGE_VERSION) ; \
	done

clean:
	rm -rf runs local_outputs .pytest_cache
