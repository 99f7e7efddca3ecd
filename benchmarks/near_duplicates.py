"""Near-duplicate detection: precision and recall of the similarity threshold on grocery val.

Every val photo gets 4 edited copies (default embedder features, raw cosine): re-encoded (JPEG quality 40), resized to
half size, centre-cropped to 80%, and a random 70-90% crop, mirrored and
re-encoded. Positive pairs are (photo, its copy) and copies of the same photo;
negative pairs are any two items made from *different* photos. The grocery val
split is sequences of shots of the same product, so negatives are reported in
two groups: different categories (truly distinct products), and the same
category (another shot of the same product: arguably a duplicate too).
Writes ``benchmarks/results/near_duplicates.json``.

    python benchmarks/near_duplicates.py [--threshold T]
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image

from _grocery import grocery_features
from _results import write_result


def edited_copies(path: str, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size

    def jpeg(picture, quality=85):
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()

    side = rng.uniform(0.7, 0.9)
    crop_width, crop_height = int(width * side), int(height * side)
    left, top = int(rng.integers(0, width - crop_width + 1)), int(rng.integers(0, height - crop_height + 1))
    return [
        jpeg(image, quality=40),
        jpeg(image.resize((width // 2, height // 2), Image.BILINEAR)),
        jpeg(image.crop((width // 10, height // 10, width - width // 10, height - height // 10))),
        jpeg(image.crop((left, top, left + crop_width, top + crop_height)).transpose(Image.FLIP_LEFT_RIGHT)),
    ]


def main() -> None:
    from core.curation.duplicates import DEFAULT_THRESHOLD

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args()
    data = grocery_features()
    val, embedder = data.val, data.embedder
    started = time.perf_counter()
    cache = data.catalog.workspace / f"near-duplicate-copies-{embedder.key}.npy"
    if cache.exists():  # the copies are deterministic: embed them once
        copy_features = np.load(cache)
    else:
        copies = [edited_copies(path, index) for index, path in enumerate(val.paths)]
        copy_features, failures = embedder.embed_sources([blob for group in copies for blob in group])
        if failures:
            raise SystemExit(f"could not embed copies: {failures[:3]}")
        np.save(cache, copy_features)
    per_photo = len(copy_features) // len(val.paths)
    features = np.concatenate([val.features, copy_features])
    source = np.concatenate([np.arange(len(val.paths)), np.repeat(np.arange(len(val.paths)), per_photo)])
    category = val.labels[source]
    vectors = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), 1)
    scores = similarity[upper]
    positive = source[upper[0]] == source[upper[1]]
    same_category = ~positive & (category[upper[0]] == category[upper[1]])
    different_category = ~positive & ~same_category

    def at(threshold):
        flagged = scores >= threshold
        true_positives = int((flagged & positive).sum())
        return {
            "threshold": threshold,
            "recall": round(true_positives / int(positive.sum()), 4),
            "precision_vs_distinct_products": round(
                true_positives / max(1, true_positives + int((flagged & different_category).sum())), 4),
            "precision_vs_all_other_photos": round(true_positives / max(1, int(flagged.sum())), 4),
            "false_pairs_distinct_products": int((flagged & different_category).sum()),
            "false_pairs_same_product_other_shot": int((flagged & same_category).sum()),
        }

    sweep = [at(t) for t in (0.8, 0.85, 0.88, 0.9, 0.92, 0.95, 0.98)]
    chosen = at(args.threshold)
    # Recall of (photo, copy) pairs per kind of edit, at the chosen threshold.
    originals = len(val.paths)
    edits = ["re-encoded q40", "half size", "centre crop 80%", "random crop + mirror"]
    by_edit = {}
    for kind, name in enumerate(edits[:per_photo]):
        copy_rows = originals + np.arange(originals) * per_photo + kind
        pair_scores = np.einsum("ij,ij->i", vectors[:originals], vectors[copy_rows])
        by_edit[name] = round(float(np.mean(pair_scores >= args.threshold)), 4)
    chosen["recall_photo_vs_copy_by_edit"] = by_edit
    for row in sweep:
        print(f"threshold {row['threshold']:.2f}: recall {row['recall']:.3f}, precision vs distinct products "
              f"{row['precision_vs_distinct_products']:.3f}, vs every other photo "
              f"{row['precision_vs_all_other_photos']:.3f}")
    print(f"default threshold {args.threshold}: photo-vs-copy recall by edit: "
          + ", ".join(f"{name} {value:.3f}" for name, value in by_edit.items()))
    result = {"photos": len(val.paths), "copies_per_photo": per_photo, "threshold": args.threshold,
              "positive_pairs": int(positive.sum()), "distinct_product_pairs": int(different_category.sum()),
              "same_product_other_shot_pairs": int(same_category.sum()), "default": chosen,
              "sweep": sweep, "seconds": round(time.perf_counter() - started, 1)}
    write_result("near_duplicates", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
