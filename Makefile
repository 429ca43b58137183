# One command to set up and run the demo, one to set up and run the tests.
# Both create or refresh .venv idempotently: it is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.msunet-installed
EXTRAS ?= train,export,geo,omezarr,test
# Tests run in this many processes (pytest-xdist): on 2 cores the suite takes ~9.5 min instead of ~17.
TEST_WORKERS ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 2

MSUNET_INSTALL_CHROMIUM ?= 1

BENCH_VENV ?= .venv-bench

.PHONY: venv demo test test-chaos test-slow test-backends test-scale test-napari browser bench-env bench-speed bench-accuracy bench-accuracy-peer bench-newcomer clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/msunet demo --out demo_out

test: venv browser
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The report test renders in headless Chromium. Install Debian's chromium when it is missing and we
# may (root with apt-get; MSUNET_INSTALL_CHROMIUM=0 to skip); otherwise that one test is skipped.
browser:
	@if [ "$(MSUNET_INSTALL_CHROMIUM)" = "1" ] && ! command -v chromium >/dev/null 2>&1 \
	    && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the report test (MSUNET_INSTALL_CHROMIUM=0 to skip)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "chromium could not be installed: the browser test will be skipped"; \
	fi

# The reliability harness at full counts (benchmarks/reliability.py; `make test` runs its quick part):
# 20 kills of train and of predict, graceful stops, a 1000-image rotten folder, a full disk and a
# read-only folder (tmpfs mounts as root on Linux; otherwise the full disk is skipped with the reason and
# the read-only folder is a chmod 555 one), two runs
# into one folder. Writes benchmarks/results/reliability/reliability-DATE.json and prints the table.
test-chaos: venv
	$(PY) benchmarks/reliability.py --table

test-slow: venv
	$(PY) -m pytest -q -m slow --runslow

# Also runs the backend smoke tests on JAX and PyTorch (CPU builds; large downloads).
test-backends: venv
	$(PY) -m pip install --quiet "jax[cpu]" "torch==2.13.0"
	$(PY) -m pytest -q tests/test_backends.py

# Scale-out engines (optional, large downloads): keras.distribution on JAX (two virtual CPU devices,
# two processes on localhost) and Ray Data batch prediction on a local Ray (tests/test_distributed.py,
# tests/test_ray.py; without them these tests are skipped with the reason).
test-scale: venv
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),jax,ray]"
	$(PY) -m pytest -q tests/test_distributed.py tests/test_ray.py

# napari's OME-Zarr reader plugin (about 60 packages, used headless: no viewer, no Qt) reads the stores
# `msunet predict --format ome-zarr` writes (tests/test_omezarr.py; skipped with the reason otherwise).
test-napari: venv
	$(PY) -m pip install --quiet "napari-ome-zarr>=0.10"
	$(PY) -m pytest -q tests/test_omezarr.py -k napari

# Peers for the speed benchmark (never msunet's own dependencies): the CPU build of torch 2.13.0 and
# MONAI, in a separate environment with msunet installed too, so one process can run all contenders.
bench-env:
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(BENCH_VENV)/bin/python -m pip install --quiet monai -e ".[train,export]"

bench-speed: bench-env
	$(BENCH_VENV)/bin/python benchmarks/speed.py

# Accuracy on the real datasets in ../shared/data (benchmarks/accuracy/): check, train on a CPU time
# budget, evaluate with and without TTA. DATASET = drive | hrf | isbi2012-membrane | dsb2018-nuclei |
# camvid | all. The PyTorch peer trains on the same split for the same time (drive, dsb2018-nuclei).
DATASET ?= all
bench-accuracy: venv
	$(PY) benchmarks/accuracy/run.py $(DATASET)

bench-accuracy-peer: bench-env
	$(BENCH_VENV)/bin/python benchmarks/accuracy/peer.py $(DATASET)

# What a new user gets with no settings: the 64x64 grayscale folder (wall clock, cold start), and
# the shared datasets with only a 15-minute budget (benchmarks/accuracy/run.py --newcomer).
bench-newcomer: venv
	$(PY) benchmarks/newcomer.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist src/*.egg-info .pytest_cache
