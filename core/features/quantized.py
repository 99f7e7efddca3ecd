"""The backbone as an 8-bit ONNX Runtime graph: float32's features, to rounding, at a fraction of the cost.

EfficientNet-Lite was designed to survive 8-bit arithmetic (ReLU6, no squeeze-and-
excitation), and CPUs with integer dot-product instructions (AVX512-VNNI, AVX-VNNI, ARM
dot-product) run 8-bit convolutions several times faster than float32 ones.
:func:`quantized_backbone` converts the Keras feature model once per machine (tf2onnx),
quantizes it statically (ONNX Runtime: int8 weights per output channel, uint8
activations whose ranges are calibrated on the demo photos that ship in ``assets/``) and
keeps the result in the user cache folder; :class:`QuantizedBackbone` runs it with ONNX
Runtime, :class:`OpenVinoBackbone` with OpenVINO (see :func:`core.settings.int8_runtime`).
The features are the float32 ones up to rounding, not equal to them, so they are cached
under their own embedding key (``+int8``) and never mixed with float32 vectors; the two
runtimes' features are equal to a finer rounding than that and share the key.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core import settings
from core.storage.atomic import atomic_path

# Bumped whenever the conversion or the calibration changes, so an old graph is never reused.
_RECIPE = "int8-qdq-perchannel-v1"
_CALIBRATION_PHOTOS = Path(__file__).resolve().parents[2] / "assets" / "demo"
_lock = threading.Lock()


class QuantizedBackbone:
    """Runs a quantized feature graph: uint8 pixels ``(n, size, size, 3)`` in, float32 features out.

    A batch is split into ``threads`` parts run at the same time, each on one thread of
    its own, rather than one run whose every layer is shared among the threads: these
    layers are too small at a few photos for a split of each one to pay for its
    synchronisation (``benchmarks/throughput.py``).
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime

        self.threads = max(1, threads or os.cpu_count() or 1)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        # One session serves every run: ONNX Runtime's run is safe to call from several threads.
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._runs = ThreadPoolExecutor(self.threads, thread_name_prefix="productlens-int8") \
            if self.threads > 1 else None

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: pixels})[0]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        parts = min(self.threads, len(pixels))
        if self._runs is None or parts < 2:
            return self._run(pixels)
        runs = [self._runs.submit(self._run, part) for part in np.array_split(pixels, parts)]
        return np.concatenate([run.result() for run in runs])


class OpenVinoBackbone:
    """Runs the same quantized graph with OpenVINO: uint8 pixels in, float32 features out.

    As in :class:`QuantizedBackbone`, a batch is split into ``threads`` parts, each run by
    an inference stream of its own on one thread. Calls are taken one at a time: the
    streams are shared, and each call already keeps every thread busy.
    """

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import openvino

        self.threads = max(1, threads or os.cpu_count() or 1)
        self.path = Path(path)
        core = openvino.Core()
        # Not pinned to cores: OpenVINO pins each process's threads to the first cores, so two
        # processes of one thread each (Ray workers, or the app beside a CLI run) would share one
        # core (half the speed, measured); one process is as fast either way.
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(self.threads),
            "INFERENCE_NUM_THREADS": str(self.threads), "ENABLE_CPU_PINNING": False})
        self.compiled = compiled
        self._feature_dim = compiled.output(0).get_partial_shape()[1].get_length()
        self._requests = openvino.AsyncInferQueue(compiled, self.threads)
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if len(pixels) == 0:
            return np.zeros((0, self._feature_dim), np.float32)
        parts = np.array_split(pixels, max(1, min(self.threads, len(pixels))))
        results: list[np.ndarray | None] = [None] * len(parts)

        def finished(request, index):
            results[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

        with self._lock:
            self._requests.set_callback(finished)
            for index, part in enumerate(parts):
                self._requests.start_async({0: part}, index)
            self._requests.wait_all()
        if any(result is None for result in results):
            raise RuntimeError(f"OpenVINO returned no features for part of a batch of {len(pixels)} photos")
        return np.concatenate(results)


def quantized_backbone(backbone: str, weights, image_size: int, pooling: str, threads: int | None = None,
                       runtime: str | None = None) -> QuantizedBackbone | OpenVinoBackbone:
    """The quantized graph of this feature model, converted on first use and then read from the cache,
    run by ``runtime`` (default: :func:`core.settings.int8_runtime`).

    Where OpenVINO was chosen for this CPU (not asked for) and cannot compile the graph, ONNX
    Runtime runs it, with a warning naming the reason: the features are the same to rounding."""
    chosen = runtime or settings.int8_runtime()
    if chosen not in settings.INT8_RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(settings.INT8_RUNTIMES)}, got {chosen!r}")
    path = quantized_graph(backbone, weights, image_size, pooling)
    if chosen == "openvino":
        try:
            return OpenVinoBackbone(path, threads)
        except Exception as error:  # noqa: BLE001 - OpenVINO raises its own types; a default must not stop embedding
            if runtime or settings.current().int8_runtime:
                raise
            warnings.warn(f"OpenVINO could not run the 8-bit graph ({type(error).__name__}: {error}); "
                          "ONNX Runtime runs it instead", RuntimeWarning, stacklevel=2)
    return QuantizedBackbone(path, threads)


