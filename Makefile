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
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,bench,openvino,sweep]'
	touch $(STAMP)

DIGITS := benchmarks/work/digits
DIGITS_REF := benchmarks/reference/textbook_densenet-digits.safetensors
DIGITS_REF2 := benchmarks/reference/textbook_resnext-digits.safetensors

demo: setup
	$(BIN)/edgekit export densenet --opset 17
	$(BIN)/edgekit quantize exports/densenet121.onnx
	$(BIN)/edgekit verify exports/densenet121.int8.onnx
	@echo "--- the same steps on a model trained on real labelled data (scikit-learn's digits) ---"
	$(BIN)/python -m benchmarks.digits --data-only --data $(DIGITS)
	$(BIN)/edgekit export textbook_densenet --weights $(DIGITS_REF) --input-size 32 --resize 32 --crop 32
	$(BIN)/edgekit quantize exports/textbook_densenet.onnx --calibration $(DIGITS)/calib --dataset $(DIGITS)/calib --max-drop 0.5
	$(BIN)/edgekit verify exports/textbook_densenet.int8.onnx --images $(DIGITS)/calib --dataset $(DIGITS)/test --random-inputs 0
	@echo "--- a sweep: both digits references x two recipes x two calibration methods, judged on the test split (local Ray) ---"
	$(BIN)/edgekit sweep --models textbook_densenet,textbook_resnext --input-size 32 --resize 32 \
		--weights textbook_densenet=$(DIGITS_REF) --weights textbook_resnext=$(DIGITS_REF2) \
		--targets x86-avx2,arm64 --methods minmax,percentile --calibration $(DIGITS)/calib --dataset $(DIGITS)/test \
		--max-drop 0.5 --workers 2 -o exports/sweep

# The AVX2 lane (tests that need the int8 arithmetic of an x86 CPU without VNNI) runs natively on such a CPU and
# under QEMU's user-mode emulator elsewhere: scripts/emulators.sh installs it where it can, else says what to install.
# Both run on PYTEST_WORKERS processes (pytest-xdist), one test file per worker at a time (--dist loadfile: a file's
# fixtures are built once): a serial run leaves one of two cores idle half the time (torch export, QEMU, Ray start).
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test: setup
	bash scripts/emulators.sh
	$(PYTEST)

# The fast tier: the unit tests (tests/unit/: fakes, no torch or ORT session) and one end-to-end path per command
# (tests/conftest.py SMOKE), without the emulated lanes: under a third of `make test`. `make test` stays what CI runs.
test-fast: setup
	$(PYTEST) -m "unit or smoke"

bench: setup
	$(BIN)/python benchmarks/run_suite.py

clean:
	rm -rf exports/*.onnx exports/*.data exports/sweep .pytest_cache
