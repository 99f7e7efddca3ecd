"""Export what ProductLens knows, in formats other tools read.

* :func:`export_labels`: one row per product with its current label and the
  active model's prediction (CSV or Parquet, by file extension). CSV cells are
  made safe for spreadsheets: a cell starting with ``= + - @``, tab or CR gets a
  leading ``'`` (so Excel or Sheets never runs it as a formula) and control
  characters are dropped; Parquet keeps the exact text;
* :func:`export_embeddings`: the cached vectors of one embedding key, as Parquet
  (``product_id``, ``filename``, ``label``, ``embedding``) or as ``.npy`` with a
  ``.ids.csv`` beside it;
* :func:`export_classifier`: backbone + head as one ``.keras`` file that maps raw
  RGB pixels (any size, values 0-255) to category probabilities, built from
  standard Keras layers and operations only (ProductLens's pooling layer is written
  out as operations), so ``keras.models.load_model`` reads it without ProductLens.
  It takes each photo with its crop views (:func:`classifier_inputs`) and
  reproduces the app's predictions;
* :func:`export_classifier_formats`: the same classifier as that ``.keras`` file, a
  TensorFlow SavedModel and a TFLite file (ONNX too where ``tf2onnx`` is installed
  and converts it); the SavedModel, TFLite and ONNX files load with TensorFlow,
  TFLite or ONNX Runtime alone, without ProductLens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from core.errors import InvalidInputError, NotFoundError
from core.model.training import embedder_for, load_version
from core.storage.atomic import atomic_path, atomic_write_bytes
from core.storage.catalog import Catalog, ModelVersion


def labels_table(catalog: Catalog):
    import pandas as pd

    labels = catalog.current_labels()
    active = catalog.active_model_version()
    predictions = catalog.predictions(active.id) if active else {}
    rows = []
    for product in catalog.products():
        prediction = predictions.get(product.id)
        rows.append({
            "product_id": product.id, "filename": product.filename, "sha256": product.sha256,
            "label": labels.get(product.id),
            "predicted_label": prediction["label"] if prediction else None,
            "confidence": prediction["confidence"] if prediction else None,
            "top_labels": json.dumps(prediction["labels"]) if prediction else None,
            "top_probabilities": json.dumps(prediction["probabilities"]) if prediction else None,
            "model_version": active.id if prediction else None,
        })
    return pd.DataFrame(rows, columns=["product_id", "filename", "sha256", "label", "predicted_label",
                                       "confidence", "top_labels", "top_probabilities", "model_version"])


def export_labels(catalog: Catalog, path: str | os.PathLike) -> Path:
    path = Path(path)
    table = labels_table(catalog)
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise InvalidInputError(f"labels export must end in .csv or .parquet, got {path.name}")
    with atomic_path(path) as temporary:
        if path.suffix.lower() == ".parquet":
            table.to_parquet(temporary, index=False)
        else:
            spreadsheet_safe(table).to_csv(temporary, index=False)
    return path


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 13)) | {127: None}


def spreadsheet_cell(value):
    """A text cell a spreadsheet shows as text: control characters dropped, formula starts quoted."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_STARTS):
        value = "'" + value
    return value.translate(_CONTROL).replace("\t", " ").replace("\r", " ")


def spreadsheet_safe(table):
    """``table`` with every text column passed through :func:`spreadsheet_cell` (OWASP CSV-injection advice)."""
    table = table.copy()
    for column in table.columns:
        if table[column].dtype == object or str(table[column].dtype).startswith("str"):
            table[column] = table[column].map(spreadsheet_cell)
    return table


def export_embeddings(catalog: Catalog, path: str | os.PathLike, embedding_key: str) -> Path:
    import pandas as pd

    path = Path(path)
    ids, vectors = catalog.embeddings(embedding_key)
    if len(ids) == 0:
        raise NotFoundError(f"no embeddings under '{embedding_key}': run `embed` first")
    products = {product.id: product for product in catalog.products(ids.tolist())}
    labels = catalog.current_labels()
    if path.suffix.lower() not in (".npy", ".parquet"):
        raise InvalidInputError(f"embeddings export must end in .parquet or .npy, got {path.name}")
    table = pd.DataFrame({"product_id": ids, "filename": [products[int(i)].filename for i in ids],
                          "label": [labels.get(int(i)) for i in ids]})
    if path.suffix.lower() == ".npy":
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, vectors.astype(np.float32))
        with atomic_path(path.with_suffix(".ids.csv")) as temporary:
            spreadsheet_safe(table).to_csv(temporary, index=False)
    else:
        table["embedding"] = list(vectors.astype(np.float32))
        with atomic_path(path) as temporary:
            table.to_parquet(temporary, index=False)
    return path


