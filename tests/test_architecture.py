"""Imports flow one way: the import-linter contracts in pyproject.toml ([tool.importlinter]) hold.

They forbid cycles between msunet's modules (the planner's probe once imported training, which
imported the check that imports the probe; data and feeding imported each other), keep the
prediction runtime, configs, the output contract and image IO free of keras / tensorflow / scipy,
keep models free of everything above them, and keep the training step and the probe below the
run-folder orchestration.
"""

import os
import subprocess
import sys

import pytest

from helpers import ROOT


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter comes with msunet[test] (make venv installs it)")
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    command = [lint] if os.path.exists(lint) else [sys.executable, "-c", "import sys; from importlinter.cli import "
                                                                      "lint_imports_command as c; sys.exit(c())"]
    result = subprocess.run([*command, "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
