import json
import subprocess
import sys

import pytest

from msunet import __version__
from msunet.cli import main
from msunet.config import ModelConfig
from helpers import ROOT


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"msunet {__version__}"


def test_summary_prints_parameters_and_each_output_shape(capsys, tmp_path):
    saved = tmp_path / "cfg.json"
    code = main(["summary", "--set", "depth=3", "--set", "filters=4", "--size", "37x101", "--save-config", str(saved)])
    out = capsys.readouterr().out
    assert code == 0
    assert "Parameters:" in out and "enc0_conv1" in out and "CropToMatch" in out
    assert "mask_s4      (1, 10, 26, 1)" in out and "mask         (1, 37, 101, 1)" in out
    assert ModelConfig.from_json(saved) == ModelConfig(depth=3, filters=4)  # the size is not baked in


def test_summary_of_an_example_config(capsys):
    assert main(["summary", "--config", str(ROOT / "examples" / "seed1.json"), "--size", "256"]) == 0
    assert "mask         (1, 256, 256, 1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "--set", "depth=0"], "ModelConfig.depth=0 is out of range; valid: 1..7."),
        (["summary", "--set", "upsample=bilinar"], "Did you mean 'bilinear'?"),
        (["summary", "--set", "depth"], "key=value"),
        (["summary", "--size", "12xq"], "not of the form HxW"),
        (["summary", "--config", "/nonexistent/cfg.json"], "Cannot read config file '/nonexistent/cfg.json'"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_entry_point_runs_quietly():
    result = subprocess.run(
        [sys.executable, "-m", "msunet", "summary", "--set", "depth=1", "--set", "filters=2", "--size", "8"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "mask         (1, 8, 8, 1)" in result.stdout
    assert result.stderr.strip() == ""  # TensorFlow's start-up lines are held back


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "summary" in capsys.readouterr().out


def test_summary_json_config_roundtrip_through_cli(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"depth": 2, "filters": 2, "fused_head": True}))
    assert main(["summary", "--config", str(path), "--size", "9x7"]) == 0
    assert "mask_fused   (1, 9, 7, 1)" in capsys.readouterr().out


def test_check_command_exit_codes(tmp_path, capsys):
    from msunet.data.synthetic import make_dataset

    make_dataset(tmp_path / "d", count=3, size=(32, 32))
    assert main(["check", str(tmp_path / "d")]) == 0
    (tmp_path / "d" / "images" / "extra.png").write_bytes(b"junk")
    assert main(["check", str(tmp_path / "d")]) == 0
    assert main(["check", str(tmp_path / "d"), "--strict"]) == 1
    assert main(["check", str(tmp_path / "d"), "--set", "model.in_channels=4"]) == 1
    assert main(["check", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_train_command_and_refusals(tmp_path, capsys):
    from msunet.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "d", count=6, size=(40, 40))
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--verbose", "0",
            "--set", "model.depth=2", "--set", "model.filters=2", "--set", "data.patch_size=32",
            "--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "batch_size=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained 1 epochs" in out
    import importlib.util

    if all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "tf2onnx")):  # msunet[export] installed
        assert f"int8 bundle for msunet predict: {tmp_path / 'run' / 'bundle-int8'}" in out
        assert (tmp_path / "run" / "bundle-int8" / "bundle.json").is_file()  # predict's default engine, ready
    else:
        assert "no int8 bundle" in out and "will use Keras" in out
    assert main(args) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run"), "--data", str(data)]) == 2
    assert main(["train", "--data", str(data)]) == 2
    assert "--out RUN" in capsys.readouterr().err
