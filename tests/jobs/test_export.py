import json

import numpy as np
import pandas as pd
import pytest

from core.errors import InvalidInputError, NotFoundError
from core.features.embeddings import embed_catalog
from core.jobs import export
from core.model.head import HeadClassifier
from core.model.prediction import predict_catalog
from core.model.training import train_version
from core.storage import ingest
from core.storage.catalog import Catalog


def _trained_catalog(folder, demo_dir, embedder):
    # All 10 demo categories, look-alikes included (two milks, apples): confidences below 100%,
    # so a classifier that skips the crop views cannot match the stored predictions by chance.
    catalog = Catalog(folder)
    ingest.import_paths(catalog, [demo_dir])
    embed_catalog(catalog, embedder)
    predict_catalog(catalog, train_version(catalog, embedder, HeadClassifier()))
    return catalog


@pytest.fixture(scope="module")
def float_embedder(embedder):
    """The suite's network in float32: the arithmetic of the Keras, SavedModel, TFLite and ONNX exports. With
    the mirror pass (``PRODUCTLENS_MIRROR=1``), so the exports' mirror branch is checked too."""
    from core.features.embeddings import Embedder

    return Embedder(backbone=embedder.backbone, precision="float32", flip_tta=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, demo_dir, float_embedder):
    return _trained_catalog(tmp_path_factory.mktemp("export"), demo_dir, float_embedder)


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def int8_catalog(request, tmp_path_factory, demo_dir, embedder):
    """The demo catalogue embedded in int8 by each runtime (the export is one ONNX file either way)."""
    from core.features.embeddings import Embedder

    assert embedder.precision == "int8", "the suite runs on a CPU, where int8 is the default"
    if request.param == "openvino":  # installed with requirements.txt on Linux x86-64 only
        pytest.importorskip("openvino", reason="OpenVINO is installed on Linux x86-64 only")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRODUCTLENS_INT8_RUNTIME", request.param)
        return _trained_catalog(tmp_path_factory.mktemp(f"export-int8-{request.param}"), demo_dir,
                                Embedder(backbone=embedder.backbone, views=embedder.views, precision="int8"))


@pytest.fixture(scope="module")
def default_pair(tmp_path_factory, demo_dir):
    """The default backbone (Lite0 + Lite2, whose Lite0 member is fed by an antialiased resize) on the demo."""
    from core.features.embeddings import Embedder

    embedder = Embedder(backbone="efficientnet_lite0_lite2", precision="float32")
    catalog = Catalog(tmp_path_factory.mktemp("export-default"))
    ingest.import_paths(catalog, [demo_dir])
    embed_catalog(catalog, embedder)
    predict_catalog(catalog, train_version(catalog, embedder, HeadClassifier()))
    return catalog, embedder


def test_the_portable_resize_equals_the_antialiased_one(default_pair):
    embedder = default_pair[1]
    model = embedder.model
    portable = export.portable_feature_model(model)
    assert portable is not model and "efficientnet_lite0_resize_as_matrices" in [layer.name for layer in
                                                                                 portable.layers]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, embedder.image_size, embedder.image_size, 3))
    np.testing.assert_allclose(portable(pixels.astype("float32")), model(pixels.astype("float32")), atol=1e-5)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_labels_and_predictions_export(catalog, tmp_path, suffix):
    path = export.export_labels(catalog, tmp_path / f"labels.{suffix}")
    table = pd.read_csv(path) if suffix == "csv" else pd.read_parquet(path)
    stored = catalog.predictions(catalog.active_model_version().id)
    assert sorted(table["product_id"]) == catalog.product_ids()
    for row in table.itertuples():
        assert row.label == catalog.current_label(row.product_id)
        assert row.predicted_label == stored[row.product_id]["label"]
        assert json.loads(row.top_labels) == stored[row.product_id]["labels"]
    with pytest.raises(InvalidInputError, match="csv or .parquet"):
        export.export_labels(catalog, tmp_path / "labels.xlsx")


def test_embeddings_export(catalog, tmp_path, float_embedder):
    embedder = float_embedder
    table = pd.read_parquet(export.export_embeddings(catalog, tmp_path / "emb.parquet", embedder.key))
    ids, stored = catalog.embeddings(embedder.key)
    assert table["product_id"].tolist() == ids.tolist()
    np.testing.assert_array_equal(np.stack(table["embedding"].to_numpy()), stored)
    vectors = np.load(export.export_embeddings(catalog, tmp_path / "emb.npy", embedder.key))
    assert pd.read_csv(tmp_path / "emb.ids.csv")["product_id"].tolist() == ids.tolist()
    np.testing.assert_array_equal(vectors, stored)
    with pytest.raises(NotFoundError, match="embed"):
        export.export_embeddings(catalog, tmp_path / "x.npy", "no-such-key")


