# Each target creates .venv when missing and installs again only when pyproject.toml changes.
# `make demo` installs what the demo needs (the convert extra: torch CPU, onnx, onnxsim);
# `make test` adds OpenVINO, the serving stack (kserve, Ray, tritonclient) and pytest to the same venv.
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip install --quiet --disable-pip-version-check
DEMO_STAMP  := $(VENV)/.installed-demo
TEST_STAMP  := $(VENV)/.installed-test

.PHONY: demo test test-aarch64 test-pythons bench clean

$(PY):
	@echo "== creating $(VENV) (Python 3.11+)"
	python3 -m venv $(VENV)

$(DEMO_STAMP): pyproject.toml | $(PY)
	@echo "== installing the demo's packages into $(VENV): torch (CPU), onnx, onnxruntime, OpenCV (about 1.6 GB;"
	@echo "   under a minute from a warm pip cache, several minutes when pip has to download them)"
	$(PIP) -e ".[convert]"
	@touch $@

$(TEST_STAMP): $(DEMO_STAMP)
	@echo "== installing the test extras into $(VENV): OpenVINO, kserve, Ray, tritonclient, pytest (about 1 GB more;"
	@echo "   a minute or two from a warm pip cache)"
	$(PIP) -e ".[convert,openvino,bench,serve,batch,test]"
	@touch $@

demo: $(DEMO_STAMP)
	$(PY) -m samples.demo

test: $(TEST_STAMP)
	@echo "== running the test suite: two workers, then the latency-bound tests alone (under 10 minutes on 2 cores)"
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not solo"
	$(PY) -m pytest -q -m solo

# The demo bundle on an arm64 Debian userland under qemu-user (tests/aarch64): its requirements as
# aarch64 wheels, verified and run on emulated Cortex-A72 and A76 cores. The userland and wheels are
# kept in artifacts/aarch64; the bundle is made again when the toolkit's code changes.
BUNDLE := artifacts/bundle/bundle.json
$(BUNDLE): $(TEST_STAMP) $(wildcard runtimes/*.py runtimes/adapters/*.py deploy/*.py converters/*.py samples/*.py)
	$(PY) -m samples.demo

test-aarch64: $(BUNDLE)
	@echo "== the demo bundle on an emulated arm64 board (a few minutes; the first run also builds the userland)"
	$(PY) tests/aarch64/check.py --bundle artifacts/bundle --cache artifacts/aarch64

# The demo bundle on each device Python (deploy/pins.py: CPython 3.10-3.13) found here (pyenv, or python3.X on
# PATH; a missing one is a "skipped:" line): a fresh venv per Python with the bundle's requirements.txt,
# verified and run with the bundle's own wheel; a JetPack-6-like venv (3.10, numpy 1.26, OpenCV 4.11, CPU
# provider); and the requirements resolved, without installing, for aarch64 and the cuda/tensorrt targets.
# The venvs are made in artifacts/pythons and removed once checked.
test-pythons: $(BUNDLE)
	@echo "== the demo bundle on Python 3.10-3.13 (a few minutes from a warm pip cache; about 0.6 GB of disk per venv, one at a time)"
	$(PY) tests/pythons/check.py --bundle artifacts/bundle --work artifacts/pythons

# The torch row finds the demo checkpoint beside the demo's model.
bench: $(TEST_STAMP)
	$(PY) -m runtimes.bench

clean:
	rm -rf artifacts .pytest_cache
