# One target sets up .venv and runs the demo on the bundled defaults; one sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# pip (not uv/poetry): torch==2.14.1 and torchvision==0.29.1 install from this machine's disk.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,bench]'
	touch $(STAMP)

demo: setup
	$(BIN)/edgekit export densenet --opset 17
	$(BIN)/edgekit quantize exports/densenet121.onnx
	$(BIN)/edgekit verify exports/densenet121.int8.onnx

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/run_suite.py

clean:
	rm -rf exports/*.onnx exports/*.data .pytest_cache
