# The two promises of the README: `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-out
# The package version (pyproject.toml) tags the container image, so that the image, the
# manifests in cluster/kubernetes/ and the package say one version.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE ?= lcstore

.PHONY: setup demo test test-quick test-slow lint docs image clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python pipelines/demo.py --out $(DEMO)

# CI runs this: lint, the format check and every test, the slow ones (crash and kill
# loops, real Dask clusters, crowded fields) and the notebooks included: each guarantee in
# docs/reliability.md is checked on every change.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# While iterating: the fast tests without the notebooks, stopping at the first failure.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -x -m "not slow and not notebook"

# The slow tests: crash/kill loops, worker loss, real clusters, larger surveys (minutes).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not notebook"

docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The Kubernetes recipe's image (cluster/README.md): make image IMAGE=registry.example.org/lcstore
image:
	docker build -f cluster/Dockerfile -t $(IMAGE):$(VERSION) .

clean:
	rm -rf $(DEMO) .pytest_cache
