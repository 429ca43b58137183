"""The README is a short guide whose every link resolves and whose Python blocks run, with the docs'
blocks; docs/configuration.md is what the config dataclasses say."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

from helpers import ROOT

# README first, then the docs whose blocks continue its namespace (export.md uses the README's run).
DOCS_IN_ORDER = ["README.md", "docs/concepts.md", "docs/models.md", "docs/export.md", "docs/training.md",
                 "docs/prediction.md", "docs/evaluation.md", "docs/scale-out.md", "docs/performance.md",
                 "docs/accuracy.md", "docs/architecture.md", "docs/volumes.md", "docs/reliability.md"]


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_every_doc_page_is_listed_here():
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} - {"docs/configuration.md"}
    assert pages == set(DOCS_IN_ORDER[1:]), "add the new page to DOCS_IN_ORDER (its Python blocks must run)"


def test_readme_is_a_short_guide_with_working_links():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert text.index("make demo") < text.index("make test") < 400  # the two commands come first
    for page in ["README.md", "CHANGELOG.md", *DOCS_IN_ORDER[1:]]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / page).read_text()):
            if "://" not in target:
                assert (ROOT / page).parent.joinpath(target).exists(), f"{page} links to a missing {target}"


def test_configuration_reference_is_generated_from_the_dataclasses():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import config_reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert (ROOT / "docs" / "configuration.md").read_text() == config_reference.render(), \
        "docs/configuration.md is stale: run `python docs/config_reference.py`"
    from msunet.config import DataConfig, ModelConfig, TrainConfig

    for cls in (ModelConfig, DataConfig, TrainConfig):  # every field documented in its class docstring
        undocumented = [f.name for f in dataclasses.fields(cls) if f.name not in config_reference.field_docs(cls)]
        assert not undocumented, f"{cls.__name__}: document {undocumented} under Args:"


def test_python_blocks_of_the_readme_and_docs_run(tmp_path):
    """Every ```python block of the README and docs/, in order, in one namespace, in an empty folder."""
    blocks = [(page, block) for page in DOCS_IN_ORDER for block in _python_blocks((ROOT / page).read_text())]
    assert len(blocks) >= 4 and any("msunet.train(" in b for _, b in blocks)
    script = "\n".join(f"# --- {page} block {i}\n{block}" for i, (page, block) in enumerate(blocks, 1))
    (tmp_path / "doc_blocks.py").write_text(script)
    result = subprocess.run([sys.executable, "doc_blocks.py"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (tmp_path / "runs" / "first" / "best.keras").is_file()
    assert (tmp_path / "eval" / "report.html").is_file()
    assert (tmp_path / "unet.keras").is_file() and (tmp_path / "bundles" / "first-int8" / "bundle.json").is_file()
    assert "graph on ONNX Runtime" in result.stdout or "graph on OpenVINO" in result.stdout
