"""One engine choice for every prediction entry point, and `msunet.predict`.

`open_engine(model, engine="auto")` turns what the user passed (a run folder, a .keras file, an
exported bundle, or something already open) into the `Engine` the file loop drives. The CLI's
`msunet predict`, `msunet.predict`, `msunet evaluate` and the Ray actors all call it, so the same
arguments give the same masks everywhere. The choice is made in two steps so that a cluster makes it
once: `choose_engine` (on the driver: it may export the run's int8 bundle) returns a small picklable
`EngineChoice`, and `EngineChoice.open()` loads it (in each actor).

| `engine`        | a run folder / .keras file                        | an exported bundle                    |
|-----------------|---------------------------------------------------|---------------------------------------|
| "auto"          | the run's int8 bundle (made once, self-checked on this machine: `msunet.runtime.Predictor`), else Keras with the reason | the bundle's own choice (`Predictor`) |
| "keras"         | the Keras model as trained                        | error: a bundle has no Keras model     |
| "int8"          | the run's int8 bundle, its int8 graph as exported (no self-check: what `msunet evaluate --engine int8` scores) | an int8 bundle, unchecked |
| "onnxruntime", "openvino", "litert" | error: export the run first   | that runtime                          |
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable

from msunet.atomic import check_writable
from msunet.runtime.bundle import Predictor, is_bundle, read_bundle
from msunet.runtime.engine import Engine
from msunet.runtime.files import PredictSummary, predict_files
from msunet.runtime.options import PredictOptions

log = logging.getLogger(__name__)

BUNDLE_ENGINES = ("onnxruntime", "openvino", "litert")
ENGINES = ("auto", "keras", "int8", *BUNDLE_ENGINES)


class EngineError(ValueError):
    """An engine that cannot run this model; the message says which would."""


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    """What will run and why: a Keras run (`kind="keras"`) or a bundle (`kind="bundle"`, with the
    bundle runtime to use, None for the bundle's own choice, and whether it checks itself)."""

    path: str
    kind: str
    why: str
    bundle_engine: str | None = None
    check: bool = True

    def open(self, threads: int | None = None) -> Engine:
        """Loads the model (once) and returns it as an `Engine`."""
        if self.kind == "keras":
            from msunet.inference.keras_engine import run_engine
            from msunet.training.run_folder import load_run

            return run_engine(load_run(self.path), description=f"Keras ({self.why})")
        predictor = Predictor(self.path, threads, self.bundle_engine, check=self.check)
        engine = predictor.engine()
        return dataclasses.replace(engine, description=f"{engine.description}; {self.why}")


def choose_engine(model: str | os.PathLike, engine: str = "auto", log: Callable[[str], None] = log.info
                  ) -> EngineChoice:
    """Which engine runs `model` (a run folder, a .keras file or a bundle folder) for `engine`.

    With "auto" or "int8" a run's int8 bundle is exported the first time (`msunet.exporting.run_bundle`;
    `log` says so). Raises `EngineError` for a combination that cannot run, naming the one that can.
    """
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}.")
    path = pathlib.Path(model)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder, .keras file or bundle.")
    if is_bundle(path):
        if engine == "keras":
            raise EngineError(f"{path} is an exported bundle; engine 'keras' predicts with a run folder (or use "
                              f"{', '.join(BUNDLE_ENGINES)}).")
        if engine == "int8" and read_bundle(path, verify=False).get("precision") != "int8":
            raise EngineError(f"{path} is a float32 bundle; engine 'int8' needs one exported with --int8.")
        return EngineChoice(str(path), "bundle", f"the bundle {path}",
                            None if engine in ("auto", "int8") else engine, check=engine != "int8")
    if engine in BUNDLE_ENGINES:
        raise EngineError(f"engine {engine!r} runs an exported bundle; {path} is a run (Keras). Export it first "
                          f"(msunet export {path} --out BUNDLE), or leave the engine at 'auto': a run folder predicts "
                          "with its int8 bundle, made once.")
    if engine == "keras":
        return EngineChoice(str(path), "keras", "asked for")
    from msunet.exporting.run_bundle import run_bundle

    found, how = run_bundle(path, log=log)
    if engine == "int8":
        if found is None or read_bundle(found, verify=False).get("precision") != "int8":
            raise EngineError(f"engine 'int8' runs the run's int8 bundle, which cannot be made: {how}.")
        return EngineChoice(str(found), "bundle", f"the run's int8 bundle {found}, unchecked ({how})", check=False)
    if found is None:
        return EngineChoice(str(path), "keras", how)
    return EngineChoice(str(found), "bundle", f"the run's bundle {found} ({how}; engine 'keras' for the Keras model)")


def open_engine(model, engine: str = "auto", threads: int | None = None,
                log: Callable[[str], None] = log.info) -> Engine:
    """`model` as the `Engine` the file loop drives, chosen by `engine` (see the module's table).

    Example:
    ```python
    engine = open_engine("runs/first")            # the run's int8 bundle where it holds, else Keras
    print(engine.description)                      # what runs, and why
    ```

    Args:
        model: a run folder, a .keras file, a bundle folder, or one already open: an `Engine`, a
            `msunet.runtime.Predictor` or a `LoadedRun` (`msunet.training.run_folder.load_run`).
        engine: "auto", "keras", "int8", "onnxruntime", "openvino" or "litert".
        threads: a bundle runtime's threads (default: all cores).
        log: where a one-time export is announced.
    """
    if isinstance(model, Engine):
        return model
    if isinstance(model, Predictor):
        return model.engine()
    if not isinstance(model, (str, os.PathLike)):  # a LoadedRun: the Keras model already in memory
        if engine not in ("auto", "keras"):
            raise EngineError(f"a run loaded in memory predicts with Keras; engine {engine!r} needs its folder.")
        from msunet.inference.keras_engine import run_engine

        return run_engine(model)
    return choose_engine(model, engine, log).open(threads)


def predict(model, inputs: str | os.PathLike, out_dir: str | os.PathLike, options: PredictOptions | None = None, *,
            engine: str = "auto", threads: int | None = None,
            progress: Callable[[str, int, int], None] | None = None, **values) -> PredictSummary:
    """Predicts every image of `inputs` (a file, a folder, or a glob pattern) and writes masks at every scale.

    `msunet.predict` and `msunet predict` are this function: the same engine choice
    (`open_engine`), the same options (`PredictOptions`, or its fields as keyword arguments), the
    same masks.

    Example:
    ```python
    summary = msunet.predict("runs/first", "scans/", "masks/", tta=True)
    summary.written, summary.failed
    ```

    Args:
        model: a run folder, a .keras file, an exported bundle, or one already open (`open_engine`).
        inputs: an image file, a folder of images, or a glob pattern ("scans/*.tif").
        out_dir: output folder (created).
        options: a `PredictOptions`; keyword `values` (tile_size=, overlap=, batch_size=, tta=,
            threshold=, scales=, probabilities=, overlay_images=, overwrite=, blend=) change it.
        engine: see `open_engine` ("auto": a run's int8 bundle where it holds, else Keras).
        progress: called as progress(file_name, tiles_done, tiles_total).

    Returns:
        A `PredictSummary` (written files, images kept because outputs existed, failures with reasons).
    """
    options = PredictOptions.of(options, **values)  # validated before any model is loaded
    check_writable(out_dir)  # and the output folder: a read-only or full one is refused before the model loads
    return predict_files(open_engine(model, engine, threads), inputs, out_dir, options, progress)
