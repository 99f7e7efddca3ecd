"""Grocery Store benchmark: train on ../shared/datasets/grocery/train, measure on val.

Runs ``python -m core evaluate`` (the same code path users run) with the default
settings unless options say otherwise, adds the coarse accuracy (fine prediction
mapped through classes.csv) and prints one JSON object on the last line.
With ``--update-readme`` the result replaces the table between the
``<!-- grocery-benchmark -->`` markers in README.md.

    python benchmarks/grocery.py [--dataset DIR] [--update-readme] [-- extra evaluate options]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery"


def coarse_map(dataset: Path) -> dict[str, str]:
    with open(dataset / "classes.csv") as handle:
        return {row["Class Name (str)"]: row["Coarse Class Name (str)"] for row in csv.DictReader(handle)}


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
        coarse = coarse_map(dataset)
        with open(predictions) as handle:
            rows = list(csv.DictReader(handle))
        result["coarse_accuracy"] = sum(coarse[r["true_label"]] == coarse[r["predicted_label"]]
                                        for r in rows) / len(rows)
    result["settings"] = " ".join(extra) or "defaults"
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    return result


def update_readme(result: dict) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = "<!-- grocery-benchmark -->", "<!-- /grocery-benchmark -->"
    table = "\n".join([
        start,
        "| settings | fine accuracy | coarse accuracy | train / test images | classes | embed photos/s "
        "| embed s | head training s | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result['settings']} | {result['accuracy']:.1%} | {result['coarse_accuracy']:.1%} "
        f"| {result['n_train']} / {result['n_test']} | {result['n_classes']} | {result['images_per_second']:.1f} "
        f"| {result['embed_seconds']:.0f} | {result['train_seconds']:.1f} "
        f"| {result['peak_memory_mb']:.0f} MB |",
        end,
    ])
    if start in text:
        text = text[:text.index(start)] + table + text[text.index(end) + len(end):]
    else:
        text += "\n" + table + "\n"
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="options passed to `python -m core evaluate`")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    if not (args.dataset / "train").is_dir():
        sys.exit(f"dataset not found at {args.dataset} (expected train/ and val/ folders)")
    result = run(args.dataset, extra)
    if args.update_readme:
        update_readme(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