def test_exported_classifier_reproduces_the_stored_predictions(catalog, tmp_path, float_embedder):
    embedder = float_embedder
    import keras

    path = export.export_classifier(catalog, tmp_path / "classifier.keras")
    model = keras.models.load_model(path)
    sidecar = json.loads(path.with_suffix(".classes.json").read_text())
    version = catalog.active_model_version()
    assert sidecar["classes"] == version.classes and version.prediction_key != version.embedding_key
    products = catalog.products()[::2]
    inputs = export.classifier_inputs(embedder, [(catalog.image_path(p), p.sha256) for p in products])
    assert inputs.shape[1] == 1 + embedder.views
    exported = model.predict(inputs, verbose=0)
    stored = catalog.predictions(version.id)
    for product, probabilities in zip(products, exported):
        assert version.classes[int(np.argmax(probabilities))] == stored[product.id]["label"]
        app = stored[product.id]
        np.testing.assert_allclose([probabilities[version.classes.index(name)] for name in app["labels"]],
                                   app["probabilities"], atol=2e-3)
    # Demo predictions are near-certain, so probabilities alone cannot tell views from no views: the
    # vector the exported head sees must be the app's stored prediction vector (photo + crop views).
    vectors = keras.Model(model.input, model.get_layer("prediction_vector").output).predict(inputs, verbose=0)
    ids = [p.id for p in products]
    _, app_vectors = catalog.embeddings(version.prediction_key, ids)
    _, photo_vectors = catalog.embeddings(version.embedding_key, ids)

    def worst_cosine(a, b):
        return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    assert worst_cosine(vectors, app_vectors) > 0.9999  # float16 storage vs float32
    assert worst_cosine(photo_vectors, app_vectors) < 0.999, "the photo alone is measurably different"


def run_where_productlens_is_not_installed(tmp_path, script: str, arguments: list) -> None:
    """Run ``script`` with ``arguments`` in a Python that cannot import ProductLens; it must succeed."""
    import os
    import subprocess
    import sys

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, "-c", script, *map(str, arguments)], cwd=outside,
                               env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    cannot_import = subprocess.run([sys.executable, "-c", "import core.jobs"], cwd=outside, env=env,
                                   capture_output=True, text=True)
    assert cannot_import.returncode != 0, "the check must run where ProductLens is not importable"


@pytest.mark.parametrize("backbone", ["suite's single network", "default pair"])
def test_every_format_reproduces_the_app_without_productlens(request, tmp_path, backbone):
    """The .keras file, the SavedModel, the TFLite file and the ONNX file load in a Python that cannot import
    ProductLens and return the stored probabilities, for a single network and for the default pair."""

    if backbone == "default pair":
        catalog, embedder = request.getfixturevalue("default_pair")
    else:
        catalog, embedder = request.getfixturevalue("catalog"), request.getfixturevalue("float_embedder")

    written = export.export_classifier_formats(catalog, tmp_path / "out")
    assert written["savedmodel"].is_dir() and written["keras"].is_file()
    assert all(isinstance(outcome, type(written["keras"])) or outcome.startswith(("failed:", "skipped:"))
               for outcome in written.values())
    version = catalog.active_model_version()
    products = catalog.products()[1::3]
    np.save(tmp_path / "inputs.npy", export.classifier_inputs(embedder, [(catalog.image_path(p), p.sha256)
                                                                         for p in products]))
    script = (  # what a user would write, from the README
        "import sys, numpy as np, tensorflow as tf\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "np.save(sys.argv[3], model.serve(np.load(sys.argv[2]).astype('float32')).numpy())\n"
        "assert 'core' not in sys.modules\n")
    tflite = written["tflite"]
    assert not isinstance(tflite, str), tflite
    script += (
        "interpreter = tf.lite.Interpreter(model_path=sys.argv[4])\n"
        "inputs = np.load(sys.argv[2]).astype('float32')\n"
        "detail = interpreter.get_input_details()[0]\n"
        "interpreter.resize_tensor_input(detail['index'], inputs.shape)\n"
        "interpreter.allocate_tensors()\n"
        "interpreter.set_tensor(detail['index'], inputs)\n"
        "interpreter.invoke()\n"
        "output = interpreter.get_output_details()[0]['index']\n"
        "np.save(sys.argv[3] + '.tflite.npy', interpreter.get_tensor(output))\n"
        "import keras\n"
        "model = keras.models.load_model(sys.argv[5])\n"
        "np.save(sys.argv[3] + '.keras.npy', model.predict(np.load(sys.argv[2]), verbose=0))\n"
        "import onnxruntime\n"
        "session = onnxruntime.InferenceSession(sys.argv[6])\n"
        "feed = {session.get_inputs()[0].name: np.load(sys.argv[2]).astype('float32')}\n"
        "np.save(sys.argv[3] + '.onnx.npy', session.run(None, feed)[0])\n"
        "assert 'core' not in sys.modules\n")
    assert not isinstance(written["onnx"], str), written["onnx"]
    run_where_productlens_is_not_installed(tmp_path, script, [written["savedmodel"], tmp_path / "inputs.npy",
                                                              tmp_path / "outputs.npy", tflite, written["keras"],
                                                              written["onnx"]])
    stored = catalog.predictions(version.id)
    outputs = [np.load(tmp_path / f"outputs.npy{suffix}") for suffix in ("", ".tflite.npy", ".keras.npy", ".onnx.npy")]
    for output in outputs:
        for product, probabilities in zip(products, output):
            app = stored[product.id]
            np.testing.assert_allclose([probabilities[version.classes.index(name)] for name in app["labels"]],
                                       app["probabilities"], atol=1e-3)


