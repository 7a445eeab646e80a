# make test  - set everything up on a fresh machine and run the test suite
# make demo  - set up and run the main job on the default backend
# make bench - the pytest-benchmark suites, JSON and a ratio report under bench/out/
# make gpu-check - on a machine with an NVIDIA GPU: every CUDA/OpenCL-GPU test and the GPU benchmarks
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py native/*.py | cksum | cut -d' ' -f1)
EXTRAS ?= test,bench,opencl

.PHONY: setup system-deps test demo bench gpu-check clean

system-deps:
	@scripts/system-deps.sh

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

# The C fallback is rebuilt whenever kernels/ or native/ changed since the last build.
NATIVE := $(VENV)/.native-built
$(NATIVE): $(STAMP) $(wildcard kernels/*.h native/*.c native/*.h native/cpu/*.h)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

setup: system-deps $(NATIVE)

test: setup
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/accel info
	$(VENV)/bin/accel merkle-demo --leaves 1000000

bench: setup
	mkdir -p bench/out
	$(PY) -m pytest bench --benchmark-only --benchmark-json=bench/out/results.json $(BENCH_ARGS)
	$(PY) bench/report.py bench/out/results.json

gpu-check:
	scripts/gpu-check.sh

clean:
	rm -rf $(VENV) build accel/_native* *.egg-info bench/out
