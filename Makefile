# make test  - set everything up on a fresh machine and run the test suite
# make demo  - set up and run the main job: the clearing market on a local validator network, per
#              block size, on each accel backend here and software-only (table, plot, JSON in demo-out/)
# make bench - the pytest-benchmark suites, JSON and a ratio report under bench/out/ (OpenCL and CUDA
#              in a second process); every run is also autosaved under .benchmarks/ (compare:
#              .venv/bin/pytest-benchmark compare)
# make bench-consensus - validation and finality of the BFT loop over sizes and delays (simulated)
# make bench-state - a clearing block's validation and proposal against the state's size (to 1M accounts)
# make gpu-check - on a machine with an NVIDIA GPU: the CUDA/OpenCL-GPU tests and the GPU benchmarks
# make gpu-prep  - before a GPU lease, no GPU needed: prebuilt CUDA modules, wheels and test vectors
#                  for gpu-check to carry (scripts/gpu-prep.sh)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat Makefile pyproject.toml setup.py native/*.py | cksum | cut -d' ' -f1)
EXTRAS ?= test,bench,opencl

.PHONY: setup system-deps test demo bench bench-consensus bench-state gpu-check gpu-prep clean

system-deps:
	@scripts/system-deps.sh

# Build tools go into the venv first, so the C fallback builds without build isolation: a rebuild
# after editing kernels/ or native/ needs no network, and a fresh clone builds it once.
$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check "setuptools>=68" wheel "cffi>=1.16"
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-build-isolation -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*; touch $(STAMP) $(NATIVE)

# The C fallback is rebuilt whenever kernels/ or native/ changed since the last build.
NATIVE := $(VENV)/.native-built
# (Checked in the recipe, not by make: the stamp rule above has just built it on a fresh venv.)
$(NATIVE): $(STAMP) $(wildcard kernels/*.h native/*.c native/*.h native/cpu/*.h)
	@if [ -n "$$(find kernels native -name '*.[ch]' -newer $@ 2>/dev/null | head -n 1)" ]; then \
		echo "kernels/ or native/ changed: rebuilding the C fallback"; \
		$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	fi
	@touch $@

setup: system-deps $(NATIVE)

test: setup
	$(PY) -m pytest

# The clearing market on 4 local validators per block size, through every accel backend here and
# software-only: a table, a plot and the raw reports in demo-out/ (consensus/demo.py).
DEMO_ARGS ?=
demo: setup
	$(VENV)/bin/accel info
	OMP_WAIT_POLICY=PASSIVE $(PY) -m consensus.demo --out demo-out $(DEMO_ARGS)

# Two processes: the cases on the OpenCL or CUDA backend (marked `driver`, bench/conftest.py) after
# the rest, in their own, since a driver stays in the process that starts it and PoCL's threads
# (OpenCL on a CPU) compete with the C fallback's. Status 5 is pytest's "no case selected" (a
# BENCH_ARGS -k of one side only); the report reads the JSONs that this run wrote.
BENCH_JSON := bench/out/results.json bench/out/results-drivers.json
bench: setup
	mkdir -p bench/out
	rm -f $(BENCH_JSON)
	$(PY) -m pytest bench --benchmark-only --benchmark-autosave --benchmark-json=bench/out/results.json \
		$(BENCH_ARGS) -m "not driver" || [ $$? -eq 5 ]
	$(PY) -m pytest bench --benchmark-only --benchmark-autosave --benchmark-json=bench/out/results-drivers.json \
		$(BENCH_ARGS) -m driver || [ $$? -eq 5 ]
	$(PY) bench/report.py $$(ls $(BENCH_JSON) 2>/dev/null)

# The benchmarks' tables go through tee: bash with pipefail, so a benchmark that fails fails make
# (the pipeline's status was tee's: a traceback left a table of only its header and status 0).
# private: setup and the other targets keep make's /bin/sh.
bench-consensus bench-state: private SHELL := bash
bench-consensus bench-state: private .SHELLFLAGS := -o pipefail -c

# Validation by stage and time to finality over validators, block sizes and delays (simulated
# network, real compute): a table, JSON and a plot under bench/out/.
bench-consensus: setup
	mkdir -p bench/out
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/consensus_sweep.py --json bench/out/consensus.json \
		--png bench/out/consensus_finality.png $(SWEEP_ARGS) | tee bench/out/consensus.md

# The 10,000-transaction clearing block over 1,000 to 1,000,000 accounts, C fallback and software-only,
# each point in its own process: a table, JSON and a plot under bench/out/.
STATE_ARGS ?=
bench-state: setup
	mkdir -p bench/out
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/state_scale.py --json bench/out/state_scale.json \
		--png bench/out/state_scale.png $(STATE_ARGS) | tee bench/out/state_scale.md

gpu-check:
	scripts/gpu-check.sh

gpu-prep: setup
	scripts/gpu-prep.sh

clean:
	rm -rf $(VENV) build accel/_native* *.egg-info bench/out demo-out .cubin
