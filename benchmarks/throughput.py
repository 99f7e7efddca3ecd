"""Embedding throughput: ProductLens vs a plain Keras pipeline vs a per-image loop, and the ceiling.

In one process, on the same 1,000 grocery train photos and the same backbone
(``--backbone``, default: the default backbone at its resolution; one forward pass
per photo unless said):

- **ceiling**: model only, on pre-decoded uint8 tensors (what this CPU can do);
- **decode only**: ProductLens's decoder (JPEG DCT-domain downscale, EXIF, RGB);
- **ProductLens**: ``Embedder.embed_sources`` (decoding on worker threads while the
  model runs), also with the mirror pass (2 passes; the default until stop 28), and the
  default work per photo: the photo + 4 random-crop views (``Embedder.embed_with_views``,
  5 passes) against its own ceiling;
- **float32**: photo + mirror + 4 views (6 passes) on TensorFlow in float32: the default
  before the 8-bit backbone (:mod:`core.features.quantized`) and before the mirror pass was
  dropped, the baseline of issue 15, with its own ceiling;
- **plain Keras**: ``keras.utils.image_dataset_from_directory`` + ``model.predict``;
- **per-image loop**: ``keras.utils.load_img`` + ``model.predict`` on one photo at a time.

Then the levers on the ceiling (batch size, XLA ``jit_compile``, bfloat16 where
the CPU has native support) and, with ``--stream N``, the resident memory while
N photos are embedded chunk by chunk the way :func:`core.features.embeddings.embed_catalog`
does (it must stay flat). Prints one JSON object on the last line.

    python benchmarks/throughput.py [--backbone NAME] [--images 1000] [--stream 10000] [--skip-loop]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _results import write_result  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery"


def timed(function, repeats: int = 1) -> float:
    """Median wall seconds of ``repeats`` runs."""
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def passes(embedder) -> str:
    """The passes per photo an embedder makes, as the rows name them."""
    mirror = " + mirror" if embedder.flip_tta else ""
    return f"photo{mirror}" + (f" + {embedder.views} views" if embedder.views else "")


def count_passes(embedder) -> int:
    return 1 + int(embedder.flip_tta) + embedder.views


def sample_photos(dataset: Path, count: int) -> list[Path]:
    photos = sorted((dataset / "train").rglob("*.jpg"))
    chosen = np.random.default_rng(0).permutation(len(photos))[:count]
    return [photos[i] for i in sorted(chosen)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--stream", type=int, default=0, help="also embed this many photos, reporting memory")
    parser.add_argument("--skip-loop", action="store_true", help="skip the (slow) per-image loop")
    parser.add_argument("--backbone", default=None, help="backbone to measure (default: the default backbone)")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from core._internal.memory import current_rss_mb, peak_rss_mb
    from core.features.embeddings import Embedder
    from core.storage import images

    photos = sample_photos(args.dataset, args.images)
    count = len(photos)
    from core import settings

    backbone = args.backbone or settings.current().backbone
    embedder = Embedder(backbone=backbone)
    exact = Embedder(backbone=backbone, precision="float32", flip_tta=True)
    size = embedder.image_size
    model = exact.model
    results: dict = {"images": count, "backbone": embedder.backbone, "image_size": size,
                     "precision": embedder.precision,
                     "int8_runtime": settings.int8_runtime() if embedder.precision == "int8" else None,
                     "batch_size": embedder.batch_size, "decode_workers": embedder.decode_workers}
    rate = {}

    def report(name, seconds, passes=1):
        rate[name] = count / seconds
        each = f", {passes} passes each" if passes > 1 else ""
        print(f"{name:<58} {rate[name]:7.1f} photos/s  ({seconds:.1f} s{each})", flush=True)

    # Decode once up front: the ceiling must not pay for it.
    started = time.perf_counter()
    pixels = np.stack([images.load_for_model(path, size) for path in photos])
    report("decode only (1 thread, ProductLens decoder)", time.perf_counter() - started)
    embedder.embed_pixels(pixels[:embedder.batch_size], flip_tta=False)  # trace + warm up
    embedder.embed_pixels(pixels[:embedder.batch_size], flip_tta=True)
    report("ceiling, photo", timed(lambda: embedder.embed_pixels(pixels, flip_tta=False)))
    report("ProductLens (photo): files -> features", timed(lambda: embedder.embed_sources(photos, flip_tta=False)))
    report("ceiling, photo + mirror", timed(lambda: embedder.embed_pixels(pixels, flip_tta=True)), 2)
    report("ProductLens (photo + mirror): files -> features",
           timed(lambda: embedder.embed_sources(photos, flip_tta=True)), 2)
    if embedder.views:
        import hashlib

        hashed = [(path, hashlib.sha256(path.read_bytes()).hexdigest()) for path in photos]
        view_pixels = np.stack([embedder.load_photo_and_views(entry)[1:] for entry in hashed[:256]])
        view_pixels = view_pixels.reshape(-1, size, size, 3)
        embedder.embed_pixels(view_pixels[:embedder.batch_size], flip_tta=False)

        def ceiling_views(model):
            # The same passes on pre-decoded tensors (256 photos' views, reused to cover all photos).
            def run():
                model.embed_pixels(pixels, flip_tta=model.flip_tta)
                for start in range(0, count, 256):
                    model.embed_pixels(view_pixels[:model.views * min(256, count - start)], flip_tta=False)
            return run

        report(f"ceiling, {passes(embedder)}", timed(ceiling_views(embedder)), count_passes(embedder))
        report(f"ProductLens default ({passes(embedder)}): files -> features",
               timed(lambda: embedder.embed_with_views(hashed)), count_passes(embedder))
        if embedder.precision != "float32":
            exact.embed_pixels(pixels[:exact.batch_size], flip_tta=True)
            exact.embed_pixels(view_pixels[:exact.batch_size], flip_tta=False)
            report(f"float32: ceiling, {passes(exact)}", timed(ceiling_views(exact)), count_passes(exact))
            report(f"float32: ProductLens ({passes(exact)}): files -> features",
                   timed(lambda: exact.embed_with_views(hashed)), count_passes(exact))

    with tempfile.TemporaryDirectory() as scratch:
        # image_dataset_from_directory wants class folders: mirror the photos' folders with links.
        for path in photos:
            target = Path(scratch) / path.parent.name / path.name
            target.parent.mkdir(exist_ok=True)
            target.symlink_to(path)
        dataset = keras.utils.image_dataset_from_directory(scratch, labels=None, image_size=(size, size),
                                                           batch_size=32, shuffle=False)
        model.predict(dataset.take(1), verbose=0)
        report("plain Keras: image_dataset_from_directory + predict",
               timed(lambda: model.predict(dataset, verbose=0)))

    if not args.skip_loop:
        def per_image():
            for path in photos:
                array = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size)))
                model.predict(array[None], verbose=0)

        report("per-image loop: load_img + predict", timed(per_image))

    # -- levers on the ceiling (on the first 256 photos: each lever is one more model-only run) --
    levers = {}
    lever_pixels = pixels[:256]
    for batch_size in (8, 16, 32, 64):
        probe = Embedder(backbone=backbone, batch_size=batch_size)
        probe._model = model
        probe.embed_pixels(lever_pixels[:batch_size], flip_tta=False)
        levers[f"batch {batch_size}"] = len(lever_pixels) / timed(
            lambda: probe.embed_pixels(lever_pixels, flip_tta=False))
    # The graph as converted (BatchNormalization not folded) at the old default batch of 32:
    # what the ceiling was before this machine's levers were pulled.
    from core.features.efficientnet_lite import VARIANTS, load_efficientnet_lite

    if backbone in VARIANTS:
        unfolded_classifier = load_efficientnet_lite(backbone, size)
        unfolded = Embedder(backbone=backbone, pooling="avg", batch_size=32, precision="float32")
        unfolded._model = keras.Model(unfolded_classifier.input, unfolded_classifier.get_layer("avg_pool").output)
        unfolded.embed_pixels(lever_pixels[:32], flip_tta=False)
        levers["avg pooling, BatchNorm not folded, batch 32 (before)"] = len(lever_pixels) / timed(
            lambda: unfolded.embed_pixels(lever_pixels, flip_tta=False))
    forward_xla = tf.function(lambda batch: model(tf.cast(batch, tf.float32), training=False), jit_compile=True)
    try:
        forward_xla(pixels[:32])

        def run_xla():
            for start in range(0, 64, 32):
                forward_xla(pixels[start:start + 32]).numpy()

        levers["XLA jit_compile, batch 32 (64 photos)"] = 64 / timed(run_xla)
    except Exception as error:  # XLA is optional; report why it could not run
        levers["XLA jit_compile, batch 32 (64 photos)"] = f"failed: {type(error).__name__}"
    reference = exact.embed_pixels(pixels, flip_tta=False)

    def worst_cosine(vectors):
        return float(np.min(np.sum(reference * vectors, axis=1)
                            / (np.linalg.norm(reference, axis=1) * np.linalg.norm(vectors, axis=1))))

    if embedder.precision == "int8":
        levers["int8 min feature cosine vs float32"] = worst_cosine(embedder.embed_pixels(pixels, flip_tta=False))
        # The same default work with the 8-bit graph on the runtime this CPU does not default to.
        for runtime in settings.INT8_RUNTIMES:
            if runtime == results["int8_runtime"]:
                continue
            os.environ["PRODUCTLENS_INT8_RUNTIME"] = runtime
            other = Embedder(backbone=backbone)
            other.embed_pixels(pixels[:other.batch_size], flip_tta=False)
            levers[f"int8 on {runtime}: ceiling, photo"] = count / timed(
                lambda: other.embed_pixels(pixels, flip_tta=False))
            if embedder.views:
                levers[f"int8 on {runtime}: ProductLens default ({passes(other)}), files -> features"] = \
                    count / timed(lambda: other.embed_with_views(hashed))
            os.environ.pop("PRODUCTLENS_INT8_RUNTIME")
    if settings.has_native_bfloat16():
        bf16 = Embedder(backbone=backbone, precision="bfloat16")
        bf16.embed_pixels(pixels[:32], flip_tta=False)
        levers[f"bfloat16, batch {bf16.batch_size}"] = count / timed(lambda: bf16.embed_pixels(pixels, flip_tta=False))
        levers["bfloat16 min feature cosine vs float32"] = worst_cosine(bf16.embed_pixels(pixels, flip_tta=False))
    else:
        levers["bfloat16"] = "skipped: this CPU has no native bfloat16 (no AVX512_BF16 / AMX_BF16)"
    for name, value in levers.items():
        shown = value if isinstance(value, str) else f"{value:.5f}" if "cosine" in name else f"{value:7.1f} images/s"
        print(f"lever {name:<52} {shown}", flush=True)

    results["images_per_second"] = {name: round(value, 2) for name, value in rate.items()}
    results["levers"] = {name: round(value, 5 if "cosine" in name else 2) if isinstance(value, float) else value
                         for name, value in levers.items()}
    ceiling = rate["ceiling, photo"]
    results["ratios"] = {
        "productlens_vs_ceiling": round(rate["ProductLens (photo): files -> features"] / ceiling, 3),
        "productlens_mirror_vs_ceiling_mirror": round(rate["ProductLens (photo + mirror): files -> features"]
                                                      / rate["ceiling, photo + mirror"], 3),
        "productlens_vs_plain_keras": round(rate["ProductLens (photo): files -> features"]
                                            / rate["plain Keras: image_dataset_from_directory + predict"], 2),
    }
    default = f"ProductLens default ({passes(embedder)}): files -> features"
    if embedder.views:
        results["ratios"]["productlens_views_vs_ceiling_views"] = round(
            rate[default] / rate[f"ceiling, {passes(embedder)}"], 3)
    before = f"float32: ProductLens ({passes(exact)}): files -> features"
    if embedder.views and before in rate:
        results["ratios"]["default_vs_float32_with_mirror"] = round(rate[default] / rate[before], 2)
    if "per-image loop: load_img + predict" in rate:
        results["ratios"]["productlens_vs_per_image_loop"] = round(
            rate["ProductLens (photo): files -> features"] / rate["per-image loop: load_img + predict"], 2)
    print("ratios: " + ", ".join(f"{k} {v}" for k, v in results["ratios"].items()))

    if args.stream:
        # Chunked like embed_catalog: memory must not grow with the number of photos.
        all_photos = sorted((args.dataset / "train").rglob("*.jpg")) + sorted((args.dataset / "val").rglob("*.jpg"))
        del pixels
        samples = []
        started, done = time.perf_counter(), 0
        sink = np.lib.format.open_memmap(Path(tempfile.gettempdir()) / "productlens-stream.npy", mode="w+",
                                         dtype=np.float16, shape=(args.stream, embedder.feature_dim))
        while done < args.stream:
            chunk = [all_photos[(done + i) % len(all_photos)] for i in range(min(256, args.stream - done))]
            vectors, _ = embedder.embed_sources(chunk, flip_tta=False)
            sink[done:done + len(chunk)] = vectors
            done += len(chunk)
            samples.append((done, round(current_rss_mb(), 1)))
            if done % 2048 < 256:
                print(f"streamed {done}/{args.stream}: RSS {samples[-1][1]:.0f} MB", flush=True)
        sink.flush()
        results["stream"] = {"images": args.stream, "seconds": round(time.perf_counter() - started, 1),
                             "rss_mb_after_first_chunk": samples[0][1], "rss_mb_at_end": samples[-1][1],
                             "peak_rss_mb": round(peak_rss_mb(), 1),
                             "rss_mb_by_images": samples[:: max(1, len(samples) // 10)]}
        print(f"stream: {args.stream} photos, RSS {samples[0][1]:.0f} MB after the first chunk, "
              f"{samples[-1][1]:.0f} MB at the end, peak {results['stream']['peak_rss_mb']:.0f} MB")
    write_result("throughput", results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
