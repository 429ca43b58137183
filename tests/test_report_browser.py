"""The evaluation report in a real browser: headless Chromium renders it without console errors,
the key elements are in the rendered page, and a screenshot is not blank.

Skipped with the reason when Chromium is not installed (`make test` installs Debian's chromium when
it runs as root with apt-get available; set MSUNET_INSTALL_CHROMIUM=0 to skip that).
"""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from msunet.evaluation.evaluate import evaluate_folders

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for i in range(4):
        truth = np.zeros((48, 64), np.uint8)
        truth[10 + i : 30, 12 : 40 + i] = 255
        pred = np.roll(truth, i * 2, axis=1)
        for folder, array in (("gt", truth), ("pred", pred), ("images", (rng.random((48, 64, 3)) * 255).astype(np.uint8))):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(array).save(root / folder / f"case{i}.png")
        Image.fromarray(pred[::2, ::2]).save(root / "pred" / f"case{i}_s2.png")
    evaluate_folders(root / "pred", root / "gt", root / "out", images_dir=root / "images")
    return root / "out" / "report.html"


def run_chromium(args, profile, timeout=90):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; make test does it as root)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri()
    dom = run_chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", url], tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for element in ("id=\"summary\"", "id=\"bars\"", "id=\"cases\"", "id=\"overview\"", "worst", "best"):
        assert element in dom.stdout, element
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "rror" in line)]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    result = run_chromium([f"--screenshot={shot}", "--window-size=1280,1600", url], tmp_path / "p2")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (1600, 1280) and pixels.std() > 10  # text, table and images, not a blank page
