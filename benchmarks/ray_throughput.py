"""Embedding throughput: the in-process path next to Ray with 1 and 2 local workers, in one run.

The first ``--photos`` grocery train photos (default 600; the whole split takes about
9 minutes per row on 2 cores) are imported into three throw-away workspaces and embedded
with the default embedder (photo and crop views): once in this process, then by
``embed_catalog_on_ray`` with 1 and with 2 workers. Ray rows count the whole call
(starting Ray, each worker building its backbone, the Parquet shards, storing them), as a
user waits for it. Writes ``benchmarks/results/ray_throughput.json``.

    python benchmarks/ray_throughput.py [--photos N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _grocery import DEFAULT_DATASET
from _results import write_result


def main() -> None:
    from core.features.embeddings import Embedder, embed_catalog
    from core.features.ray_embedding import embed_catalog_on_ray
    from core.storage import ingest
    from core.storage.catalog import Catalog

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=600)
    args = parser.parse_args()
    photos = sorted((DEFAULT_DATASET / "train").rglob("*.jpg"))[:args.photos]
    scratch = Path(tempfile.mkdtemp(prefix="productlens-ray-"))
    embedder = Embedder()
    rows = []
    try:
        for name, run in (("in-process (the default)", lambda c: embed_catalog(c, embedder)),
                          ("Ray, 1 local worker", lambda c: embed_catalog_on_ray(c, embedder, workers=1)),
                          ("Ray, 2 local workers", lambda c: embed_catalog_on_ray(c, embedder, workers=2))):
            catalog = Catalog(scratch / name.replace(" ", "-").replace(",", ""))
            ingest.import_paths(catalog, photos)
            started = time.perf_counter()
            report = run(catalog)
            seconds = time.perf_counter() - started
            rows.append({"engine": name, "photos": report.computed, "seconds": round(seconds, 1),
                         "photos_per_second": round(report.computed / seconds, 2)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    baseline = rows[0]["photos_per_second"]
    for row in rows:
        row["vs_in_process"] = round(row["photos_per_second"] / baseline, 2)
    write_result("ray_throughput", {"rows": rows, "backbone": embedder.key, "views": embedder.views})


if __name__ == "__main__":
    main()
