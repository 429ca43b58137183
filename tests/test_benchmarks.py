"""The speed harness must not rot: a tiny smoke run (one repeat, 32x32) in every `make test`."""

import json
import subprocess
import sys

from helpers import ROOT


def test_speed_harness_smoke(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["smoke"] and data["throughput"]["train"]["msunet"]["median"] > 0
    assert data["throughput"]["tiled_mpx_per_s"]["msunet_predict_tiled"]["median"] > 0
    assert data["conv_ceiling_gflops"] > 0
