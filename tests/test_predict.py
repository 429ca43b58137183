import numpy as np

from helpers import tiny_config
from msunet.data import Normalization
from msunet.models import build_model
from msunet.predict import overlay, predict_probabilities, probabilities_to_mask, write_prediction


def test_probabilities_masks_and_files(tmp_path):
    model = build_model(tiny_config(depth=2, num_classes=3))
    image = (np.random.default_rng(0).random((21, 17, 3)) * 255).astype(np.uint8)
    probs = predict_probabilities(model, image, Normalization("image"))
    assert probs["mask"].shape == (21, 17, 3) and probs["mask_s2"].shape == (11, 9, 3)
    mask = probabilities_to_mask(probs["mask"])
    assert mask.dtype == np.uint8 and mask.max() <= 2
    assert probabilities_to_mask(np.array([[[0.2], [0.7]]], np.float32)).tolist() == [[0, 255]]
    picture = overlay(image, mask, 3)
    assert picture.shape == (21, 17, 3) and picture.dtype == np.uint8
    written = write_prediction(tmp_path, "img", image, probs, 3)
    assert {p.name for p in written} == {"img.png", "img_overlay.png", "img_s2.png"}
