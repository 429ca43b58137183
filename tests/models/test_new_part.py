"""Adding a part is one file: a new encoder, written here as a user would, is registered by importing
it, validated by configs with its own options, and covered by the harness with no test code."""

import pathlib
import subprocess
import sys
import textwrap

PART = '''
"""A dilated-conv encoder: conv blocks whose second convolution is dilated (a wider view per level)."""

import dataclasses

from msunet.config import PartOptions, check_int
from msunet.models.encoders import register_encoder


@dataclasses.dataclass(frozen=True)
class DilatedOptions(PartOptions):
    dilation: int = 2
    shared_stem: bool = False

    def validate(self):
        check_int(type(self).__name__, "dilation", self.dilation, 1, 8)


@register_encoder("dilated", options=DilatedOptions, max_depth=5)
def build_dilated_encoder(inputs, cfg):
    from keras import layers

    from msunet.models.blocks import apply_conv_block, apply_down, conv_settings

    options, filters, settings = cfg.encoder_options, cfg.level_filters, conv_settings(cfg)
    x, pyramid = inputs, {}
    if options.shared_stem:
        x = layers.Conv2D(filters[0], 3, padding="same", name="stem")(x)
    for level in range(cfg.depth + 1):
        if level:
            x = apply_down(x, cfg.downsample, cfg.norm, cfg.groups, cfg.activation, name=f"enc{level}_down")
        x = apply_conv_block(x, filters[level], **settings, name=f"enc{level}")
        x = layers.Conv2D(filters[level], 3, padding="same", dilation_rate=options.dilation,
                          name=f"enc{level}_dilated")(x)
        pyramid[2**level] = x
    return pyramid
'''

CHECK = '''
import sys
sys.path[:0] = sys.argv[1:]
import dilated_part  # the one registration line
from harness import architectures, check_fit_lowers_loss, check_output_sizes, check_tiled_prediction, combo_id, small_config
from msunet.config import ConfigError, RunConfig

ours = [c for c in architectures() if c["encoder"] == "dilated"]
print("combos", " ".join(combo_id(c) for c in ours))
for combo in ours:
    cfg = small_config(combo)
    model = check_output_sizes(cfg)          # 1x1, 37x101, 255x257: every head at its exact size
    check_tiled_prediction(model, cfg)
check_fit_lowers_loss(small_config(ours[0], depth=2), steps=10)
run = RunConfig().override(["model.encoder=dilated", "model.encoder_options.dilation=3", "model.shared_stem=true"])
assert RunConfig.from_json(run.to_json()).model == run.model
assert run.to_dict()["model"]["encoder_options"] == {"dilation": 3, "shared_stem": True}
try:
    RunConfig().override(["model.encoder=dilated", "model.encoder_options.dilation=0"])
except ConfigError as err:
    print("error", err)
'''


def test_a_new_encoder_is_one_file_and_the_harness_covers_it(tmp_path):
    (tmp_path / "dilated_part.py").write_text(textwrap.dedent(PART))
    here = pathlib.Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path), str(here), str(here.parent)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    # every decoder, the decoders' flags, and the new part's own flag: found by the harness, not listed here
    assert set(lines["combos"].split()) == {"dilated-unet", "dilated-unet-attention", "dilated-unet3p",
                                            "dilated-unetpp", "dilated-unet-shared_stem"}
    assert "dilation" in lines["error"] and "0" in lines["error"]
