import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests compare numbers exactly (any-size vs fixed graphs, tiled vs whole): run them in float32.
# "auto" picks mixed_bfloat16 on CPUs with bfloat16 instructions; tests/test_precision.py covers it.
os.environ.setdefault("MSUNET_PRECISION", "float32")
# The planner's device probe (a few timed training steps per precision) is tested on its own
# (tests/test_probe.py); elsewhere the plan keeps its estimates, and no test writes ~/.cache.
os.environ.setdefault("MSUNET_PROBE", "0")
# Per-machine caches (the probe's step times, bundle self-checks and engine timings) go to a folder of
# this test session's own: every run starts with none, and subprocesses of tests share it.
import tempfile  # noqa: E402

os.environ["MSUNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="msunet-test-cache-")

import pytest  # noqa: E402


def pytest_report_header(config):
    """The CPU the suite ran on, in the log (no test depends on it; tolerances say why they hold anywhere)."""
    from msunet import machine

    return [machine.summary_line()]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with `make test-slow` (pytest --runslow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state: model weights and data draws are reproducible."""
    import keras

    keras.utils.set_random_seed(0)
