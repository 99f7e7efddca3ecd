"""Feed ProductLens every hostile input kind and print what happened to each.

    python benchmarks/robustness.py

Prints a Markdown table (input kind -> outcome, reason) and the peak memory of the
import, then one JSON object on the last line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

from _results import write_result  # noqa: E402
from core._internal.memory import peak_rss_mb  # noqa: E402
from core.storage import ingest  # noqa: E402
from core.storage.catalog import Catalog  # noqa: E402
from hostile_files import make_corpus  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        cases = make_corpus(Path(scratch) / "inbox")
        catalog = Catalog(Path(scratch) / "workspace")
        rows = []
        for case, (path, expected) in cases.items():
            report = ingest.import_paths(catalog, [path])
            outcome = ("imported" if report.product_ids else "rejected" if report.rejected else "skipped")
            details = "; ".join([f"{r.name.rsplit('/', 1)[-1][:40]}: {r.reason}" for r in report.rejected]
                                + [f"{s.name.rsplit(':', 1)[-1]}: skipped" for s in report.skipped])
            if report.product_ids:
                details = f"{len(report.product_ids)} product(s)" + (f"; {details}" if details else "")
            rows.append({"input": case, "expected": expected, "outcome": outcome, "details": details})
        outside = list(Path(scratch).glob("escaped*")) + list(Path(scratch).parent.glob("escaped*"))
    print("| input | outcome | details |\n|---|---|---|")
    for row in rows:
        print(f"| {row['input']} | {row['outcome']} | {row['details']} |")
    peak = peak_rss_mb()
    ok = all(row["outcome"] == row["expected"] for row in rows) and not outside
    print(f"\npeak memory {peak:.0f} MB; files written outside the workspace: {len(outside)}")
    result = {"cases": rows, "as_expected": ok, "files_outside_workspace": len(outside), "peak_memory_mb": round(peak)}
    write_result("robustness", result)
    print(json.dumps({key: value for key, value in result.items() if key != "cases"}))


if __name__ == "__main__":
    main()