def test_the_int8_onnx_file_reproduces_an_int8_catalogue_without_productlens(int8_catalog, catalog, tmp_path,
                                                                             embedder):

    written = export.export_classifier_formats(int8_catalog, tmp_path / "out", onnx=False)
    assert written["onnx_int8"].is_file()
    version = int8_catalog.active_model_version()
    assert version.embedding_key.endswith("+int8")
    products = int8_catalog.products()
    inputs = export.classifier_inputs(embedder, [(int8_catalog.image_path(p), p.sha256) for p in products])
    np.save(tmp_path / "inputs.npy", inputs)
    script = ("import sys, numpy as np, onnxruntime\n"
              "session = onnxruntime.InferenceSession(sys.argv[1])\n"
              "np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})[0])\n"
              "assert 'core' not in sys.modules\n")
    run_where_productlens_is_not_installed(tmp_path, script, [written["onnx_int8"], tmp_path / "inputs.npy",
                                                              tmp_path / "outputs.npy"])
    stored = int8_catalog.predictions(version.id)
    output = np.load(tmp_path / "outputs.npy")
    assert output.shape == (len(products), len(version.classes))
    for product, probabilities in zip(products, output):
        app = stored[product.id]
        assert version.classes[int(np.argmax(probabilities))] == app["label"]
        np.testing.assert_allclose([probabilities[version.classes.index(name)] for name in app["labels"]],
                                   app["probabilities"], atol=1e-3)
    with pytest.raises(InvalidInputError, match="float32"):
        export.export_int8_classifier(catalog, tmp_path / "x.onnx")


def test_csv_cells_cannot_run_as_spreadsheet_formulas(tmp_path, demo_dir):
    import csv

    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [demo_dir / "Lemon"])
    hostile = ['=HYPERLINK("http://evil.example","click")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "Lemon"]
    ids = catalog.product_ids()
    catalog.set_labels(zip(ids, hostile))
    with catalog.transaction() as connection:  # a NUL in a name from an older version or another tool
        connection.exec_driver_sql("UPDATE products SET filename = ? WHERE id = ?", ("nul\x00byte.jpg", ids[-1]))
        connection.exec_driver_sql("UPDATE products SET filename = ? WHERE id = ?", ("\t=1+1.jpg", ids[-2]))
    path = export.export_labels(catalog, tmp_path / "labels.csv")
    raw = path.read_bytes()
    assert b"\x00" not in raw
    with open(path, newline="") as handle:
        rows = {int(row["product_id"]): row for row in csv.DictReader(handle)}
    cells = [rows[pid]["label"] for pid in ids[:len(hostile)]]
    assert cells == ["'" + hostile[0], "'" + hostile[1], "'@SUM(1+1)", "'-2+3", "Lemon"]
    assert rows[ids[-1]]["filename"] == "nulbyte.jpg" and rows[ids[-2]]["filename"] == "' =1+1.jpg"
    assert not any(cell[0] in "=+-@\t\r" for row in rows.values() for cell in row.values() if cell)
    parquet = pd.read_parquet(export.export_labels(catalog, tmp_path / "labels.parquet"))
    assert parquet.set_index("product_id").loc[ids[0], "label"] == hostile[0], "Parquet keeps the exact text"
