"""A name -> builder registry for model parts (encoders, decoders)."""

from __future__ import annotations

from collections.abc import Callable

from msunet.config import ConfigError, close_matches


class Registry(dict):
    """A dict of name -> builder whose look-up errors name the config key and the valid names.

    Example:
    ```python
    ENCODERS = Registry("encoder")

    @ENCODERS.register("conv")
    def build_conv_encoder(inputs, cfg): ...

    ENCODERS.lookup("conv")   # the builder; an unknown name raises ConfigError
    ```
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator registering a builder under `name` (once)."""

        def register(builder: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind.capitalize()} {name!r} is registered already (by {self[name].__module__}).")
            self[name] = builder
            return builder

        return register

    def lookup(self, name: str) -> Callable:
        """The builder registered as `name`; an unknown name lists the valid ones and the closest."""
        if name not in self:
            raise ConfigError(
                f"model.{self.kind}={name!r} is not registered; valid: {', '.join(repr(n) for n in sorted(self))}."
                f"{close_matches(name, self)}"
            )
        return self[name]
