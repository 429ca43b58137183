"""Imports flow one way: the import-linter contracts in pyproject.toml ([tool.importlinter]) hold.

They layer the pipeline (cli > demo > ray prediction > evaluation > inference > exporting > training
> plan > runtime > models | data > config > foundations), forbid cycles inside every package, and
keep the prediction runtime, the engine choice, configs, the output contract and image IO free of
keras / tensorflow / scipy. No private name crosses a module, and no module is a room of many jobs.
"""

import ast
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


def _modules():
    return sorted((ROOT / "src" / "msunet").rglob("*.py"))


def test_no_private_name_is_imported_across_modules():
    """`from msunet.x import _y` would tie a module to another's internals: make it public or move it."""
    crossing = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("msunet"):
                crossing += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, crossing


def test_modules_stay_rooms_of_one_concept():
    """No module above ~400 lines: the planner's device part went to plan/device.py when it passed 460."""
    allowed: dict[str, int] = {}
    sizes = {str(p.relative_to(ROOT / "src" / "msunet")): len(p.read_text().splitlines()) for p in _modules()}
    too_big = {name: n for name, n in sizes.items() if n > allowed.get(name, 400)}
    assert not too_big, too_big
