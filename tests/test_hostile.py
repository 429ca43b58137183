"""Hostile inputs (issue 29): property-based tests of what a user's text, files and arguments reach.

Each property says what must hold for *any* input hypothesis draws: config overrides and JSON
either apply or raise `ConfigError` with a message (never another exception), tiling covers every
pixel exactly as the arguments ask, mask decoding yields class ids in range or a `DataError`, and a
bundle or a name from a file cannot lead msunet outside the folders it was given. The examples are
derandomized (the same ones on every run and machine), 60-200 per property.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from msunet.config import ConfigError, DataConfig, RunConfig  # noqa: E402
from msunet.data.pairs import decode_mask  # noqa: E402
from msunet.data.preprocessing import DataError  # noqa: E402
from msunet.runtime.tiling import predict_tiled, window_starts  # noqa: E402

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KEYS = sorted(f"{section}.{name}" for section, fields in RunConfig().to_dict().items() for name in fields)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


@SETTINGS
@given(key=st.sampled_from(KEYS) | TEXT, value=TEXT)
def test_any_override_applies_or_raises_a_config_error(key, value):
    try:
        run = RunConfig().override([f"{key}={value}"])
    except ConfigError as err:
        assert str(err).strip()
        return
    RunConfig.from_dict(run.to_dict())  # what applied is a valid config that round-trips


@SETTINGS
@given(key=st.sampled_from(KEYS), value=JSON)
def test_any_json_value_in_a_config_file_applies_or_raises_a_config_error(key, value, tmp_path):
    section, name = key.split(".", 1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({section: {name: value}}))
    try:
        RunConfig.from_json(path)
    except ConfigError as err:
        assert str(err).strip()


@SETTINGS
@given(document=JSON)
def test_any_json_document_as_a_config_raises_a_config_error_or_loads(document, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    try:
        RunConfig.from_json(path)
    except ConfigError as err:
        assert str(err).strip()


@SETTINGS
@given(length=st.integers(1, 3000), tile=st.integers(1, 600), overlap=st.floats(-0.5, 1.5, allow_nan=False))
def test_windows_cover_every_pixel_from_the_first_to_the_last(length, tile, overlap):
    if not 0 <= overlap < 1:
        with pytest.raises(ValueError, match="overlap"):
            window_starts(length, tile, overlap)
        return
    starts = window_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length  # flush with the border
    # neighbours overlap by at least the asked share (rounded to a pixel), so no pixel is left uncovered
    assert all(b - a <= max(tile * (1 - overlap), 1.0) + 1 for a, b in zip(starts, starts[1:]))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(height=st.integers(1, 70), width=st.integers(1, 70), channels=st.integers(1, 3),
       tile=st.sampled_from([4, 8, 16, 32]), overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
       blend=st.sampled_from(["gaussian", "constant"]), batch=st.integers(1, 5))
def test_tiling_an_identity_model_gives_back_the_image_at_every_scale(height, width, channels, tile, overlap, blend,
                                                                      batch):
    image = np.random.default_rng(height * 71 + width).random((height, width, channels), dtype=np.float32)

    def identity(tiles):  # a "model" whose every scale is the tile itself, average-pooled
        out = {"mask": tiles}
        b, h, w, c = tiles.shape
        out["mask_s4"] = tiles.reshape(b, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))
        return out

    probs = predict_tiled(identity, image, tile, overlap, batch, blend, scales={"mask": 1, "mask_s4": 4})
    # Blending identical values gives them back: float32 sums of a few weights, so 1e-5.
    np.testing.assert_allclose(probs["mask"], image, atol=1e-5)
    assert probs["mask_s4"].shape == (-(-height // 4), -(-width // 4), channels)


MASK_VALUES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32]).flatmap(
    lambda dtype: st.tuples(st.just(dtype), st.lists(st.integers(0, 300), min_size=1, max_size=6)))


@SETTINGS
@given(spec=MASK_VALUES, shape=st.tuples(st.integers(1, 9), st.integers(1, 9)), colour=st.booleans(),
       classes=st.integers(1, 6), encoding=st.sampled_from(["auto", "binary", "index", "palette"]),
       ignore=st.none() | st.integers(0, 300))
def test_any_mask_decodes_to_classes_in_range_or_raises_a_data_error(spec, shape, colour, classes, encoding, ignore):
    dtype, values = spec
    rng = np.random.default_rng(len(values) * 131 + shape[0])
    raw = rng.choice(np.asarray(values), size=shape + ((3,) if colour else ())).astype(dtype)
    palette = ((0, 0, 0), (255, 0, 0), (0, 255, 0)) if encoding == "palette" else None
    try:
        cfg = DataConfig(mask_encoding=encoding, palette=palette, ignore_label=ignore)
    except ConfigError:
        return
    try:
        out = decode_mask(raw, cfg, classes, path="m.png")
    except DataError as err:
        assert str(err).startswith("m.png: ")  # names the file
        return
    assert out.dtype == np.int16 and out.shape == shape
    assert out.min() >= -1 and out.max() < max(classes, 2, len(palette or ()))


# --- files that name other files --------------------------------------------------------------------

def test_names_from_a_pairs_csv_cannot_place_outputs_outside_the_output_folder(tmp_path):
    """A pairs CSV with `../` and absolute paths: every prediction lands in the output folder, named by stem."""
    from msunet.data.imageio import write_png
    from msunet.data.pairs import find_pairs
    from msunet.runtime.files import output_paths, output_stems

    outside = tmp_path / "outside"
    data = tmp_path / "data"
    for folder in (outside, data / "images", data / "masks"):
        folder.mkdir(parents=True)
    write_png(outside / "evil.png", np.zeros((8, 8, 3), np.uint8))
    write_png(outside / "evil_mask.png", np.zeros((8, 8), np.uint8))
    (data / "pairs.csv").write_text(f"image,mask\n../outside/evil.png,../outside/evil_mask.png\n"
                                    f"{outside / 'evil.png'},{outside / 'evil_mask.png'}\n")
    index = find_pairs(data, DataConfig(pairs_csv="pairs.csv"))
    assert [p.name for p in index.pairs] == ["evil", "evil"]
    out = tmp_path / "out"
    for path, stem in output_stems([p.image for p in index.pairs] + [pathlib.Path("../../x/..png")]).items():
        for target in output_paths(out, stem, ["mask", "mask_s2"], False, True).values():
            assert target.resolve().parent == out.resolve(), target


def test_no_module_unpickles_or_loads_keras_files_unsafely():
    """No pickle, `allow_pickle=True` or `safe_mode=False` anywhere in the library (a .keras file or an
    .npy from a stranger runs no code)."""
    src = pathlib.Path(__file__).resolve().parents[1] / "src" / "msunet"
    offenders = []
    for path in src.rglob("*.py"):
        text = path.read_text()
        for needle in ("import pickle", "pickle.load", "allow_pickle=True", "safe_mode=False", "dill", "marshal.load"):
            if needle in text:
                offenders.append(f"{path.relative_to(src)}: {needle}")
    assert not offenders


def test_a_pickled_npy_is_refused_with_the_file_named(tmp_path):
    from msunet.data.imageio import ImageReadError, read_image

    path = tmp_path / "object.npy"
    np.save(path, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    with pytest.raises((ImageReadError, ValueError), match="object.npy"):
        read_image(path)


def test_a_keras_file_with_a_lambda_is_refused_by_safe_mode(tmp_path):
    """A .keras file whose config carries Python code (a Lambda layer) is not loaded (Keras' safe mode)."""
    import keras

    from msunet.models import load_model

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(tmp_path / "lambda.keras")
    with pytest.raises(Exception, match="(?i)safe|lambda"):
        load_model(tmp_path / "lambda.keras")
