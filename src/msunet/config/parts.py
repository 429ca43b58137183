"""Model parts (encoders, decoders) as their own files declare them: name, options, limits, builder.

A part's file (`msunet/models/encoders/resconv.py`, ...) declares everything about it in one place:

```python
@dataclasses.dataclass(frozen=True)
class ResConvOptions(PartOptions):
    res_blocks: int = 1
    def validate(self):
        check_int(type(self).__name__, "res_blocks", self.res_blocks, 1, 16)

@register_encoder("resconv", options=ResConvOptions)
def build_resconv_encoder(inputs, cfg): ...   # cfg.encoder_options is a ResConvOptions
```

and its package's `__init__` imports it (the one registration line). `ModelConfig` reads the
registries to validate `model.encoder`, `model.decoder` and their options, so part files must import
without keras: their builders import keras and `msunet.models.blocks` when they run. The
registries load their package on first use (`importlib`, like an entry point), so that this module
and the configs stay free of keras; parts registered by a user's own module count the same.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from typing import Any

from msunet.config.base import BaseConfig, ConfigError, close_matches


@dataclasses.dataclass(frozen=True)
class PartOptions(BaseConfig):
    """The options of a part without any: the base every part's options class extends."""


@dataclasses.dataclass(frozen=True)
class Part:
    """A registered part: what `ModelConfig` checks and `build_model` calls.

    Args:
        kind: "encoder" or "decoder".
        name: the value of `model.encoder` / `model.decoder`.
        build: the builder (encoder: `(inputs, cfg) -> {scale: tensor}`; decoder:
            `(pyramid, cfg) -> {scale: tensor}`).
        options: the part's options class (a frozen `PartOptions` dataclass), read as
            `model.encoder_options` / `model.decoder_options`.
        min_depth, max_depth: the `model.depth` range the part supports.
        pretrained: it can load pretrained weights (`model.encoder_weights`).
        dims: the spatial dimensions it builds (`model.dims`: 2 for images, 3 for volumes).
        summary: one line for `msunet summary --list` (default: the builder's first docstring line).
    """

    kind: str
    name: str
    build: Callable
    options: type[PartOptions] = PartOptions
    min_depth: int = 1
    max_depth: int | None = None
    pretrained: bool = False
    summary: str = ""
    dims: tuple[int, ...] = (2, 3)

    @property
    def option_names(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.options)}

    def describe(self) -> str:
        """One line: the summary given at registration, else the first line of the part file's docstring."""
        module = sys.modules.get(self.build.__module__)
        doc = (self.summary or (module.__doc__ if module else "") or "").strip()
        return doc.splitlines()[0] if doc else ""


class PartRegistry(dict):
    """name -> `Part`; the package of built-in parts is imported on first use.

    Example:
    ```python
    from msunet.config.parts import ENCODERS
    ENCODERS.lookup("resconv").options   # ResConvOptions
    ENCODERS.lookup("resconf")           # ConfigError: ... did you mean 'resconv'?
    ```
    """

    def __init__(self, kind: str, package: str):
        super().__init__()
        self.kind, self.package, self._loaded = kind, package, False

    def load(self) -> PartRegistry:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.package)  # its __init__ imports each part file, which registers it
        return self

    def register(self, name: str, *, options: type[PartOptions] = PartOptions, min_depth: int = 1,
                 max_depth: int | None = None, pretrained: bool = False, summary: str = "",
                 dims: tuple[int, ...] = (2, 3)) -> Callable:
        """Decorator registering a builder as the part `name` (once), with its options class."""
        if not (isinstance(options, type) and issubclass(options, PartOptions)):
            raise TypeError(f"{self.kind} {name!r}: options must be a PartOptions dataclass, not {options!r}.")

        def register(build: Callable) -> Callable:
            if name in self and self[name].build.__module__ != build.__module__:
                raise ValueError(f"{self.kind.capitalize()} {name!r} is registered already (by "
                                 f"{self[name].build.__module__}).")
            self[name] = Part(self.kind, name, build, options, min_depth, max_depth, pretrained, summary, tuple(dims))
            return build

        return register

    def names(self) -> list[str]:
        return sorted(self.load())

    def lookup(self, name: str) -> Part:
        """The part registered as `name`; an unknown name lists the valid ones and the closest."""
        self.load()
        if name not in self:
            raise ConfigError(
                f"model.{self.kind}={name!r} is not registered; valid: {', '.join(repr(n) for n in sorted(self))}."
                f"{close_matches(str(name), self)}"
            )
        return self[name]

    def options_of(self, name: str, value: Any, owner: str) -> PartOptions:
        """`value` (None, a mapping or an options object) as the options of part `name`, validated."""
        part = self.lookup(name)
        field = f"{self.kind}_options"
        if value is None:
            return part.options()
        if type(value) is part.options:
            return value
        if isinstance(value, PartOptions):  # options of another part: only its defaults carry over
            if value != type(value)():
                raise ConfigError(f"{owner}.{field}={value.to_dict()} configure another {self.kind}; "
                                  f"{self.kind}={name!r} takes {_fields_text(part.options)}.")
            return part.options()
        if isinstance(value, dict) or hasattr(value, "items"):
            try:
                return part.options.from_dict(dict(value))
            except ConfigError as err:
                raise ConfigError(f"{owner}.{field} of {self.kind} {name!r}: {err} ({self.kind} {name!r} takes "
                                  f"{_fields_text(part.options)}).") from None
        raise ConfigError(f"{owner}.{field}={value!r} must be a mapping of option names to values.")


def _fields_text(options: type[PartOptions]) -> str:
    names = [f.name for f in dataclasses.fields(options)]
    return ("options " + ", ".join(names)) if names else "no options"


ENCODERS = PartRegistry("encoder", "msunet.models.encoders")
DECODERS = PartRegistry("decoder", "msunet.models.decoders")
register_encoder = ENCODERS.register
register_decoder = DECODERS.register
