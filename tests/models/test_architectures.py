"""Every registered encoder x decoder through the same harness (tests/models/harness.py)."""

import json
import subprocess
import sys

import pytest

from harness import (
    architectures,
    check_fit_lowers_loss,
    check_gradients,
    check_mixed_precision,
    check_output_sizes,
    check_save_reload,
    check_tiled_prediction,
    combo_id,
    small_config,
)

COMBOS = architectures()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Models saved by test_contract, reloaded by the fresh-process test (built there if run alone)."""
    return tmp_path_factory.mktemp("saved")


def test_configs_validate_every_part_and_its_options_without_keras():
    """The parts' files declare names and options without importing keras, so a config (and the CLI
    that parses it) validates against every registered part for the price of its own import."""
    code = (
        "import sys, dataclasses\n"
        "from msunet.config import DECODERS, ENCODERS, ModelConfig\n"
        "for e in ENCODERS.names():\n"
        "    for d in DECODERS.names():\n"
        "        opts = lambda p: {f.name: f.default for f in dataclasses.fields(p.options)}\n"
        "        c = ModelConfig(encoder=e, decoder=d, depth=3, encoder_options=opts(ENCODERS[e]),\n"
        "                        decoder_options=opts(DECODERS[d]))\n"
        "        assert ModelConfig.from_dict(c.to_dict()) == c\n"
        "print(len(ENCODERS), len(DECODERS), 'keras' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) >= 3 and int(out[1]) >= 3 and out[2:] == ["False", "False"]


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_contract(combo, saved):
    cfg = small_config(combo)
    model = check_output_sizes(cfg)
    check_save_reload(model, saved)
    check_tiled_prediction(model, cfg)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_training(combo):
    cfg = small_config(combo, depth=2)  # heads at 1, 2 and fused: every kind of path, fewer eager ops
    check_gradients(cfg)
    check_fit_lowers_loss(cfg)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_mixed_bfloat16(combo):
    check_mixed_precision(small_config(combo))


def test_reload_in_a_fresh_process_without_custom_objects(saved):
    """A process that only imports msunet (which registers its layers) reloads every architecture."""
    files = sorted(str(p) for p in saved.glob("*.keras"))
    if len(files) < len(COMBOS):  # run alone: test_contract did not save them
        files = [str(check_save_reload(check_output_sizes(small_config(c)), saved)) for c in COMBOS]
    script = (
        "import json, sys, numpy as np, keras, msunet\n"
        "for path in json.loads(sys.argv[1]):\n"
        "    model = keras.saving.load_model(path)\n"
        "    x = np.load(path[:-6] + '.x.npy'); want = np.load(path[:-6] + '.y.npz')\n"
        "    out = model(x, training=False)\n"
        # another process on this machine: equal up to float32 rounding (oneDNN may split work otherwise)
        "    for k in want.files: np.testing.assert_allclose(keras.ops.convert_to_numpy(out[k]), want[k], rtol=1e-5,"
        " atol=1e-6)\n"
        "print('reloaded', len(json.loads(sys.argv[1])))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, json.dumps(files)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"reloaded {len(COMBOS)}" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("combo", architectures(slow=True), ids=combo_id)
def test_every_other_backbone(combo, tmp_path):
    """The backbone sizes `make test` leaves out (same family code as the ones it runs): `make test-slow`."""
    cfg = small_config(combo)
    model = check_output_sizes(cfg)
    check_save_reload(model, tmp_path)
    check_tiled_prediction(model, cfg)
    check_gradients(small_config(combo, depth=2))
    check_fit_lowers_loss(small_config(combo, depth=2))
    check_mixed_precision(cfg)
