"""Volume models exported: the ONNX bundle (float32 and int8) runs 3-D tiling without TensorFlow and
gives Keras' probabilities at every scale; `msunet predict` writes NIfTI masks from it."""

import os
import pathlib
import subprocess
import sys

import nibabel
import numpy as np
import pytest

pytest.importorskip("tf2onnx", reason="ONNX export needs tf2onnx (pip install 'msunet[export]'; `make venv` has it)")
pytest.importorskip("onnxruntime", reason="the runtime needs onnxruntime (pip install 'msunet[runtime]')")

from helpers import BLOCK_HEAVY_IMPORTS  # noqa: E402
from msunet.data.volumes import Volume, scaled_affine, write_volume  # noqa: E402
from msunet.exporting.bundle import export  # noqa: E402
from msunet.inference.keras_engine import make_predict_fn, run_engine  # noqa: E402
from msunet.runtime import Predictor, read_bundle  # noqa: E402
from msunet.runtime.volumes import predict_volume  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 3-class 3-D U-Net trained a few steps on 3 mm slices: it pools in-plane first, so its heads
    are (1, 1, 1), (1, 2, 2) and (2, 4, 4); its float32 and int8 (calibrated on the run's patches) bundles."""
    import msunet
    from msunet.data.synthetic import make_volume_dataset
    from msunet.training.run_folder import load_run

    folder = tmp_path_factory.mktemp("volume-bundles")
    data = make_volume_dataset(folder / "data", count=6, shape=(12, 20, 18), spacing=(3.0, 1.0, 1.0))
    msunet.train(None, data, folder / "run", verbose=0, overrides=[
        "model.dims=3", "model.filters=4", "model.depth=3", "model.inplane_levels=1", "data.patch_size=16", "train.batch_size=2",
        "train.steps_per_epoch=4", "train.epochs=1", "train.val_batches=1"])
    return load_run(folder / "run"), export(folder / "run", folder / "float32"), export(folder / "run", folder / "int8",
                                                                                       int8=True)


def test_a_volume_bundle_gives_keras_probabilities_at_every_scale(exported):
    run, bundle, _ = exported
    meta = read_bundle(bundle)
    assert meta["input"]["dims"] == 3 and meta["input"]["layout"] == "NDHWC" and meta["tiling"]["tile"] == 16
    assert run.config.model.inplane_levels == 1
    assert {h["name"]: h["factors"] for h in meta["heads"]} == {"mask": [1, 1, 1], "mask_s2": [1, 2, 2],
                                                                 "mask_s4": [2, 4, 4]}
    volume = np.random.default_rng(1).normal(300, 60, (13, 37, 21)).astype(np.float32)  # odd, more than one window
    heads = run.model.output_names
    keras_probs = predict_volume(run_engine(run), make_predict_fn(run.model, heads, 2), volume[..., None], heads, 16)
    probs = Predictor(bundle, engine="onnxruntime").predict(volume, heads=heads, tile_size=16, overlap=0.5,
                                                          batch_size=2, tta=False)  # Keras' side: no TTA
    for head, factor in (("mask", (1, 1, 1)), ("mask_s2", (1, 2, 2)), ("mask_s4", (2, 4, 4))):
        want = tuple(-(-n // f) for n, f in zip(volume.shape, factor))
        assert probs[head].shape == (*want, 3), head
        # The same float32 network on two engines: kernels may sum in another order, so not bit for bit;
        # 1e-4 on probabilities is what the 2-D bundle parity holds too.
        np.testing.assert_allclose(probs[head], keras_probs[head], atol=1e-4, rtol=0)


def test_an_int8_volume_bundle_stays_within_its_guard(exported):
    run, float_bundle, bundle = exported
    meta = read_bundle(bundle)
    assert meta["precision"] == "int8" and meta["quantization"]["patch"] == [16, 16, 16]
    from msunet.data.volumes import read_volume
    from msunet.runtime import selfcheck

    volume = read_volume(run.run_dir.parent / "data" / "images" / "vol_005.nii.gz").array
    want = Predictor(float_bundle, engine="onnxruntime").predict(volume)["mask"]
    int8 = Predictor(bundle, check=False)  # its int8 graph, whatever the self-check would say
    assert int8.graph == "int8"
    got = int8.predict(volume)["mask"]
    # int8 moves probabilities by a few quantization steps (uint8 activations over their calibrated
    # range): measured 0.018 here on a model trained 4 steps, whose classes are near ties (the worst
    # case); 0.05 bounds it on any CPU (7-bit weights saturate nowhere). Whether int8 runs is the
    # self-check's call, on the machine where the bundle is loaded:
    assert np.abs(got - want).mean() < 0.05
    checked = Predictor(bundle)  # int8 where it is within the guard here, else the bundle's float32 graph
    assert checked.graph in ("int8", "float32") and checked.check["faithful"]
    assert checked.check["mean_abs_difference"] <= selfcheck.MAX_MEAN_CHANGE


NO_TENSORFLOW = BLOCK_HEAVY_IMPORTS + r"""
import numpy as np
from msunet.runtime import Predictor
from msunet.cli import main
bundle, inputs, out = sys.argv[1:4]
probs = Predictor(bundle).predict(np.zeros((9, 21, 19), np.float32), tta=True)
assert probs["mask_s4"].shape == (5, 6, 5, 3), probs["mask_s4"].shape
assert main(["predict", "--model", bundle, "--input", inputs, "--out", out, "--quiet", "--probabilities"]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not heavy, heavy
print("ok")
"""


def test_the_runtime_predicts_nifti_volumes_without_tensorflow(exported, tmp_path):
    _, bundle, _ = exported
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 30.0)
    array = np.random.default_rng(3).normal(100, 20, (11, 26, 23)).astype(np.float32)  # (z, y, x)
    (tmp_path / "in").mkdir()
    write_volume(tmp_path / "in" / "scan.nii.gz", array, like=Volume(array[..., None], (2.5, 0.8, 0.8), affine))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(bundle), str(tmp_path / "in"),
                             str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
    mask, coarse = (nibabel.load(str(tmp_path / "o" / name)) for name in ("scan.nii.gz", "scan_s4.nii.gz"))
    assert mask.shape == (23, 26, 11) and coarse.shape == (6, 7, 6)  # NIfTI (x, y, z): ceil(23/4), ceil(26/4), ceil(11/2)
    np.testing.assert_allclose(mask.affine, affine)
    np.testing.assert_allclose(coarse.affine, scaled_affine(affine, (2, 4, 4)))
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    assert nibabel.load(str(tmp_path / "o" / "scan_prob.nii.gz")).shape == (23, 26, 11, 3)
