"""Frozen, JSON round-tripping configuration dataclasses.

Every option of msunet lives in a frozen dataclass of plain types (int, float, bool, str,
tuples of those, or None). Each config:

- validates itself on construction and raises `ConfigError` (a `ValueError`) naming the field,
  the value received and what would be valid;
- round-trips through `to_dict()` / `from_dict()` and `to_json()` / `from_json()`;
- accepts `key=value` overrides (`cfg.override(["depth=3", "upsample=bilinear"])`), as the CLI's
  `--set` does, with a close-match suggestion for unknown keys.

This module never imports keras: configs are read by tools (tiling, IO, CLI parsing) that must not
pay for a backend import.

One module a section: `base` (the shared dataclass behaviour and checks), `model`, `data`, `train`,
`run`; `parts` collects the encoders and decoders that their own files declare, with their options. Everything is importable from here."""

from msunet.config.base import (  # noqa: F401
    BaseConfig,
    ConfigError,
    check_choice,
    check_float,
    check_int,
    close_matches,
    jsonable,
    parse_value,
    read_json_source,
)
from msunet.config.data import (  # noqa: F401
    FLIPS,
    MASK_ENCODINGS,
    NORMALIZATIONS,
    RESAMPLE_FACTORS,
    TARGET_DOWNSAMPLINGS,
    DataConfig,
)
from msunet.config.model import (  # noqa: F401
    ACTIVATIONS,
    DECODER_ALIASES,
    DOWNSAMPLES,
    FUSIONS,
    MAX_DEPTH,
    NORMS,
    OUTPUT_ACTIVATIONS,
    PRECISIONS,
    UPSAMPLES,
    ModelConfig,
)
from msunet.config.parts import (  # noqa: F401
    DECODERS,
    ENCODERS,
    Part,
    PartOptions,
    PartRegistry,
    register_decoder,
    register_encoder,
)
from msunet.config.run import (  # noqa: F401
    SECTIONS,
    RunConfig,
    as_run_sections,
    non_default_keys,
    resolve_run_config,
    user_keys_of,
)
from msunet.config.train import (  # noqa: F401
    DISTRIBUTIONS,
    DS_WEIGHTINGS,
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
)
