"""Multi-level pooled features: what the backbone sees at three depths, in one vector.

A backbone's usual feature is the average of its last feature map (``avg``
pooling). For telling similar products apart, two more things help (README,
accuracy ablation, ``benchmarks/ablation.py``): the *generalised mean* of the
last map, ``(mean_{h,w} max(x, eps)^p)^(1/p)`` with ``p = 3``, which sits
between average and max pooling and lets a small, distinctive region (a logo, a
label) count; and the averages of the two last blocks' outputs, closer to colour
and texture than the last map, which was built for ImageNet's classes. ``multi``
pooling concatenates the three, each L2-normalised and the whole scaled to unit
length, so cosine similarity is the mean of the three parts' cosines.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="productlens")
class GeneralizedMeanPooling(layers.Layer):
    """Global generalised-mean pooling of a ``(batch, h, w, channels)`` map (GeM, Radenović et al.)."""

    def __init__(self, power: float = 3.0, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if power <= 0:
            raise ValueError(f"power must be positive, got {power}")
        self.power = float(power)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        powered = ops.power(ops.maximum(inputs, self.epsilon), self.power)
        return ops.power(ops.mean(powered, axis=[1, 2]), 1.0 / self.power)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "power": self.power, "epsilon": self.epsilon}


def _block_output(model, block: int):
    names = {layer.name for layer in model.layers}
    name = f"block{block}_add" if f"block{block}_add" in names else f"block{block}_project_conv"
    if name not in names:  # the unfolded graph names the block's last layer after its BatchNormalization
        name = f"block{block}_project_bn"
    return model.get_layer(name).output


def multi_level_model(classifier, name: str):
    """Feature model with ``multi`` pooling on an EfficientNet-Lite ``classifier`` (see the module docstring)."""
    blocks = sorted({int(layer.name.split("_")[0][len("block"):]) for layer in classifier.layers
                     if layer.name.startswith("block")})
    if len(blocks) < 2:
        raise ValueError(f"{name} has no blocks to pool")
    parts = [
        GeneralizedMeanPooling(3.0, name="gem_pool")(classifier.get_layer("top_activation").output),
        layers.GlobalAveragePooling2D(name="last_block_pool")(_block_output(classifier, blocks[-1])),
        layers.GlobalAveragePooling2D(name="previous_block_pool")(_block_output(classifier, blocks[-2])),
    ]
    parts = [layers.UnitNormalization(name=f"{part_name}_unit")(part)
             for part_name, part in zip(("gem_pool", "last_block_pool", "previous_block_pool"), parts)]
    features = layers.Concatenate(name="multi_level")(parts)
    features = layers.Rescaling(1.0 / math.sqrt(len(parts)), name="multi_level_scale")(features)
    return keras.Model(classifier.input, features, name=name)


def combine(parts, pooling: str):
    """Concatenate member backbones' features; ``multi`` parts are unit vectors, so the sum stays unit length."""
    features = layers.Concatenate(name="members")(parts)
    if pooling == "multi":
        features = layers.Rescaling(1.0 / math.sqrt(len(parts)), name="members_scale")(features)
    return features
