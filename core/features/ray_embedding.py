"""Embedding on Ray: the same features as :func:`~core.features.embed_catalog`, computed by a pool of workers.

For catalogues too big for one process, ``python -m core embed --engine ray`` hands
the photos that lack features to Ray Data: a dataset of (product id, photo path,
SHA-256) rows, ``map_batches`` on a pool of actors that each build the backbone once
and embed whole batches (the photo, its mirror and its crop views, exactly as the
in-process path does), the results written as Parquet shards and then stored in
the catalogue by this process, the only one that writes it. Without an address, Ray
starts on this machine (its CPUs shared out among the workers); with one
(``ray://host:10001`` or ``host:6379``), the job joins an existing cluster, whose nodes
need ProductLens's requirements installed and the workspace's ``images/`` folder at the
same path (a shared file system); ProductLens's own code travels with the job. Each
photo is independent work, so N workers give up to N times the photos per second. Ray
is an optional dependency (``requirements-scale.txt``).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from core._internal.ray_runtime import start_ray
from core.features.embeddings import Embedder, EmbedReport, prediction_vectors
from core.storage.catalog import Catalog


class _EmbeddingActor:
    """One Ray actor: builds the backbone once, then embeds batches of photos read from their paths."""

    def __init__(self, settings: dict, threads: int):
        import tensorflow as tf

        # As many threads as CPUs given to the actor: TensorFlow's pools would otherwise fight over the cores.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.embedder = Embedder(**settings)
        self.embedder.threads = threads

    def __call__(self, batch: dict) -> dict:
        from pyarrow import fs

        sources, errors = [], {}
        for row, (path, sha256) in enumerate(zip(batch["path"], batch["sha256"])):
            try:
                filesystem, location = fs.FileSystem.from_uri(str(path)) if "://" in str(path) \
                    else (fs.LocalFileSystem(), str(path))
                with filesystem.open_input_file(location) as handle:
                    sources.append((handle.read(), str(sha256)))
            except OSError as error:
                errors[row] = f"cannot read the photo: {error}"
                sources.append((b"", str(sha256)))
        photos, views, failures = self.embedder.embed_with_views(sources)
        errors.update({row: reason for row, reason in failures if row not in errors})
        return {"product_id": np.asarray(batch["product_id"], np.int64),
                "photo": np.array([row.astype(np.float16).tobytes() for row in photos], dtype=object),
                "views": np.array([row.astype(np.float16).tobytes() for row in views], dtype=object),
                "error": np.array([errors.get(row, "") for row in range(len(sources))], dtype=object)}


def embed_catalog_on_ray(catalog: Catalog, embedder: Embedder, address: str | None = None, workers: int = 2,
                         batch_size: int = 64, product_ids: Sequence[int] | None = None,
                         cpus_per_worker: int | None = None) -> EmbedReport:
    """Embed every product (or ``product_ids``) without features under ``embedder.key`` on Ray.

    ``workers`` actors on a local Ray, or on the cluster at ``address``, each using
    ``cpus_per_worker`` CPUs (default: this machine's CPUs shared out among the workers
    on a local Ray, 2 on a cluster). Returns the same report as the in-process path.
    """
    if workers < 1 or batch_size < 1:
        raise ValueError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    if cpus_per_worker is None:
        cpus_per_worker = 2 if address else max(1, (os.cpu_count() or 1) // workers)
    key = embedder.prediction_key if embedder.views else embedder.key
    missing = catalog.missing_embeddings(key)
    if product_ids is not None:
        wanted = {int(pid) for pid in product_ids}
        missing = [pid for pid in missing if pid in wanted]
    total = catalog.count_products() if product_ids is None else len(set(product_ids))
    report = EmbedReport(embedder.key, cached=total - len(missing))
    if not missing:
        return report
    started = time.perf_counter()
    rows = [{"product_id": product.id, "path": str(catalog.image_path(product)), "sha256": product.sha256}
            for product in catalog.products(missing)]
    from core.model.training import EmbedderSettings

    settings = asdict(EmbedderSettings.of(embedder))
    settings["batch_size"] = embedder.batch_size
    ray, started_here = start_ray(address, workers * cpus_per_worker)
    shards = catalog.workspace / "cache" / f"ray-embeddings-{uuid.uuid4().hex[:12]}"
    try:
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 4 * workers)))
        actor_settings = {"settings": settings, "threads": cpus_per_worker}
        embedded = dataset.map_batches(_EmbeddingActor, fn_constructor_kwargs=actor_settings, batch_size=batch_size,
                                       batch_format="numpy", num_cpus=cpus_per_worker, concurrency=workers)
        embedded.write_parquet(str(shards))
        _register(catalog, embedder, shards, report)
    finally:
        import shutil

        shutil.rmtree(shards, ignore_errors=True)
        if started_here:
            ray.shutdown()
    report.seconds = time.perf_counter() - started
    return report


def _register(catalog: Catalog, embedder: Embedder, shards: Path, report: EmbedReport) -> None:
    """Store the Parquet shards' vectors in the catalogue, in the in-process path's order (views, photo,
    prediction vector), so an interrupted run redoes only what has no prediction vector."""
    import pyarrow.parquet as parquet

    dim = embedder.feature_dim
    for shard in sorted(shards.glob("*.parquet")):
        table = parquet.read_table(shard).to_pydict()
        failed = [(int(pid), reason) for pid, reason in zip(table["product_id"], table["error"]) if reason]
        report.failed.extend(failed)
        good = [row for row, reason in enumerate(table["error"]) if not reason]
        if not good:
            continue
        ids = [int(table["product_id"][row]) for row in good]
        photos = np.stack([np.frombuffer(table["photo"][row], np.float16) for row in good]).astype(np.float32)
        views = np.stack([np.frombuffer(table["views"][row], np.float16).reshape(embedder.views, dim)
                          for row in good]).astype(np.float32) if embedder.views else None
        for number in range(embedder.views):
            catalog.store_embeddings(embedder.view_key(number), ids, views[:, number])
        catalog.store_embeddings(embedder.key, ids, photos)
        if embedder.views:
            catalog.store_embeddings(embedder.prediction_key, ids, prediction_vectors(photos, views))
        report.computed += len(ids)
