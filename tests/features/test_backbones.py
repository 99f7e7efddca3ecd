import subprocess
import sys
import textwrap

import numpy as np
import pytest

from core.errors import BackboneUnavailableError
from core.features import backbones


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_v2_b0", "efficientnet_lite2"])
def test_selectable_backbones_build_and_give_pooled_features(name):
    spec = backbones.spec(name)
    model = backbones.build_feature_model(name, weights=None, image_size=96)
    features = model.predict(np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32"),
                             verbose=0)
    assert features.shape == (2, spec.feature_dim_for(spec.default_pooling))
    assert np.isfinite(features).all()
    assert not model.trainable


def test_resnet50_caffe_preprocessing_is_exact():
    model = backbones.build_feature_model("resnet50", weights=None, image_size=32)
    layer = model.get_layer("caffe_preprocessing")
    pixel = np.array([[10.0, 20.0, 30.0]], dtype="float32")
    out = pixel @ layer.get_weights()[0] + layer.get_weights()[1]
    np.testing.assert_allclose(out, [[30 - 103.939, 20 - 116.779, 10 - 123.68]], rtol=1e-6)


def test_local_weights_file_is_loaded(tmp_path):
    model = backbones.build_feature_model("mobilenet_v3_large", weights=None, image_size=64)
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    again = backbones.build_feature_model("mobilenet_v3_large", weights=str(path), image_size=64)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneUnavailableError, match="not found"):
        backbones.build_feature_model("resnet50", weights=str(tmp_path / "nope.h5"))


def test_failed_download_names_the_offline_default(tmp_path):
    """A machine that cannot download gets a message pointing at the offline default backbone."""
    script = textwrap.dedent("""
        from core.errors import BackboneUnavailableError
        from core.features import backbones
        try:
            backbones.build_feature_model("resnet50", weights="imagenet")
        except BackboneUnavailableError as error:
            print("MESSAGE:", error)
    """)
    env = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=str(backbones.__file__).rsplit("/core/", 1)[0], timeout=300)
    message = [line for line in result.stdout.splitlines() if line.startswith("MESSAGE:")]
    assert message, result.stderr[-2000:]
    assert "the default backbone 'efficientnet_lite0_lite2' works offline" in message[0]


def test_unknown_backbone():
    with pytest.raises(ValueError, match="choose from"):
        backbones.spec("vgg9000")