def classifier_inputs(embedder, sources) -> np.ndarray:
    """What the exported classifier takes: each photo and its crop views as ProductLens prepares them.

    ``sources``: ``(path or bytes, the photo's SHA-256 hex)`` pairs (the crops are seeded by
    the photo's content). Returns uint8 ``(n, 1 + views, size, size, 3)``.
    """
    return np.stack([embedder.load_photo_and_views(source) for source in sources])


def build_classifier(catalog: Catalog, version: ModelVersion | int | None = None, portable: bool = False):
    """Backbone + head as one Keras model that computes exactly what the app predicts.

    Input: :func:`classifier_inputs` — the photo and its crop views at the
    backbone's resolution. The model embeds the photo averaged with its mirror
    and each view, averages them as the app's prediction vector does, and applies
    the head: the app's stored predictions, from pixels. ``portable``: the
    antialiased resize that feeds Lite0 from the pair's resolution is written as
    two matrix products (:func:`portable_feature_model`), which TFLite can run.
    """
    import keras
    from keras import layers, ops

    version, head = load_version(catalog, version)
    embedder = embedder_for(version, catalog)
    views = embedder.views if version.prediction_key != version.embedding_key else 0
    size = embedder.image_size
    feature_model = standard_feature_model(embedder.model)
    if portable:
        feature_model = portable_feature_model(feature_model)
    inputs = keras.Input(shape=(1 + views, size, size, 3), name="photo_and_views")
    pixels = ops.cast(inputs, "float32")
    photo = pixels[:, 0]
    features = feature_model(photo, training=False)
    if embedder.flip_tta:
        mirrored = feature_model(ops.flip(photo, axis=2), training=False)
        features = layers.Average(name="flip_average")([features, mirrored])
    if views:
        # Views are already mirrored at random: the app embeds them without a second mirror.
        crops = ops.reshape(pixels[:, 1:], (-1, size, size, 3))
        crop_features = ops.reshape(feature_model(crops, training=False), (-1, views, embedder.feature_dim))
        features = (features + ops.sum(crop_features, axis=1)) / (1 + views)
    # Named, so the vector the head sees can be read back and compared with the app's stored one.
    features = layers.Identity(name="prediction_vector")(features)
    probabilities = head.model_(features)
    return keras.Model(inputs, probabilities, name="productlens_classifier"), version