def quantized_graph(backbone: str, weights, image_size: int, pooling: str) -> Path:
    """The quantized ONNX file of this feature model, converted on first use and then read from the cache."""
    path = _cached_path(backbone, weights, image_size, pooling)
    with _lock:
        if not path.is_file():
            _convert(backbone, weights, image_size, pooling, path)
    return path


def is_converted(backbone: str, weights, image_size: int, pooling: str) -> bool:
    """Whether this machine's cache already holds the quantized graph (no conversion on first use)."""
    return _cached_path(backbone, weights, image_size, pooling).is_file()


def _cached_path(backbone: str, weights, image_size: int, pooling: str) -> Path:
    if weights == "imagenet":
        origin = "imagenet"
    elif weights is None:
        origin = "random"
    else:
        origin = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    return settings.cache_dir() / "onnx" / f"{backbone}@{image_size}+{pooling}-{origin}-{_RECIPE}.onnx"


def calibration_pixels(image_size: int) -> list[np.ndarray]:
    """The demo photos at the model's input size: the activation ranges are measured on them."""
    from core.storage import images

    photos = sorted(_CALIBRATION_PHOTOS.glob("*/*.jpg"))
    if not photos:
        raise RuntimeError(f"no calibration photos in {_CALIBRATION_PHOTOS}")
    return [images.load_for_model(photo, image_size, "full") for photo in photos]


def _convert(backbone: str, weights, image_size: int, pooling: str, path: Path) -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from core.features.backbones import build_feature_model

    # portable: Lite0's in-graph resize without antialiasing, which ONNX has. Not the export's exact
    # matrix form (core.jobs.export.portable_feature_model): its dense matrix products would cost a
    # sizeable share of Lite0 itself on every photo, and int8 features have their own key anyway.
    model = build_feature_model(backbone, weights, image_size, pooling, portable=True)

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="pixels")])
    def features(pixels):
        return {"features": model(tf.cast(pixels, tf.float32), training=False)}

    class Calibration(CalibrationDataReader):
        def __init__(self, input_name: str):
            self._batches = iter([{input_name: pixels[None]} for pixels in calibration_pixels(image_size)])

        def get_next(self):
            return next(self._batches, None)

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="productlens-onnx-") as scratch:
        float_graph, prepared = Path(scratch) / "float.onnx", Path(scratch) / "prepared.onnx"
        tf2onnx.convert.from_function(features, input_signature=features.input_signature, opset=17,
                                      output_path=str(float_graph))
        quant_pre_process(str(float_graph), str(prepared), skip_symbolic_shape=True)
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        with atomic_path(path, durable=False) as temporary:
            quantize_static(str(prepared), str(temporary), Calibration(input_name), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
