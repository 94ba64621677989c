# `make demo` and `make test` set up everything on a fresh machine (see README.md).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-all benchmark clean

$(STAMP): pyproject.toml constraints.txt NoduleSAM/Resources/slicer-constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip "setuptools<81" wheel
	# torch first and pinned: other versions pull multi-GB downloads (see constraints.txt)
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	# the engine's whole dependency set at the versions Slicer installs (install.py writes it),
	# so a new release on PyPI does not change what the tests run against
	$(PY) -m pip install -q -c constraints.txt -c NoduleSAM/Resources/slicer-constraints.txt -e ".[test]"
	# the web app's layer library: its release pins an older slicer-core (docs/web.md)
	$(PY) -m pip install -q --no-deps -c constraints.txt slicer-layer-dm
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nodulesam demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest

benchmark: $(STAMP)
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) out .pytest_cache