def standard_feature_model(feature_model):
    """``feature_model`` (weights shared) with ProductLens's generalised-mean pooling layer written as Keras
    operations, so that a saved copy loads where ProductLens is not installed (no custom class to find)."""
    import keras
    from keras import ops

    from core.features.pooling import GeneralizedMeanPooling

    def call(layer, *args, **kwargs):
        if isinstance(layer, GeneralizedMeanPooling):
            powered = ops.power(ops.maximum(args[0], layer.epsilon), layer.power)
            return ops.power(ops.mean(powered, axis=[1, 2]), 1.0 / layer.power)
        return layer(*args, **kwargs)

    return keras.models.clone_model(feature_model, clone_function=lambda layer: layer, call_function=call,
                                    recursive=True)


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)``: TensorFlow's antialiased bilinear resize along one axis, as a matrix.

    That resize is linear and separable, so resizing an image is ``rows @ image @ columns.T``.
    """
    import tensorflow as tf

    basis = np.eye(size_in, dtype=np.float32).reshape(size_in, 1, size_in)
    return tf.image.resize(basis, (size_out, 1), method="bilinear", antialias=True).numpy()[:, 0, :]


def portable_feature_model(feature_model):
    """``feature_model`` with each antialiased ``Resizing`` layer replaced by the same resize as matrix
    products (equal to float rounding; TFLite has no kernel for the antialiased resize). Weights are shared."""
    import keras
    from keras import layers, ops

    class MatrixResize(layers.Layer):
        def __init__(self, rows: np.ndarray, columns: np.ndarray, **kwargs):
            super().__init__(**kwargs)
            self.rows, self.columns = rows.T.copy(), columns.T.copy()

        def call(self, pixels):  # (n, H, W, C): matmuls on the last axis, which TFLite runs as-is
            resized = ops.matmul(ops.transpose(pixels, (0, 2, 3, 1)), self.rows)     # (n, W, C, h)
            resized = ops.matmul(ops.transpose(resized, (0, 3, 2, 1)), self.columns)  # (n, h, C, w)
            return ops.transpose(resized, (0, 1, 3, 2))

    size = feature_model.input_shape[1]

    def replace(layer):
        if isinstance(layer, layers.Resizing):
            return MatrixResize(resize_matrix(size, layer.height), resize_matrix(size, layer.width),
                                name=f"{layer.name}_as_matrices")
        return layer

    if not any(isinstance(layer, layers.Resizing) for layer in feature_model.layers):
        return feature_model
    return keras.models.clone_model(feature_model, clone_function=replace)


def export_classifier(catalog: Catalog, path: str | os.PathLike, version: ModelVersion | int | None = None) -> Path:
    path = Path(path)
    if path.suffix != ".keras":
        raise InvalidInputError(f"classifier export must end in .keras, got {path.name}")
    return _save_keras(*build_classifier(catalog, version), path)


def _save_keras(model, version: ModelVersion, path: Path) -> Path:
    with atomic_path(path) as temporary:
        model.save(temporary)
    atomic_write_bytes(path.with_suffix(".classes.json"), json.dumps(
        {"classes": version.classes, "model_version": version.id,
         "input": "uint8 (n, 1 + views, size, size, 3): each photo and its crop views, as "
                  "core.jobs.export.classifier_inputs prepares them", "input_shape": list(model.input_shape[1:])},
        indent=2).encode())
    return path


CLASSIFIER_NAME = "productlens_classifier"


def export_classifier_formats(catalog: Catalog, folder: str | os.PathLike,
                              version: ModelVersion | int | None = None, onnx: bool = True) -> dict[str, Path | str]:
    """Write the classifier in every format into ``folder``: ``{format: path}``, or ``{format: reason}``
    for a format that could not be written (ONNX without tf2onnx, or a failed conversion)."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, version = build_classifier(catalog, version)
    written: dict[str, Path | str] = {"keras": _save_keras(model, version, folder / f"{CLASSIFIER_NAME}.keras")}
    # The SavedModel (and the TFLite file made from it) resize with matrix products: same numbers, TFLite-able.
    portable, _ = build_classifier(catalog, version, portable=True)
    saved_model = folder / f"{CLASSIFIER_NAME}_savedmodel"
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        staged = Path(scratch) / "savedmodel"
        # One serving signature: float32 (n, 1 + views, size, size, 3) pixels 0-255 -> probabilities.
        portable.export(str(staged), format="tf_saved_model", verbose=False)
        if saved_model.exists():
            shutil.rmtree(saved_model)
        staged.rename(saved_model)
    written["savedmodel"] = saved_model
    written["tflite"] = _export_tflite(saved_model, folder / f"{CLASSIFIER_NAME}.tflite")
    if onnx:
        written["onnx"] = _export_onnx(saved_model, folder / f"{CLASSIFIER_NAME}.onnx")
    embedder = embedder_for(version, catalog)
    if embedder.precision == "int8":
        written["onnx_int8"] = export_int8_classifier(catalog, folder / f"{CLASSIFIER_NAME}.int8.onnx", version)
    return written


