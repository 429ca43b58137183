"""A run: the model, data and train sections together, saved as RUN/config.json (`RunConfig`), and the
forms the public functions take a config in."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from msunet.atomic import write_text_atomic
from msunet.config.base import ConfigError, close_matches, read_json_source
from msunet.config.data import DataConfig
from msunet.config.model import ModelConfig
from msunet.config.train import TrainConfig

# --------------------------------------------------------------------------------------------------
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; `RUN/config.json` holds it and predict reads it back.

    Overrides take `section.key=value` (`train.epochs=5`) or a bare `key=value` when the key
    belongs to one section only (`epochs=5`; `seed` is in data and train, so it needs a section).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"RunConfig expects a mapping with sections {', '.join(SECTIONS)}.")
        # A run's config.json also records where each value came from (msunet.plan.planner); not a setting.
        data = {k: v for k, v in data.items() if k != "sources"}
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise ConfigError(
                f"RunConfig has no section {unknown[0]!r}.{close_matches(unknown[0], SECTIONS)} "
                f"Valid sections: {', '.join(SECTIONS)}."
            )
        return cls(**{name: SECTIONS[name].from_dict(data.get(name, {})) for name in SECTIONS})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            write_text_atomic(path, text)
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> RunConfig:
        return cls.from_dict(as_run_sections(read_json_source(source)))

    def override(self, assignments: Iterable[str]) -> RunConfig:
        grouped: dict[str, list[str]] = {name: [] for name in SECTIONS}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. train.epochs=5).")
            key, _, value = item.partition("=")
            key = key.strip()
            if "." in key:
                section, _, field = key.partition(".")
                if section not in SECTIONS:
                    raise ConfigError(
                        f"Override {item!r}: no section {section!r}.{close_matches(section, SECTIONS)} "
                        f"Valid sections: {', '.join(SECTIONS)}."
                    )
            else:
                owners = [s for s, c in SECTIONS.items() if key in {f.name for f in dataclasses.fields(c)}]
                if len(owners) > 1:
                    raise ConfigError(
                        f"Override {item!r} is ambiguous: {key!r} is in {' and '.join(owners)}; "
                        f"write {owners[0]}.{key}=... or {owners[1]}.{key}=..."
                    )
                if not owners:
                    every = [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)]
                    bare = [f.name for c in SECTIONS.values() for f in dataclasses.fields(c)]
                    hint = close_matches(key, bare) or close_matches(key, every)
                    raise ConfigError(f"Override {item!r}: no config field {key!r}.{hint}")
                section, field = owners[0], key
            grouped[section].append(f"{field}={value}")
        return RunConfig(**{name: getattr(self, name).override(grouped[name]) for name in SECTIONS})


def as_run_sections(data: Any) -> Any:
    """A bare ModelConfig mapping (examples/seed1.json) as a run's model section; anything else as is."""
    if isinstance(data, Mapping) and data and not set(data) & set(SECTIONS) and "sources" not in data:
        return {"model": data}
    return data


def user_keys_of(config_data: dict | None = None, overrides: Iterable[str] = ()) -> set[str]:
    """The "section.field" keys a user set: in a config file's JSON and in `key=value` overrides."""
    keys = set()
    if config_data and isinstance(config_data.get("sources"), Mapping):
        # A run's config.json: what that run's user set stays set; what was planned is planned anew.
        keys = {k for k, entry in config_data["sources"].items()
                if isinstance(entry, Mapping) and entry.get("source") == "user"}
    elif config_data:
        sections = config_data if set(config_data) & set(SECTIONS) else {"model": config_data}
        for section, fields in sections.items():
            if isinstance(fields, dict):
                keys |= {f"{section}.{name}" for name in fields}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if "." not in key:
            owners = [s for s, c in SECTIONS.items() if key in {f.name for f in dataclasses.fields(c)}]
            key = f"{owners[0]}.{key}" if len(owners) == 1 else key
        keys.add(key)
    return keys


def non_default_keys(config: RunConfig) -> set[str]:
    """Keys whose value differs from the default: what a Python caller's RunConfig set."""
    default = RunConfig()
    return {f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(SECTIONS[s])
            if getattr(getattr(config, s), f.name) != getattr(getattr(default, s), f.name)}


def resolve_run_config(config: RunConfig | Mapping | str | os.PathLike | None = None,
                       overrides: Iterable[str] = ()) -> tuple[RunConfig, set[str]]:
    """A run config from any of the forms the public functions take, and the keys the user set.

    `config`: a `RunConfig` (its non-default values count as set), a dict or a JSON file (run
    sections, or a bare model section; the keys written there count as set), or None (defaults).
    `overrides`: `key=value` strings, as `--set` (they count as set and win).
    """
    overrides = list(overrides or [])
    if isinstance(config, RunConfig):
        return config.override(overrides), non_default_keys(config) | user_keys_of(None, overrides)
    if config is None:
        data = None
    elif isinstance(config, Mapping):
        data = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        data = read_json_source(config)
    else:
        raise ConfigError(f"config must be a RunConfig, a dict, a JSON file or None, not {type(config).__name__}.")
    data = as_run_sections(data)
    base = RunConfig() if data is None else RunConfig.from_dict(data)
    return base.override(overrides), user_keys_of(data, overrides)
