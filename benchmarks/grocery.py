"""Grocery Store benchmark: train on ../shared/datasets/grocery/train, measure on val.

Runs ``python -m core evaluate`` (the same code path users run) with the default
settings unless options say otherwise. The category tree comes from the training
folders (``train/Fruit/Apple/Granny-Smith/``), so evaluate reports accuracy at every
level from the model itself (a coarse prediction is the sum of its fine categories'
probabilities): level 1 is the dataset's coarse class (Apple, Milk; classes.csv agrees
but for Brown-Cap-Mushroom, alone under Vegetables in the folders and alone in its
coarse class), level 0 Fruit / Vegetables / Packages. Adds 95% Wilson intervals, the
coverage and accuracy of the "Fruit › ?" fallback per confidence threshold, and the
expected calibration error of the stored confidences (15 bins, bootstrap 95%
interval) with its reliability-diagram bins, writes
``benchmarks/results/grocery.json`` and prints it. ``val/`` is the split the
defaults were tuned on, so this is a tuning-set number, not a held-out test score.

    python benchmarks/grocery.py [--dataset DIR] [-- extra evaluate options]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from _results import accuracy, write_result  # noqa: E402

DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery"


def calibration(confidences: list[float], correct: list[bool], resamples: int = 2000) -> dict:
    """ECE (15 bins) with a bootstrap 95% interval over the photos, and the reliability diagram's bins."""
    import numpy as np

    from core.model.metrics import expected_calibration_error, reliability

    confidences, correct = np.asarray(confidences), np.asarray(correct)
    rng = np.random.default_rng(0)
    draws = [expected_calibration_error(confidences[rows], correct[rows])
             for rows in rng.integers(0, len(confidences), size=(resamples, len(confidences)))]
    diagram = reliability(confidences, correct)
    return {"ece": round(diagram["ece"], 4), "low": round(float(np.percentile(draws, 2.5)), 4),
            "high": round(float(np.percentile(draws, 97.5)), 4), "bins": diagram["bins"],
            "mean_confidence": round(float(confidences.mean()), 4)}


def run(dataset: Path, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as temporary:
        predictions = Path(temporary) / "predictions.csv"
        command = [sys.executable, "-m", "core", "evaluate", "--train", str(dataset / "train"),
                   "--test", str(dataset / "val"), "--predictions-csv", str(predictions), *extra]
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if completed.returncode != 0:
            sys.exit(f"evaluate failed:\n{completed.stderr[-3000:]}")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        with open(predictions) as handle:
            rows = list(csv.DictReader(handle))
        fine = sum(r["true_label"] == r["predicted_label"] for r in rows)
    result["calibration"] = calibration([float(r["confidence"]) for r in rows],
                                        [r["true_label"] == r["predicted_label"] for r in rows])
    result["fine"] = accuracy(fine, len(rows))
    levels = result.pop("levels")
    if len(levels) != 3 or levels[-1]["correct"] != fine:
        sys.exit(f"expected three levels ending in the fine classes, got {levels}")
    result["coarse"] = accuracy(levels[1]["correct"], levels[1]["n"])
    result["top_level"] = accuracy(levels[0]["correct"], levels[0]["n"])
    result["coverage"] = [{**row, "fine": accuracy(row["fine_right"], row["fine_answered"]),
                           "answers": accuracy(row["answers_right"], row["answered"])}
                          for row in result.pop("coverage")]
    result["settings"] = " ".join(extra) or "defaults"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="options passed to `python -m core evaluate`")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    if not (args.dataset / "train").is_dir():
        sys.exit(f"dataset not found at {args.dataset} (expected train/ and val/ folders)")
    result = run(args.dataset, extra)
    write_result("grocery", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