def export_int8_classifier(catalog: Catalog, path: str | os.PathLike,
                           version: ModelVersion | int | None = None) -> Path:
    """The app's own 8-bit backbone graph with the crop averaging and the head around it, as one ONNX file.

    For a version trained on int8 features (the default on a CPU) this reproduces the stored
    predictions; the float formats compute the float32 network it was quantized from, which
    agrees up to the rounding. Input: uint8 :func:`classifier_inputs`; output: probabilities.
    """
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    from core.features.quantized import quantized_graph

    version, head = load_version(catalog, version)
    embedder = embedder_for(version, catalog)
    if embedder.precision != "int8":
        raise InvalidInputError(f"model version {version.id} was trained on {embedder.precision} features, "
                                "not int8: its exported float formats reproduce it")
    views = embedder.views if version.prediction_key != version.embedding_key else 0
    size, dim = embedder.image_size, embedder.feature_dim
    backbone = onnx.load(str(quantized_graph(embedder.backbone, embedder.weights, size, embedder.pooling)))
    opsets = [helper.make_opsetid(entry.domain, entry.version) for entry in backbone.opset_import]
    # Each photo's passes side by side (photo, its mirror, its crops) so one reshape regroups the features.
    passes = ["photo"] + (["mirror"] if embedder.flip_tta else []) + (["crops"] if views else [])
    count = (2 if embedder.flip_tta else 1) + views
    weights = np.full((1, count, 1), 1.0 / (1 + views), np.float32)
    if embedder.flip_tta:
        weights[0, :2] /= 2  # the photo's vector is its and its mirror's average
    big = np.iinfo(np.int64).max

    def constant(name, value):
        return numpy_helper.from_array(np.asarray(value, np.int64 if name != "weights" else np.float32), name)

    nodes = [helper.make_node("Slice", ["photo_and_views", "zero", "one", "axis1"], ["photo"])]
    if embedder.flip_tta:
        nodes.append(helper.make_node("Slice", ["photo", "minus_one", "smallest", "axis3", "minus_one"], ["mirror"]))
    if views:
        nodes.append(helper.make_node("Slice", ["photo_and_views", "one", "largest", "axis1"], ["crops"]))
    nodes += [helper.make_node("Concat", passes, ["passes"], axis=1),
              helper.make_node("Reshape", ["passes", "image_shape"], ["images"])]
    before = helper.make_graph(
        nodes, "before", [helper.make_tensor_value_info("photo_and_views", TensorProto.UINT8,
                                                        ["photos", 1 + views, size, size, 3])],
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["passes", size, size, 3])],
        [constant("zero", [0]), constant("one", [1]), constant("minus_one", [-1]), constant("axis1", [1]),
         constant("axis3", [3]), constant("smallest", [-big - 1]), constant("largest", [big]),
         constant("image_shape", [-1, size, size, 3])])
    # The head, written as ONNX operations (Keras's Normalization, the dense layers, softmax).
    import keras

    standardize = head.model_.get_layer("standardize")
    mean, variance = (np.asarray(keras.ops.convert_to_numpy(value), np.float32).reshape(-1)
                      for value in (standardize.mean, standardize.variance))
    scale = np.maximum(np.sqrt(variance), np.float32(keras.backend.epsilon())).astype(np.float32)
    after_nodes = [helper.make_node("Reshape", ["features", "grouped_shape"], ["grouped"]),
                   helper.make_node("Mul", ["grouped", "weights"], ["weighted"]),
                   helper.make_node("ReduceSum", ["weighted", "axis1"], ["prediction_vector"], keepdims=0),
                   helper.make_node("Sub", ["prediction_vector", "mean"], ["centred"]),
                   helper.make_node("Div", ["centred", "scale"], ["standardized"])]
    tensors = [constant("grouped_shape", [-1, count, dim]), constant("weights", weights), constant("axis1", [1]),
               numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(scale, "scale")]
    hidden = "standardized"
    dense_layers = [layer for layer in head.model_.layers if isinstance(layer, keras.layers.Dense)]
    for layer in dense_layers:
        kernel, bias = (np.asarray(value, np.float32) for value in layer.get_weights())
        tensors += [numpy_helper.from_array(kernel, f"{layer.name}_kernel"),
                    numpy_helper.from_array(bias, f"{layer.name}_bias")]
        after_nodes += [helper.make_node("MatMul", [hidden, f"{layer.name}_kernel"], [f"{layer.name}_product"]),
                        helper.make_node("Add", [f"{layer.name}_product", f"{layer.name}_bias"], [f"{layer.name}_out"])]
        hidden = f"{layer.name}_out"
        if layer is not dense_layers[-1]:
            after_nodes.append(helper.make_node("Relu", [hidden], [f"{layer.name}_relu"]))
            hidden = f"{layer.name}_relu"
    after_nodes.append(helper.make_node("Softmax", [hidden], ["probabilities"], axis=-1))
    after = helper.make_graph(
        after_nodes, "after", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["passes", dim])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["photos", len(version.classes)])],
        tensors)
    glue = [helper.make_model(graph, opset_imports=opsets, ir_version=backbone.ir_version) for graph in (before, after)]
    model = compose.merge_models(glue[0], backbone, io_map=[("images", backbone.graph.input[0].name)],
                                 prefix2="backbone/")
    model = compose.merge_models(model, glue[1], io_map=[("backbone/features", "features")], prefix2="after/")
    model.graph.node.append(helper.make_node("Identity", ["after/probabilities"], ["probabilities"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                            ["photos", len(version.classes)]))
    onnx.checker.check_model(model)
    path = Path(path)
    atomic_write_bytes(path, model.SerializeToString())
    return path


def _export_tflite(saved_model: Path, path: Path) -> Path | str:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises its own error types; the rest goes on
        reason = "an operation has no TFLite kernel" if "neither a custom op nor a flex op" in str(error) \
            else type(error).__name__
        return f"failed: TFLite conversion ({reason})"
    atomic_write_bytes(path, flatbuffer)
    return path


def _export_onnx(saved_model: Path, path: Path) -> Path | str:
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        return "skipped: tf2onnx is not installed (pip install -r requirements.txt)"
    import subprocess
    import sys

    staged = path.with_name(path.name + ".partial")
    completed = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
                                "--output", str(staged), "--opset", "17"], capture_output=True, text=True)
    if completed.returncode != 0 or not staged.exists():
        staged.unlink(missing_ok=True)
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"failed: tf2onnx could not convert the model ({tail[0][:200]})"
    os.replace(staged, path)
    return path
