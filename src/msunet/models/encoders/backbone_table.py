"""The `keras.applications` backbones msunet offers: constructor, family (feature layers, input
scaling) and ImageNet weights file of each. Plain data, no keras: the part file
(`applications.py`) registers them from it and the builder (`backbones.py`) builds them from it."""

from __future__ import annotations

import dataclasses

KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Family:
    features: str  # regex over layer names; the last match at each stride is the feature
    scaling: str  # "tf": x * 2 - 1; "imagenet": (x - mean) / std  (x on the [0, 1] scale)
    has_preprocessing_flag: bool  # the constructor takes include_preprocessing (turned off: ours is in the graph)


FAMILIES = {
    "resnet_v2": Family(r"^(conv1_conv|conv\d_block\d+_1_relu|post_relu)$", "tf", False),
    "efficientnet_v2": Family(r"^(stem_activation|block\d+[a-z]_(add|project_bn|project_activation)|top_activation)$",
                              "imagenet", True),
    "convnext": Family(r"_stage_\d+_block_\d+_identity$", "imagenet", True),
    "mobilenet_v3": Family(r"^(expanded_conv(_\d+)?_(add|project_bn)|conv_1_bn)$", "tf", True),
}


@dataclasses.dataclass(frozen=True)
class Backbone:
    constructor: str  # attribute of keras.applications
    family: str
    weights_file: str  # Keras' ImageNet "no top" file, relative to KERAS_WEIGHTS

    @property
    def url(self) -> str:
        return KERAS_WEIGHTS + self.weights_file


def _efficientnet(size: str) -> Backbone:
    return Backbone(f"EfficientNetV2{size.upper()}", "efficientnet_v2",
                    f"efficientnet_v2/efficientnetv2-{size}_notop.h5")


BACKBONE_SPECS = {
    "resnet50v2": Backbone("ResNet50V2", "resnet_v2", "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet101v2": Backbone("ResNet101V2", "resnet_v2", "resnet/resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet152v2": Backbone("ResNet152V2", "resnet_v2", "resnet/resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    **{f"efficientnetv2{size}": _efficientnet(size) for size in ("b0", "b1", "b2", "b3", "s", "m", "l")},
    "convnext_tiny": Backbone("ConvNeXtTiny", "convnext", "convnext/convnext_tiny_notop.h5"),
    "convnext_small": Backbone("ConvNeXtSmall", "convnext", "convnext/convnext_small_notop.h5"),
    "convnext_base": Backbone("ConvNeXtBase", "convnext", "convnext/convnext_base_notop.h5"),
    "mobilenetv3large": Backbone("MobileNetV3Large", "mobilenet_v3",
                                 "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    "mobilenetv3small": Backbone("MobileNetV3Small", "mobilenet_v3",
                                 "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
}
