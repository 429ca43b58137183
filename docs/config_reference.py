"""Writes docs/configuration.md from the config dataclasses (`msunet.config`): every field of the
`model`, `data` and `train` sections with its default and its documentation.

`python docs/config_reference.py` rewrites the file; `tests/test_docs.py` fails when it is stale.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

INTRO = """# Configuration reference

Generated from the config dataclasses by `python docs/config_reference.py` (a test fails when this
file is stale). `RUN/config.json` has three sections, each a frozen dataclass in `msunet.config`:
`model` (`ModelConfig`), `data` (`DataConfig`) and `train` (`TrainConfig`). `--set` takes
`section.key=value`, or a bare `key=value` when only one section has that key; `--config FILE`
takes a JSON file of the same shape (a bare `ModelConfig` JSON, as in `examples/`, is accepted as
the model section). Every value you do not set is planned from the data and the machine
([the planner](training.md#the-same-from-python)); `config.json` records each value's source. Bad
values raise `ConfigError` (a `ValueError`) naming the field, the value and the valid range, with a
close match for misspelt names.
"""


def field_docs(cls) -> dict[str, str]:
    """{field: its text} from the class docstring's `Args:` section (entries may name several fields)."""
    doc = cls.__doc__ or ""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    entries: dict[str, str] = {}
    current: list[str] = []
    for line in section.split("\n"):
        match = re.match(r"^ {8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if match:
            current = [n.strip() for n in match.group(1).split(",")]
            for name in current:
                entries[name] = match.group(2).strip()
        elif line.startswith(" " * 12) and current:
            for name in current:
                entries[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" " * 8):
            current = []
    return entries


def table(cls, section: str) -> str:
    docs = field_docs(cls)
    rows = [f"## `{section}`: {cls.__name__}\n", (cls.__doc__ or "").strip().split("\n")[0] + "\n",
            "| field | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, type) or f.name.endswith("_options"):  # a part's options: their own tables
            default = "the part's defaults"
        text = docs.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{section}.{f.name}` | `{json.dumps(default)}` | {text} |")
    return "\n".join(rows) + "\n"


def part_tables() -> str:
    """One table per part that has options: they live in the part's file and are set as
    `model.encoder_options.NAME` / `model.decoder_options.NAME` (or by their own name)."""
    from msunet.config import DECODERS, ENCODERS

    rows = ["## Parts' options\n", "Each encoder and decoder declares its options in its own file "
            "([how to add a part](architecture.md#adding-a-part)). Set them as `model.encoder_options.NAME=VALUE` / "
            "`model.decoder_options.NAME=VALUE`, or by their own name (`--set model.attention=true`), which is also "
            "how older configs wrote them.\n"]
    for registry in (ENCODERS, DECODERS):
        for name in registry.names():
            part = registry[name]
            fields = dataclasses.fields(part.options)
            if not fields:
                continue
            docs = field_docs(part.options)
            rows += [f"### {registry.kind} `{name}`: {part.options.__name__}\n", f"{part.describe()}\n",
                     "| option | default | meaning |", "|---|---|---|"]
            for f in fields:
                text = docs.get(f.name, "").replace("|", "\\|")
                rows.append(f"| `model.{registry.kind}_options.{f.name}` | `{json.dumps(f.default)}` | {text} |")
            rows.append("")
    return "\n".join(rows)


def render() -> str:
    from msunet.config import DataConfig, ModelConfig, TrainConfig

    return "\n".join([INTRO, table(ModelConfig, "model"), part_tables(), table(DataConfig, "data"),
                      table(TrainConfig, "train")])


if __name__ == "__main__":
    (HERE / "configuration.md").write_text(render(), encoding="utf-8")
    print(f"wrote {HERE / 'configuration.md'}")
