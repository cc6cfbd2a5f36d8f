# Each target creates .venv when missing and reinstalls only when pyproject.toml changes.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS := convert,openvino,bench,serve,test

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m samples.demo

test: $(STAMP)
	$(PY) -m pytest -q

# The torch row needs the source checkpoint; the demo model's lives under artifacts/demo.
bench: $(STAMP)
	$(PY) -m runtimes.bench --ckpt artifacts/demo/googlenet_demo.pth

clean:
	rm -rf artifacts .pytest_cache
