"""Import and embedding throughput: the in-process path next to Ray with 1 and 2 local workers, in one run.

The whole grocery train split is imported into three throw-away workspaces (in this
process, then by ``import_paths_on_ray`` with 1 and 2 workers), and all of it (or the
first ``--photos``; about 2 minutes per row on 2 cores) is embedded with the default
embedder (photo and crop views): in this process, then by ``embed_catalog_on_ray`` with 1
and with 2 workers. Ray rows count the whole call
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
    from core.storage.ray_ingest import import_paths_on_ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=None, help="embed only the first N (default: all)")
    args = parser.parse_args()
    photos = sorted((DEFAULT_DATASET / "train").rglob("*.jpg"))
    scratch = Path(tempfile.mkdtemp(prefix="productlens-ray-"))
    embedder = Embedder()
    rows = []
    engines = {"in-process (the default)": (lambda c: ingest.import_paths(c, photos),
                                            lambda c, ids: embed_catalog(c, embedder, product_ids=ids)),
               "Ray, 1 local worker": (lambda c: import_paths_on_ray(c, photos, workers=1),
                                       lambda c, ids: embed_catalog_on_ray(c, embedder, workers=1, product_ids=ids)),
               "Ray, 2 local workers": (lambda c: import_paths_on_ray(c, photos, workers=2),
                                        lambda c, ids: embed_catalog_on_ray(c, embedder, workers=2, product_ids=ids))}

    def timed(step: str, name: str, work):
        started = time.perf_counter()
        done = work()
        seconds = time.perf_counter() - started
        rows.append({"step": step, "engine": name, "photos": done, "seconds": round(seconds, 1),
                     "photos_per_second": round(done / seconds, 2)})
        print(json.dumps(rows[-1]), flush=True)

    try:
        for name, (import_with, embed_with) in engines.items():
            catalog = Catalog(scratch / name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", ""))
            timed("import", name, lambda: len(import_with(catalog).added))
            first = catalog.product_ids()[:args.photos]
            timed("embed", name, lambda: embed_with(catalog, first).computed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for row in rows:
        baseline = next(r for r in rows if r["step"] == row["step"])["photos_per_second"]
        row["vs_in_process"] = round(row["photos_per_second"] / baseline, 2)
    rows.sort(key=lambda row: row["step"] != "import")
    write_result("ray_throughput", {"rows": rows, "backbone": embedder.key, "views": embedder.views})


if __name__ == "__main__":
    main()
